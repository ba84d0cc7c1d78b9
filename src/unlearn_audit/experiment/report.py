"""Tables, retention figures and plots from a run's ledger (no recomputation).

Retention of forgotten knowledge, per unlearned model and precision s (Zhang et al.'s headline figure,
21% at full precision -> 83% at 4 bits, reproduced by this definition for GA_KLR BOOKS):
    retained(metric, s) = metric(unlearned, s) / metric(target, s)          for VerbMem and KnowMem on D_f
    relative(metric, s) = (metric(unlearned, s) - metric(retrained, s)) / (metric(target, s) - metric(retrained, s))
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..quantize.schemes import precision_label
from ..utils.io import atomic_write_json, atomic_write_text
from .ledger import Ledger

METRIC_COLUMNS = [("verbmem_f", "M1 VerbMem D_f"), ("knowmem_f", "M2 KnowMem D_f"), ("privleak", "M3 PrivLeak"),
                  ("knowmem_r", "M4 KnowMem D_r")]
PAPER = {"full": 21.0, "4-bit": 83.0}  # average retained share, utility-constrained methods (abstract)


class PlannedCells:
    """The ledger's cells restricted to one grid's plan (a run folder may hold cells of older configs)."""

    def __init__(self, ledger: Ledger, ids: set[str] | None):
        self.ledger = ledger
        self.ids = ids

    def cells(self, kind: str | None = None):
        return [c for c in self.ledger.cells(kind) if self.ids is None or c.id in self.ids]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells():
            out[c.status] = out.get(c.status, 0) + 1
        return out


def rows_from_ledger(ledger) -> list[dict]:
    """One row per (model, scheme) evaluation, with retention figures for unlearned models."""
    rows = []
    for cell in ledger.cells("eval"):
        if cell.status != "done":
            continue
        r = cell.result
        m = r["metrics"]
        rows.append({
            "model": r["model"], "dtype": r["dtype"], "lr": r["lr"], "seed": r["seed"], "scheme": r["scheme"],
            "verbmem_f": m.get("verbmem_f"), "knowmem_f": m.get("knowmem_f"), "knowmem_r": m.get("knowmem_r"),
            "privleak": m.get("privleak"), "auc": r["details"].get("privleak", {}).get("auc"),
        })
    add_retention(rows)
    return rows


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def add_retention(rows: list[dict]) -> None:
    ref = {(r["model"], r["scheme"]): r for r in rows if r["model"] in ("target", "retrained")}
    for r in rows:
        if r["model"] in ("target", "retrained"):
            continue
        t, rt = ref.get(("target", r["scheme"])), ref.get(("retrained", r["scheme"]))
        for key in ("verbmem_f", "knowmem_f"):
            r[f"retained_{key}"] = ratio(r[key], t[key]) if t else None
            r[f"relative_{key}"] = (ratio(r[key] - rt[key], t[key] - rt[key])
                                    if t and rt and None not in (r[key], rt[key], t[key]) else None)


def run_label(r: dict) -> str:
    return f"{r['model'].upper()} ({r['dtype']}, lr {r['lr']:g})" if r["dtype"] else r["model"].capitalize()


def fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.1f}"


def paper_table(rows: list[dict], schemes: list[str]) -> str:
    """Markdown table in the layout of the paper's Table 1 (M1..M4 per model and precision)."""
    order = {s: i for i, s in enumerate(schemes)}
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[run_label(r)].append(r)
    keys = sorted(groups, key=lambda k: (k not in ("Target", "Retrained"), k != "Target", k))
    lines = ["| Method | " + " | ".join(c for _, c in METRIC_COLUMNS) + " |", "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
    for key in keys:
        for r in sorted(groups[key], key=lambda r: order.get(r["scheme"], 99)):
            name = key if r["scheme"] == "full" else f"{key} + {precision_label(r['scheme'])} ({r['scheme']})"
            lines.append(f"| {name} | " + " | ".join(fmt(r[k]) for k, _ in METRIC_COLUMNS) + " |")
    return "\n".join(lines)


def retention_table(rows: list[dict], schemes: list[str]) -> str:
    """Retained share of the target's VerbMem / KnowMem on D_f, per unlearned model and precision."""
    unl = [r for r in rows if r["model"] not in ("target", "retrained")]
    by_run: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in unl:
        by_run[run_label(r)][r["scheme"]] = r
    head = "| Unlearned model | " + " | ".join(f"{precision_label(s)} VerbMem / KnowMem" for s in schemes) + " |"
    lines = [head, "|---" * (len(schemes) + 1) + "|"]
    for key in sorted(by_run):
        cells = []
        for s in schemes:
            r = by_run[key].get(s)
            cells.append("-" if not r else f"{fmt(r['retained_verbmem_f'], True)} / {fmt(r['retained_knowmem_f'], True)}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def constrained(method: str) -> bool:
    """Utility-constrained methods (the paper's headline averages over these): *_gdr, *_klr, sure."""
    return method.endswith(("_gdr", "_klr")) or method == "sure"


def regime_summary(rows: list[dict], schemes: list[str]) -> list[dict]:
    """Per training precision: the average retained share (mean of VerbMem and KnowMem on D_f,
    unlearned / target) of the utility-constrained methods at each quantization scheme, and the same
    relative to the retrained model ((u - retrained) / (target - retrained))."""
    out = []
    for dtype in sorted({r["dtype"] for r in rows if r["dtype"]}):
        picked = [r for r in rows if r["dtype"] == dtype and constrained(r["model"])]
        entry = {"dtype": dtype, "lrs": sorted({r["lr"] for r in picked}), "methods": sorted({r["model"] for r in picked}),
                 "retained": {}, "relative": {}}
        for s in schemes:
            rs = [r for r in picked if r["scheme"] == s]
            entry["retained"][s] = mean([mean([r["retained_verbmem_f"], r["retained_knowmem_f"]]) for r in rs])
            entry["relative"][s] = mean([mean([r["relative_verbmem_f"], r["relative_knowmem_f"]]) for r in rs])
        out.append(entry)
    return out


def agreement(summary: list[dict], schemes: list[str]) -> list[str]:
    """Sentences comparing the measured retention to the paper's 21% (full) -> 83% (4-bit)."""
    four = [s for s in schemes if s != "full" and precision_label(s) in ("int4", "4-bit")]
    eight = [s for s in schemes if s != "full" and precision_label(s) in ("int8", "8-bit")]
    lines = []
    for e in summary:
        full = e["retained"].get("full")
        if full is None:
            continue
        parts = [f"full precision {fmt(full, True)}"]
        parts += [f"{s} {fmt(e['retained'].get(s), True)}" for s in eight + four]
        rel = [f"{s} {fmt(e['relative'].get(s), True)}" for s in ["full", *eight, *four] if e["relative"].get(s) is not None]
        head = (f"{e['dtype']} regime ({', '.join(e['methods'])}; lr {', '.join(f'{x:g}' for x in e['lrs'])}): "
                f"retained share " + ", ".join(parts))
        if rel:
            head += f" (above the retrained model: {', '.join(rel)})"
        if full > 0.75:
            lines.append(head + ". NOT COMPARABLE: unlearning removed little at full precision, so there is "
                         "nothing for quantization to bring back; raise the learning rate or the epochs")
            continue
        verdicts = []
        for s in four:
            q = e["retained"].get(s)
            if q is None:
                continue
            gain = q - full
            if gain >= 0.2:
                verdicts.append(f"AGREES with the paper at {s}: quantization brings back {gain:.0%} of the target's "
                                "forget-set knowledge that full precision had removed")
            elif gain >= 0.05:
                verdicts.append(f"PARTLY agrees at {s}: +{gain:.0%} (paper: +62 points)")
            else:
                verdicts.append(f"DISAGREES at {s}: the forgetting survives 4-bit quantization here "
                                f"({gain:+.0%}; paper: 21% -> 83%)")
        lines.append(head + ". " + "; ".join(verdicts))
    return lines


def bins_lines(ledger: Ledger) -> list[str]:
    out = []
    for cell in ledger.cells("bins"):
        if cell.status != "done":
            continue
        r = cell.result
        cap = f"; bf16 cap {r['bf16_cap']:.3g}" if r.get("bf16_cap") else ""
        out.append(f"| {r['model']} ({r['dtype']}, lr {r['lr']:g}) | {r['scheme']} | {r['changed_share']:.1%} | "
                   f"{r['same_code_share']:.1%} | {r['zero_bin_share']:.1%} | {r['erased_mass_share']:.1%}{cap} | "
                   f"{r['verdict']} |")
    if out:
        out = ["| Unlearned model | scheme | changed | same code | in zero bin | erased mass | verdict |",
               "|---|---|---|---|---|---|---|"] + out
    return out


def plot_knowledge(rows: list[dict], schemes: list[str], path: Path) -> Path | None:
    """KnowMem on D_f (and VerbMem) against precision, one line per model, one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r["dtype"] for r in rows if r["dtype"]})
    if not regimes:
        return None
    fig, axes = plt.subplots(2, len(regimes), figsize=(6 * len(regimes), 7), squeeze=False)
    x = list(range(len(schemes)))
    for col, dtype in enumerate(regimes):
        runs = sorted({(r["model"], r["lr"]) for r in rows if r["dtype"] == dtype}, key=str)
        for row, key in enumerate(("knowmem_f", "verbmem_f")):
            ax = axes[row][col]
            for name, lr in [("target", None), ("retrained", None), *runs]:
                pts = {r["scheme"]: r[key] for r in rows if r["model"] == name and r["lr"] == lr and
                       (r["dtype"] is None or r["dtype"] == dtype)}
                ys = [pts.get(s) for s in schemes]
                style = "k--" if name == "target" else ("k:" if name == "retrained" else "-o")
                label = name if lr is None else f"{name} (lr {lr:g})"
                ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=label)
            ax.set_xticks(x, [precision_label(s) for s in schemes])
            ax.set_title(f"{dtype} regime: {key} (x100)", fontsize=9)
            ax.set_ylim(-2, 102)
        axes[0][col].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def model_quality(ledger: Ledger) -> list[str]:
    out = []
    for cell in ledger.cells("model"):
        if cell.status == "done" and cell.result.get("quality"):
            q = cell.result["quality"]
            out.append(f"- {cell.result['role']}: KnowMem exact match forget {q['forget']['exact_match']:.2f}, "
                       f"retain {q['retain']['exact_match']:.2f} (model at `{cell.result['path']}`)")
    return out


def failures(ledger: Ledger) -> list[str]:
    return [f"- {c.kind} {c.id}: {(c.error or '').splitlines()[0] if c.error else ''}"
            for c in ledger.cells() if c.status == "failed"]


def render(run_dir: str | Path, schemes: list[str], title: str = "unlearn-audit report",
           cell_ids: set[str] | None = None) -> dict:
    """Write report.md, results.json and plots for a run folder (only the cells in `cell_ids`, when
    given: the current grid's plan); returns the pieces for printing."""
    run_dir = Path(run_dir)
    store = Ledger(run_dir / "ledger.sqlite")
    ledger = PlannedCells(store, cell_ids)
    try:
        rows = rows_from_ledger(ledger)
        summary = regime_summary(rows, schemes)
        pieces = {
            "table": paper_table(rows, schemes),
            "retention": retention_table(rows, schemes),
            "agreement": agreement(summary, schemes),
            "bins": bins_lines(ledger),
            "quality": model_quality(ledger),
            "failures": failures(ledger),
            "counts": ledger.counts(),
        }
        plot = plot_knowledge(rows, schemes, run_dir / "knowledge_vs_precision.png")
        bins_plots = [c.result["plot"] for c in ledger.cells("bins") if c.status == "done"]
    finally:
        store.close()
    atomic_write_json(run_dir / "results.json", rows)
    atomic_write_json(run_dir / "summary.json", {"regimes": summary, "paper": PAPER, "counts": pieces["counts"]})
    md = [f"# {title}", "", "## Results (MUSE metrics x100; the paper's Table 1 layout)", "", pieces["table"], "",
          "## Retained share of the target's forget-set knowledge (unlearned / target at the same precision)", "",
          pieces["retention"], "", "## Against the paper (21% at full precision -> 83% after 4-bit)", ""]
    md += [f"- {line}" for line in pieces["agreement"]] or ["- (no unlearned models evaluated yet)"]
    if any("DISAGREES" in line for line in pieces["agreement"]):
        md += ["", "Where int4 leaves the forgetting intact, the bin table below shows how much of each update "
               "int4 erases; `bench/zero_bin_capacity.py` measures whether the model's zero bins could hold a "
               "forgetting update at all (on the built-in 0.9M-parameter models they cannot; see docs/findings.md)."]
    if pieces["bins"]:
        md += ["", "## Weight bins: does the update survive quantization?", ""] + pieces["bins"]
    if pieces["quality"]:
        md += ["", "## Tiny models", ""] + pieces["quality"]
    if plot:
        md += ["", "## Plots", "", f"![knowledge vs precision]({plot.name})"]
        md += [f"- bins histogram: `{Path(p).relative_to(run_dir)}`" for p in bins_plots]
    if pieces["failures"]:
        md += ["", "## Failed cells (re-run the same command to retry)", ""] + pieces["failures"]
    atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    return pieces
