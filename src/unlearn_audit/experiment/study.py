"""A study over targets: the same grid on several independently fine-tuned targets, and one verdict over
them by a rule written before the runs (docs/findings.md section 14).

One run of the demo is one draw: another fine-tuning seed, another optimizer kernel or another CPU gives
another target, and whether that target's bf16 unlearning fails deeply varies. `demo --targets N` runs
`demo_targets.yaml` once per target, each in its own (resumable) grid folder, and reads their verdicts.
"""

from __future__ import annotations

from pathlib import Path

from ..config import build_config, load_yaml
from ..errors import UserError
from .config import HERE, GridConfig

STUDY = HERE / "demo_targets.yaml"
STUDY_REPORT = "study.md"
STUDY_RESULTS = "study.json"
TWO_THIRDS = 2 / 3  # the share of targets a verdict over targets needs (findings section 14)


def target_options(listed: list[dict], n: int) -> list[dict]:
    """The fine-tuning options of the first n targets: the study's list, then further seeds (fused kernel)."""
    if n < 1:
        raise UserError(f"--targets must be at least 1, not {n}")
    seeds = {t.get("seed") for t in listed}
    extra = (s for s in range(len(listed) + n) if s not in seeds)
    return [dict(listed[i]) if i < len(listed) else {"seed": next(extra)} for i in range(n)]


def target_name(options: dict) -> str:
    """A target's folder name: its fine-tuning seed, and the AdamW kernel when it is not the fused one."""
    name = f"seed{options.get('seed', 0)}"
    if options.get("fused_adamw") is False:
        name += "-per-tensor-adamw"
    rest = sorted(k for k in options if k not in ("seed", "fused_adamw"))
    return name + "".join(f"-{k}={options[k]}" for k in rest)


def study_grids(n: int, path: str | Path = STUDY) -> list[tuple[str, GridConfig]]:
    """(folder name, grid) per target: the study's grid with that target's fine-tuning options."""
    values = load_yaml(path)
    listed = values.pop("targets", None) or [{"seed": 0}]
    if not isinstance(listed, list) or not all(isinstance(t, dict) for t in listed):
        raise UserError(f"{path}: targets must be a list of fine-tuning options, e.g. [{{seed: 0}}, {{seed: 1}}]")
    if not values.get("base"):
        raise UserError(f"{path}: a study over targets fine-tunes a base model; give `base`")
    grids = []
    for options in target_options(listed, n):
        name = target_name(options)
        grid = build_config(GridConfig, {**values, "name": f"{values.get('name', 'targets')}-{name}",
                                         "finetune": {**values.get("finetune", {}), **options}}, source=str(path))
        grid.validate()
        grids.append((name, grid))
    return grids


# ------------------------------------------------------------------------------------------- per target
def target_row(name: str, pieces: dict, scheme: str | None) -> dict:
    """One target's line of the study: its own scores, and per expected run (utility-constrained bf16) the
    retained share, the int4 recovery, the utility kept and the two bins forecasts (findings section 14)."""
    from .report.verdicts import expected_failures, failure_form, forecast_survival, prediction_agrees

    at = {(a["label"], a["scheme"]): a for a in pieces["aggregated"]}
    runs = expected_failures(pieces["verdict_rows"])
    return {
        "target": name,
        "scores": {role: {k: (at.get((role, "full")) or {}).get(k) for k in ("verbmem_f", "knowmem_f", "knowmem_r")}
                   for role in ("Target", "Retrained")},
        "form": failure_form(runs),
        "runs": [{"label": v["label"], "retained": v["retained"]["mean"], "utility_kept": v["utility_kept"],
                  "recovery": (v["recovery"].get(scheme) or {}).get("pooled") if scheme else None,
                  "verdict": v["verdict_text"],
                  "forecast_size": None if not v.get("bins") or forecast_survival(v["bins"]) is None
                  else 1 - forecast_survival(v["bins"]),
                  "forecast_gradient": None if (v.get("bins") or {}).get("first_order_survival") is None
                  else 1 - v["bins"]["first_order_survival"],
                  "forecast_within": prediction_agrees(v)} for v in runs],
    }


def run_target(name: str, grid: GridConfig, out: Path, quiet: bool) -> dict:
    """Run (or resume) one target's grid in its own folder and read its verdicts."""
    from ..quantize.schemes import four_bit
    from .grid import planned_ids, run_grid
    from .report import render

    folder = out / name
    counts = run_grid(grid, folder, show=not quiet)
    pieces = render(folder, grid.evaluated, title=f"unlearn-audit {grid.name}", cell_ids=planned_ids(grid, None),
                    bins_schemes=grid.bins_schemes, tiny=grid.tiny_models)
    row = target_row(name, pieces, (four_bit(grid.schemes) or [None])[0])
    row["failed_cells"] = counts.get("failed", 0)
    return row


# ------------------------------------------------------------------------------------------- over targets
def summarise(rows: list[dict]) -> dict:
    """The verdict over targets (findings section 14, rule 3) with the mean and spread over targets of each
    target's mean retained share, int4 recovery and utility kept, and the forecasts within 25 points."""
    from ..scoring import mean, spread
    from .report.verdicts import verdict_over_targets

    judged = [r for r in rows if r["runs"]]
    forms = [r["form"] for r in judged]
    out = {"n": len(judged), "deep": forms.count("deep"), "back": sum(f != "none" for f in forms),
           "verdict": verdict_over_targets(forms)}
    for key in ("retained", "recovery", "utility_kept"):
        per_target = [mean(run[key] for run in r["runs"]) for r in judged]
        out[key] = {"mean": mean(per_target), "sd": spread(per_target)}
    checked = [run["forecast_within"] for r in judged for run in r["runs"] if run["forecast_within"] is not None]
    out["forecasts"] = {"within": sum(checked), "rows": len(checked)}
    return out


def verdict_line(s: dict) -> str:
    """The study's one line: the verdict, k of n, and the spread over targets."""
    from ..scoring import FORGOT_ENOUGH, RETURNS, UTILITY_KEPT, percent

    def ms(key):
        sd = s[key]["sd"]
        return percent(s[key]["mean"]) + (f" ± {percent(sd)}" if sd is not None else "")

    return (f"{s['verdict']} with the paper's failure over {s['n']} targets: the forgetting is deep (at most "
            f"{percent(FORGOT_ENOUGH)} retained, >= {percent(UTILITY_KEPT)} utility kept) and int4 brings back at least "
            f"{percent(RETURNS)} on {s['deep']} of {s['n']}, the knowledge comes back on {s['back']} of {s['n']} "
            f"(the rule: AGREES needs two thirds deep, PARTLY AGREES two thirds back; docs/findings.md section 14). "
            f"Over targets: retained at full precision {ms('retained')}, int4 recovery {ms('recovery')}, utility kept "
            f"{ms('utility_kept')}; bins forecasts within 25 points on {s['forecasts']['within']} of "
            f"{s['forecasts']['rows']} runs")


def study_table(rows: list[dict]) -> str:
    """One line per run on each target (markdown)."""
    from ..scoring import fmt, percent

    head = ["| target | target VerbMem_f / KnowMem_f / KnowMem_r | retrained VerbMem_f / KnowMem_f | run | retained "
            "(full) | int4 recovery | utility kept | forecast back: size / gradient | within 25? | target's form |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    lines = []
    for r in rows:
        t, c = r["scores"]["Target"], r["scores"]["Retrained"]
        scores = (f"{fmt(t['verbmem_f'])} / {fmt(t['knowmem_f'])} / {fmt(t['knowmem_r'])}",
                  f"{fmt(c['verbmem_f'])} / {fmt(c['knowmem_f'])}")
        for run in r["runs"] or [{"label": "(no evaluated run)"}]:
            within = run.get("forecast_within")
            lines.append(f"| {r['target']} | {scores[0]} | {scores[1]} | {run['label']} | {percent(run.get('retained'))} | "
                         f"{percent(run.get('recovery'))} | {percent(run.get('utility_kept'))} | "
                         f"{percent(run.get('forecast_size'))} / {percent(run.get('forecast_gradient'))} | "
                         f"{'-' if within is None else 'yes' if within else 'no'} | {r['form']} |")
    return "\n".join(head + lines)


def plot_study(rows: list[dict], path: Path) -> Path | None:
    """Retained at full precision against int4 recovery, one marker per target, with the deep-failure
    region (at most FORGOT_ENOUGH retained, at least RETURNS back) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..scoring import FORGOT_ENOUGH, RETURNS
    from ..utils.io import save_figure

    points = [(r["target"], run) for r in rows for run in r["runs"]
              if run["retained"] is not None and run["recovery"] is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.fill_between([0, FORGOT_ENOUGH * 100], RETURNS * 100, 110, color="tab:red", alpha=0.1,
                    label="deep failure (the paper's)")
    markers = "osD^vP*X"
    for i, target in enumerate(dict.fromkeys(name for name, _ in points)):
        runs = [run for name, run in points if name == target]
        ax.scatter([r["retained"] * 100 for r in runs], [r["recovery"] * 100 for r in runs],
                   marker=markers[i % len(markers)], s=50, color=f"C{i}", label=target)
    paper = (21.0, (83.0 - 21.0) / (100.0 - 21.0) * 100)  # MUSE, 21% retained -> 83% after 4-bit (abstract)
    ax.scatter(*paper, marker="*", s=120, color="k", label="the paper (MUSE average)")
    ax.set_xlabel("retained at full precision (% of the target's forget knowledge)")
    ax.set_ylabel("int4 recovery (% of the forgotten that returns)")
    ax.set_xlim(0, 105)
    ax.set_ylim(-10, 110)
    ax.set_title("The paper's failure over targets: one marker per unlearning run", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def run_study(n: int, out: str | Path, quiet: bool = False, path: str | Path = STUDY,
              grids: list[tuple[str, GridConfig]] | None = None) -> dict:
    """`demo --targets N`: every target's grid in out/<target>/ (each resumable), then study.md, study.json and
    study.png in `out` with the verdict over targets. `grids`: study_grids(n, path), already adjusted."""
    from ..utils.io import atomic_write_json, atomic_write_text

    out = Path(out)
    grids = grids or study_grids(n, path)  # every target's grid validated before the first one runs
    rows = []
    for i, (name, grid) in enumerate(grids, 1):
        if not quiet:
            print(f"target {i} of {len(grids)}: {name} ({out / name}/)")
        rows.append(run_target(name, grid, out, quiet))
    summary = summarise(rows)
    plot = plot_study(rows, out / "study.png")
    md = ["# unlearn-audit: the paper's failure over targets", "",
          f"Each target is the study's base fine-tuned with its own options (`{Path(path).name}`); its grid, report "
          "and environment are in its folder. Per run: the retained share of the target's forget knowledge at "
          "full precision (mean of VerbMem_f and KnowMem_f), how much of the forgotten int4 brings back (pooled), "
          "the utility kept (KnowMem_r), and the bins forecasts of the recovery (by the update's size, which "
          "judges, and by the forget loss's gradient).", "", study_table(rows), "", f"**{verdict_line(summary)}.**"]
    md += ["", f"![retained vs recovery per target]({plot.name})"] if plot else []
    atomic_write_json(out / STUDY_RESULTS, {"targets": rows, "summary": summary})
    atomic_write_text(out / STUDY_REPORT, "\n".join(md) + "\n")
    return {"rows": rows, "summary": summary, "table": study_table(rows), "line": verdict_line(summary)}
