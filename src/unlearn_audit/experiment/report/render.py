"""The report assembled from a run folder: report.md, summary.json, results.json and the plots, from the
rows (rows.py), verdicts (verdicts.py), tables (tables.py) and plots (plots.py); the printed summary."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ...quantize.schemes import four_bit
from ...scoring import (
    FORGOT_ENOUGH,
    FORGOT_SOMETHING,
    HOLDS,
    MIN_RECOVERABLE,
    RETURNS,
    SURVIVES,
    UTILITY_KEPT,
    percent,
)
from ...utils.io import atomic_write_json, atomic_write_text
from ..ledger import Ledger, PlannedCells
from .plots import plot_knowledge, plot_retained_bars
from .rows import aggregate, bins_by_label, bins_rows, is_quantization, label_rows, rows_from_ledger
from .tables import (
    applied_lines,
    attack_table,
    bins_lines,
    degrid_lines,
    environment_lines,
    failures,
    model_quality,
    other_benchmarks,
    paper_table,
    retention_table,
    robustness_table,
    target_under_quantization,
    verdict_table,
)
from .verdicts import PAPER, method_verdicts, regime_lines


def render(run_dir: str | Path, schemes: list[str], title: str = "unlearn-audit report",
           cell_ids: set[str] | None = None, bins_schemes: list[str] | None = None, tiny: bool = False) -> dict:
    """Write report.md, results.json, summary.json and plots for a run folder (only the cells in
    `cell_ids`, when given: the current grid's plan); returns the pieces for printing."""
    run_dir = Path(run_dir)
    store = Ledger(run_dir / "ledger.sqlite")
    ledger = PlannedCells(store, cell_ids)
    try:
        rows = rows_from_ledger(ledger)
        brows = bins_rows(ledger)
        label_rows(brows, like=rows)
        agg = aggregate(rows)
        bins_scheme = (bins_schemes or sorted({b["scheme"] for b in brows}) or [None])[0]
        verdicts = method_verdicts(agg, schemes, bins_by_label(brows, bins_scheme))
        pieces = {
            "table": paper_table(agg, schemes),
            "retention": retention_table(agg, schemes),
            "verdicts": verdict_table(verdicts, [x for x in schemes if is_quantization(x)]),
            "attacks": (attack_table(verdicts, agg, [x for x in schemes if not is_quantization(x)])
                        if any(not is_quantization(x) for x in schemes) else ""),
            "robustness": robustness_table(verdicts, schemes),
            "agreement": regime_lines(verdicts, four_bit(schemes), tiny),
            "bins": bins_lines(brows),
            "quality": model_quality(ledger),
            "degrid": degrid_lines(ledger),
            "target_quantized": target_under_quantization(agg, schemes),
            "applied": applied_lines(ledger),
            "failures": failures(ledger),
            "benchmarks": other_benchmarks(rows, schemes),
            "counts": ledger.counts(),
            "seeds": sorted({r["seed"] for r in rows if r["seed"] is not None}),
            "environment": environment_lines(run_dir),
            "verdict_rows": verdicts,
            "aggregated": agg,
        }
        plot = plot_knowledge(agg, schemes, run_dir / "knowledge_vs_precision.png")
        bars = plot_retained_bars(verdicts, schemes, run_dir / "retained_by_method.png")
        bins_plots = [b["plot"] for b in brows]
    finally:
        store.close()
    atomic_write_json(run_dir / "results.json", rows)
    atomic_write_json(run_dir / "summary.json", {"aggregated": agg, "verdicts": verdicts, "paper": PAPER,
                                                 "counts": pieces["counts"]})
    seeds = pieces["seeds"]
    over = f" (mean ± spread over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    md = [f"# {title}", "", f"## Results{over}: MUSE metrics x100 in the paper's Table 1 layout", "", pieces["table"],
          "", f"## Retained share of the target's forget-set knowledge{over}", "",
          "Unlearned / target at the same precision, per scheme.", "", pieces["retention"], "",
          "## Per method: does quantization bring the knowledge back?", "",
          f"Recovery = (u_q - u) / (t_q - u): how far the quantizer moves the unlearned model's score u "
          f"towards the quantized target's t_q (100% = it scores as the quantized target: the paper's "
          f"fallback; 0% = unchanged), per metric where t_q - u >= {MIN_RECOVERABLE:g} points, and pooled "
          f"(sum of the gains over sum of the gaps; ± its spread over seeds); "
          f"'knowledge returns' = at most {percent(FORGOT_ENOUGH)} retained at full precision and at least {percent(RETURNS)} "
          f"recovered under every 4-bit scheme; 'forgetting holds' = at most {percent(HOLDS)} recovered; 'over-unlearned' = "
          f"KnowMem_r below {percent(UTILITY_KEPT)} of the target's (forgetting then holds trivially); '-' where full "
          f"precision forgot less than {percent(1 - FORGOT_SOMETHING)} (a share of almost nothing is noise). The bins "
          "prediction reads the weights alone: the share of the update that does not survive quantization along "
          "its own direction, 1 - <Q(u) - Q(t), u - t> / |u - t|^2.", "", pieces["verdicts"], ""]
    if any(not is_quantization(x) for x in schemes):
        md += ["## Per method: which other recovery attacks bring the knowledge back?", "",
               "Recovery as above, under each attack (docs/attacks.md); the last row is the control: what the "
               "same attack gives the retrained model, which never saw the forget set, as a share of the "
               "knowledge the target has beyond it (the target at full precision for relearning).", "",
               pieces["attacks"], ""]
    md += ["## Which methods survive every quantizer and attack?", "",
           f"Per method (seeds averaged): the retained share at full precision, the utility kept (KnowMem_r of "
           f"the target), the attack or quantizer that brings back the most, and every one that brings back "
           f"more than {percent(SURVIVES)} of what was forgotten.", "", pieces["robustness"], "",
           "## Against the paper (21% retained at full precision -> 83% after 4-bit)", ""]
    md += [f"- {line}" for line in pieces["agreement"]] or ["- (no unlearned models evaluated yet)"]
    if pieces["target_quantized"]:
        md += ["", "The target's own change under each quantizer (recovery is measured against the quantized "
               "target):", ""] + [f"- {line}" for line in pieces["target_quantized"]]
    if pieces["applied"]:
        md += ["", "What each GGUF scheme applied, tensors per llama.cpp type (its type mix and its fallbacks for rows "
               "not a multiple of 256 wide; tensors kept in F32 not counted):", ""] + [f"- {line}" for line in pieces["applied"]]
    for title, table in pieces["benchmarks"].items():
        md += ["", f"## The same models on {title} (docs/benchmarks.md)", "",
               "Per unlearned run (seeds averaged): the benchmark's forget-knowledge metrics as the share of what the "
               "target knows beyond the retrained control, (u - c) / (t - c), at full precision; recovery pooled over "
               "them under each quantized scheme, as above; its utility kept at full precision; where the benchmark "
               "has one, its reference metric at each precision (TOFU's forget quality: the KS p-value against the "
               "retrained model's truth ratios, 1 = indistinguishable from it).", "", table]
    if pieces["bins"]:
        md += ["", "## Weight bins: does the update survive quantization?", ""] + pieces["bins"]
    if pieces["quality"]:
        md += ["", "## Tiny models", ""] + pieces["quality"]
    if pieces["degrid"]:
        md += ["", "## The base moved off its quantization grid", ""] + pieces["degrid"]
    if plot:
        md += ["", "## Plots", ""]
        md += [f"![retained by method and precision]({bars.name})", ""] if bars else []
        md += [f"![knowledge vs precision]({plot.name})"]
        md += [f"- bins histogram: `bins/{Path(p).parent.name}/{Path(p).name}`" for p in bins_plots]
    if pieces["environment"]:
        md += ["", "## Environment (environment.json: every package, CPU flags, kernels, threads)", ""]
        md += pieces["environment"]
    if pieces["failures"]:
        md += ["", "## Failed or missing cells (re-run the same command, or merge the missing shard)", ""]
        md += pieces["failures"]
    atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    return pieces


def render_folder(run_dir: str | Path) -> dict:
    """`report`: render a run folder as its config.yaml planned it (every cell of the ledger without one)."""
    from ..config import load_grid
    from ..grid import folder_shard, planned_ids

    run_dir = Path(run_dir)
    if not (run_dir / "ledger.sqlite").is_file():
        raise UserError(f"{run_dir} is not a run folder (no ledger.sqlite); run `demo` or `grid` first")
    ids, schemes, name, bins, tiny = None, ["full", "rtn-int8-channel", "rtn-int4-g128"], "report", None, False
    if (run_dir / "config.yaml").is_file():
        cfg = load_grid(run_dir / "config.yaml")
        ids, schemes, name = planned_ids(cfg, folder_shard(run_dir)), cfg.evaluated, cfg.name
        bins = cfg.bins_schemes
        tiny = cfg.tiny_models
    return render(run_dir, schemes, title=f"unlearn-audit {name}", cell_ids=ids, bins_schemes=bins, tiny=tiny)


def provisional_lines(pieces: dict, left: int, seconds: float) -> str:
    """The verdict lines of a report rendered from the first bf16 and fp32 runs (`grid.decisive_ids`)."""
    return "\n".join([f"provisional verdict after {seconds / 60:.0f} min, from the first bf16 and fp32 runs "
                       f"({left} cells left refine it; report.md written now and again at the end):",
                       *(f"  * {line}" for line in pieces["agreement"])])


def terminal_summary(pieces: dict, run_dir: Path) -> str:
    """What `demo`, `grid` and `report` print: the tables, the verdict lines and where the files are."""
    lines = ["", pieces["table"], "",
             "Retained share of the target's forget-set knowledge (VerbMem / KnowMem, unlearned / target):",
             pieces["retention"], "",
             "Per method: recovery under quantization, and the bins forecast:",
             pieces["verdicts"], ""]
    if pieces["attacks"]:  # the grid has attack columns
        lines += ["Per method: recovery under the other attacks; last row, what they give the retrained control:",
                  pieces["attacks"], ""]
    lines += ["* " + line for line in pieces["agreement"]]
    lines += ["  " + line for line in pieces.get("target_quantized", [])]
    if pieces["failures"]:
        lines += ["", "Failed or missing cells (re-run the same command, or merge the missing shard):", *pieces["failures"]]
    lines += ["", f"report: {run_dir / 'report.md'} (also the weight-bin table)  results: {run_dir / 'results.json'}  "
                  f"plot: {run_dir / 'knowledge_vs_precision.png'}"]
    return "\n".join(lines)
