"""The report's Markdown tables and text lines, from aggregated rows and verdicts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ...attacks import target_reference
from ...evaluate.benchmark import benchmark_names, get_benchmark
from ...quantize.schemes import precision_label
from ...scoring import (
    KNOWLEDGE,
    PREDICTION_TOLERANCE,
    SURVIVES,
    fmt,
    knowledge_recovery,
    markdown_table,
    mean,
    percent,
    share,
    utility_kept,
)
from ...utils.io import read_json
from .rows import is_quantization, ordered_labels, runs_by_label
from .verdicts import judged_recovery, prediction_agrees, retrained_gain

PAPER_METRICS = ("verbmem_f", "knowmem_f", "privleak", "knowmem_r")  # the paper's Table 1, M1-M4 in its order


def muse_label(metric: str) -> str:
    """A MUSE metric's label as its benchmark declares it (looked up when a table is drawn, not on import)."""
    return get_benchmark("muse").label(metric)


def cell(a: dict, key: str, pct: bool = False) -> str:
    """Mean, with the spread over seeds when there are several."""
    sd = a["sd"].get(key)
    if sd is None:
        return fmt(a.get(key), pct)
    return f"{fmt(a.get(key), pct)} ± {fmt(sd, pct)}"


def paper_table(agg: list[dict], schemes: list[str]) -> str:
    """Markdown table in the layout of the paper's Table 1 (M1..M4 per model and precision)."""
    order = {s: i for i, s in enumerate(schemes)}
    rows = []
    for label in ordered_labels(agg):
        for a in sorted((a for a in agg if a["label"] == label), key=lambda a: order.get(a["scheme"], 99)):
            name = label if a["scheme"] == "full" else f"{label} + {precision_label(a['scheme'])} ({a['scheme']})"
            rows.append([name, *(cell(a, k) for k in PAPER_METRICS)])
    return markdown_table(["Method", *(f"M{i} {muse_label(k)}" for i, k in enumerate(PAPER_METRICS, 1))], rows)


def retention_table(agg: list[dict], schemes: list[str]) -> str:
    """Retained share of the target's VerbMem / KnowMem on D_f, per unlearned model and scheme."""
    by_run = runs_by_label(agg)
    rows = []
    for key in sorted(by_run):
        cells = []
        for s in schemes:
            a = by_run[key].get(s)
            cells.append("-" if not a else f"{cell(a, 'retained_verbmem_f', True)} / {cell(a, 'retained_knowmem_f', True)}")
        rows.append([key, *cells])
    return markdown_table(["Unlearned model", *(f"{s}: VerbMem / KnowMem" for s in schemes)], rows)


def recovery_cell(v: dict, attack: str) -> str:
    """'VerbMem / KnowMem (pooled)' recovery under one attack (the pooled one with its spread over seeds),
    '-' where there was too little to return to."""
    verb, know, both = (fmt(judged_recovery(v, attack, k), True) for k in (*KNOWLEDGE, "pooled"))
    sd = v.get("recovery_sd", {}).get(attack)
    return f"{verb} / {know} ({both}{'' if sd is None or both == '-' else ' ± ' + fmt(sd, True)})"


def verdict_table(verdicts: list[dict], schemes: list[str]) -> str:
    """Per method: retained at full precision, recovery under each quantized scheme, utility, verdict,
    and what `bins` forecast (by the forget loss's gradient where the forget texts were given, and from the weights alone)."""
    quantized = [s for s in schemes if s != "full"]
    head = ["Unlearned model", "retained at full: VerbMem / KnowMem (mean)"]
    head += [f"{s}: recovery VerbMem / KnowMem (pooled)" for s in quantized]
    head += ["KnowMem_r kept", "measured verdict", "bins forecast of the recovery (by the forget loss's gradient, where given; by the update's size, judged)",
             f"prediction within {percent(PREDICTION_TOLERANCE)}?"]
    rows = []
    for v in verdicts:
        r = v["retained"]
        row = [v["label"], f"{fmt(r['verbmem_f'], True)} / {fmt(r['knowmem_f'], True)} ({fmt(r['mean'], True)})"]
        for s in quantized:
            row.append(recovery_cell(v, s))
        right = prediction_agrees(v)
        row += [fmt(v["utility_kept"], True), v["verdict_text"], bins_prediction(v.get("bins")),
                "-" if right is None else ("yes" if right else "no")]
        rows.append(row)
    return markdown_table(head, rows)


def attack_table(verdicts: list[dict], agg: list[dict], attacks: list[str]) -> str:
    """Per method: recovery under each attack beyond quantization; the last row is the control."""
    head = ["Unlearned model", "retained at full (mean)", *(f"{a}: recovery VerbMem / KnowMem (pooled)" for a in attacks),
            "measured verdict (4-bit)"]
    rows = [[v["label"], fmt(v["retained"]["mean"], True), *(recovery_cell(v, a) for a in attacks), v["verdict_text"]]
            for v in verdicts]
    rows.append(["Retrained (control): knowledge gained, share of the target's", "-",
                 *(fmt(retrained_gain(agg, a), True) for a in attacks), "-"])
    return markdown_table(head, rows)


def robustness_table(verdicts: list[dict], columns: list[str]) -> str:
    """Per method: how deep it forgets, what utility it keeps and the worst of every attack and
    quantizer evaluated (the question 'which method survives everything?')."""
    attacks = [c for c in columns if c != "full"]
    head = ["Unlearned model", "retained at full (mean)", "KnowMem_r kept", "worst attack: recovery (pooled)",
            f"attacks bringing back > {percent(SURVIVES)}"]
    rows = []
    for v in verdicts:
        recs = {a: judged_recovery(v, a, "pooled") for a in attacks}
        recs = {a: r for a, r in recs.items() if r is not None}
        worst = max(recs, key=recs.get) if recs else None
        failing = [a for a, r in recs.items() if r > SURVIVES]
        rows.append([v["label"], fmt(v["retained"]["mean"], True), fmt(v["utility_kept"], True),
                     f"{worst}: {fmt(recs[worst], True)}" if worst else "-", ", ".join(failing) if failing else "none"])
    return markdown_table(head, rows)


def bins_prediction(b: dict | None) -> str:
    """The weights-alone forecast: quantization brings back the share of the update that does not
    survive along its own direction, 1 - survival (the erased mass is shown beside it)."""
    if not b or b.get("projected_survival") is None:
        return "-"
    first = b.get("first_order_survival")
    by_gradient = f"{fmt(1 - first, True)} back by the forget loss's gradient; " if first is not None else ""
    return (f"{b['scheme']}: {by_gradient}{fmt(1 - b['projected_survival'], True)} back by the update's size "
            f"({fmt(b['projected_survival'], True)} of the update survives; {fmt(b['erased_mass_share'], True)} "
            "of its mass erased)")


def bins_lines(brows: list[dict]) -> list[str]:
    """The bins table, one row per unlearned run and scheme (no lines without analyses)."""
    rows = []
    for r in sorted(brows, key=lambda r: (r["label"], r["scheme"], r["seed"] or 0)):
        cap = f"; bf16 cap {r['bf16_cap']:.3g}" if r.get("bf16_cap") else ""
        rows.append([r["label"], str(r["seed"]), r["scheme"], f"{percent(r['changed_share'], 1)}", f"{percent(r['same_code_share'], 1)}",
                     f"{percent(r['zero_bin_share'], 1)}", f"{percent(r['erased_mass_share'], 1)}{cap}",
                     fmt(r.get("projected_survival"), True), r["verdict"]])
    head = ["Unlearned model", "seed", "scheme", "changed", "same code", "in zero bin", "erased mass",
            "survival along update", "verdict"]
    return markdown_table(head, rows).split("\n") if rows else []


def benchmark_table(rows: list[dict], bench, schemes: list[str]) -> str:
    """Another benchmark's verdict material per unlearned run (seeds averaged): its forget-knowledge metrics
    beyond the retrained control at full precision, share(u, t, c) (their floors are high: TOFU's
    probability, WMDP's 25% chance), recovery pooled over them under each quantized scheme
    (`scoring.knowledge_recovery`), the utility kept and, where the benchmark has one, the reference metric
    (TOFU's forget quality) at each precision."""
    keys = bench.knowledge
    ref = {(r["model"], r["seed"], r["scheme"]): r["all_metrics"] for r in rows if r["model"] in ("target", "retrained")}
    full = {(r["label"], r["seed"]): r["all_metrics"] for r in rows if r["dtype"] and r["scheme"] == "full"}
    quantized = [x for x in schemes if x != "full" and is_quantization(x)]
    cells: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        u_full = full.get((r["label"], r["seed"]))
        t = ref.get(("target", r["model_seed"], target_reference(r["scheme"])))
        c = ref.get(("retrained", r["model_seed"], r["scheme"]))
        if not r["dtype"] or not u_full or not t or not all(k in r["all_metrics"] for k in keys):
            continue
        u = r["all_metrics"]
        if r["scheme"] == "full":
            for k in keys:
                cells[r["label"]][k].append(share(u[k], t[k], (c or {}).get(k)))
            cells[r["label"]]["utility"].append(utility_kept(u, t, bench.utility))
        else:
            cells[r["label"]][r["scheme"]].append(knowledge_recovery(u_full, u, t, "pooled", keys))
        if bench.reference_metric:
            cells[r["label"]][f"ref {r['scheme']}"].append(u.get(bench.reference_metric))
    if not cells:
        return ""
    head = ["Unlearned model", f"beyond the control at full: {' / '.join(bench.label(k) for k in keys)}",
            *(f"{x}: recovery (pooled)" for x in quantized), f"{bench.label(bench.utility)} kept"]
    ref_schemes = ["full", *quantized] if bench.reference_metric else []
    head += [f"{bench.label(bench.reference_metric)} at {x}" for x in ref_schemes]
    table = []
    for label in sorted(cells):
        c = cells[label]
        table.append([label, " / ".join(fmt(mean(c[k]), True) for k in keys), *(fmt(mean(c[x]), True) for x in quantized),
                      fmt(mean(c["utility"]), True), *(fmt(mean(c[f"ref {x}"]), digits=3) for x in ref_schemes)])
    return markdown_table(head, table)


def other_benchmarks(rows: list[dict], schemes: list[str]) -> dict[str, str]:
    """The tables of the benchmarks other than MUSE whose metrics the eval cells hold."""
    out = {}
    for name in benchmark_names():
        bench = get_benchmark(name)
        if name != "muse" and any(all(k in r["all_metrics"] for k in bench.knowledge) for r in rows):
            out[bench.title] = benchmark_table(rows, bench, schemes)
    return out


def target_under_quantization(agg: list[dict], schemes: list[str]) -> list[str]:
    """The target's own change under each quantizer (seeds averaged): recovery is measured against the
    quantized target, so a quantizer that already costs the target knowledge is visible here."""
    target = {a["scheme"]: a for a in agg if a["label"] == "Target"}
    full = target.get("full")
    if not full:
        return []
    out = []
    for s in schemes:
        q = target.get(s)
        if s != "full" and q and is_quantization(s):
            out.append(f"target under {s}: " + ", ".join(
                f"{muse_label(key)} {fmt(full[key])} -> {fmt(q[key])}" for key in ("verbmem_f", "knowmem_f", "knowmem_r")))
    return out


def applied_lines(ledger) -> list[str]:
    """What each gguf scheme applied per tensor (llama.cpp's type mix and width fallbacks: a 576-wide
    model's "Q4_K_M" is mostly Q5_0), read from the target's evaluation, so a table's column is labelled by
    what was actually applied."""
    out = {}
    for cell in ledger.cells("eval"):
        r = cell.result if cell.status == "done" else None
        applied = ((r or {}).get("quantization") or {}).get("applied")
        if applied and (r["scheme"] not in out or r["model"] == "target"):
            out[r["scheme"]] = f"{precision_label(r['scheme'])} = {applied}"
    return [out[s] for s in sorted(out)]


def model_quality(ledger) -> list[str]:
    out = []
    for cell in ledger.cells("model"):
        if cell.status == "done" and cell.result.get("quality"):
            q = cell.result["quality"]
            out.append(f"- {cell.result['role']} (seed {cell.result.get('seed')}): KnowMem exact match forget "
                       f"{q['forget']['exact_match']:.2f}, retain {q['retain']['exact_match']:.2f} "
                       f"(model at `{cell.result['path']}`)")
    return out


def degrid_lines(ledger) -> list[str]:
    """The de-gridded base (grid option `degrid`): its fine-tune's loss per epoch and how far it moved."""
    out = []
    for cell in ledger.cells("model"):
        d = (cell.result or {}).get("degrid") if cell.status == "done" else None
        if d:
            moved = ("" if d["changed_share"] is None else f"; {percent(d['changed_share'])} of its weights changed, "
                     f"relative L2 change {d['relative_change']:.2e}")
            if d.get("mean_steps") is not None:
                moved += (f"; against the base's 4-bit grid (blocks of 32): moved {d['mean_steps']:.2f} steps on "
                          f"average, {percent(d['moved_share'])} by half a step or more, {percent(d['on_grid_share'])} "
                          "still on it (10% of random weights are)")
            how = (f"with every weight moved a uniform random amount of up to {d['dither']:g} steps of its block's grid"
                   if "dither" in d else "fine-tuned on a world the grid does not use (loss per epoch "
                   f"{', '.join(f'{x:.3f}' for x in d['loss'])})")
            out.append(f"- `{cell.result['base']}` {how}, before the target and the retrained model{moved}")
    return out


def failures(ledger) -> list[str]:
    """Failed cells with their error, and planned cells no run has finished (a shard not merged, a run
    stopped early): listed, never silently dropped."""
    failed = [f"- {c.kind} {c.id}: {(c.error or '').splitlines()[0] if c.error else ''}"
              for c in ledger.cells() if c.status == "failed"]
    seen = {c.id: c.status for c in ledger.cells()}
    missing = sorted(i for i in (ledger.ids or ()) if seen.get(i) not in ("done", "failed"))
    return failed + [f"- {i}: not run yet" for i in missing]


def environment_lines(run_dir: Path) -> list[str]:
    """Where the cells were computed, and whether that is the environment the README was measured in."""
    from ...utils.environment import ENVIRONMENT_FILE, describe, lock_differences

    path = run_dir / ENVIRONMENT_FILE
    if not path.is_file():
        return []
    envs = read_json(path)["environments"]
    lines = [f"- {describe(env)}" for env in envs]
    if len(envs) > 1:
        lines.append(f"- the cells were computed under {len(envs)} environments (a resumed run): numbers from "
                     "different kernels or versions are mixed")
    diffs = lock_differences(envs[-1])
    lines.append("- differs from the README tables' environment: " + "; ".join(diffs) if diffs else
                 "- the README tables' lock (src/unlearn_audit/constraints.txt), kind of CPU and cores: numbers "
                 "comparable to the README's")
    return lines
