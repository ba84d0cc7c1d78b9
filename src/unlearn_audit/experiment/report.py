"""Tables, retention figures and plots from a run's ledger (no recomputation).

Retention of forgotten knowledge, per unlearned model and precision or attack s, for VerbMem and KnowMem
on D_f (Zhang et al.'s headline figure, 21% at full precision -> 83% at 4 bits): retained = share(u, t)
and relative = share(u, t, retrained), with u, t the unlearned and target scores under s; every share,
recovery and verdict is defined in `unlearn_audit.scoring`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..attacks import as_attack, target_reference
from ..errors import UserError
from ..quantize.schemes import precision_label
from ..scoring import (
    FORGOT_ENOUGH,
    FORGOT_SOMETHING,
    HOLDS,
    KNOWLEDGE,
    MIN_RECOVERABLE,
    PREDICTION_TOLERANCE,
    RETURNS,
    SURVIVES,
    UTILITY_KEPT,
    Verdict,
    combined,
    control_gain,
    fmt,
    forgot_too_little,
    knowledge_recovery,
    markdown_table,
    mean,
    over_unlearned,
    quantization_verdict,
    recovery,
    share,
    spread,
    utility_kept,
    verdict_text,
)
from ..utils.io import atomic_write_json, atomic_write_text, read_json, save_figure
from .ledger import Ledger, PlannedCells

METRIC_COLUMNS = [("verbmem_f", "M1 VerbMem D_f"), ("knowmem_f", "M2 KnowMem D_f"), ("privleak", "M3 PrivLeak"),
                  ("knowmem_r", "M4 KnowMem D_r")]
PAPER = {"full": 21.0, "4-bit": 83.0}  # average retained share, utility-constrained methods (abstract)


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
            "settings": r.get("settings"), "model_seed": r.get("model_seed"),
            "verbmem_f": m.get("verbmem_f"), "knowmem_f": m.get("knowmem_f"), "knowmem_r": m.get("knowmem_r"),
            "privleak": m.get("privleak"), "auc": r["details"].get("privleak", {}).get("auc"),
            "all_metrics": m,  # with other benchmarks' metrics where the grid asks for them (`benchmarks`)
        })
    label_rows(rows)
    add_retention(rows)
    add_recovery(rows)
    return rows


# Unlearning options that have their own place in a row's label (or never vary within a run).
LABELLED = {"method", "dtype", "learning_rate", "seed", "base", "arithmetic"}


def label_rows(rows: list[dict], like: list[dict] | None = None) -> None:
    """Give each row the label of its run: method, regime, learning rate and every other unlearning
    option that varies in this grid (epochs, alpha, ...; as among the rows `like`, default `rows`);
    seeds share a label and are averaged."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows if like is None else like:
        if r.get("settings"):
            by_method[r["model"]].append(r["settings"])
    varying = {}  # per method: the options that vary among its runs (not those set by method_overrides)
    for method, settings in by_method.items():
        keys = sorted({k for st in settings for k in st} - LABELLED)
        varying[method] = [k for k in keys if len({repr(st.get(k)) for st in settings}) > 1]
    for r in rows:
        if not r["dtype"]:
            r["label"] = r["model"].capitalize()
            continue
        extra = "".join(f", {k} {(r.get('settings') or {}).get(k)}" for k in varying.get(r["model"], []))
        r["label"] = f"{r['model'].upper()} ({r['dtype']}, lr {r['lr']:g}{extra})"


def add_retention(rows: list[dict]) -> None:
    """retained = unlearned / target and relative = (unlearned - retrained) / (target - retrained), each
    against the target and retrained models of the same seed (when seeds re-draw them) and precision or
    attack; for relearning attacks the target is taken at full precision (as `audit` does)."""
    ref = {(r["model"], r["seed"], r["scheme"]): r for r in rows if r["model"] in ("target", "retrained")}
    for r in rows:
        if r["model"] in ("target", "retrained"):
            continue
        t = ref.get(("target", r["model_seed"], target_reference(r["scheme"])))
        rt = ref.get(("retrained", r["model_seed"], r["scheme"]))
        for key in KNOWLEDGE:
            r[f"retained_{key}"] = share(r[key], t[key]) if t else None
            r[f"relative_{key}"] = share(r[key], t[key], rt[key]) if t and rt and rt[key] is not None else None
        r["utility_kept"] = utility_kept(r, t) if t else None


def add_recovery(rows: list[dict]) -> None:
    """recovery = (u_a - u) / (t_a - u) per knowledge metric and pooled (`scoring.knowledge_recovery`), per
    seed: u the same run and seed at full precision, t_a the target under the attack (at full precision
    for relearning)."""
    ref = {(r["model"], r["seed"], r["scheme"]): r for r in rows if r["model"] == "target"}
    full = {(r["label"], r["seed"]): r for r in rows if r["dtype"] and r["scheme"] == "full"}
    for r in rows:
        u, t = full.get((r["label"], r["seed"])), ref.get(("target", r["model_seed"], target_reference(r["scheme"])))
        if not r["dtype"] or r["scheme"] == "full" or not u or not t:
            continue
        for key in KNOWLEDGE:
            r[f"recovery_{key}"] = recovery(u[key], r[key], t[key])
        r["recovery_pooled"] = knowledge_recovery(u, r, t)


RECOVERY_KEYS = [*(f"recovery_{k}" for k in KNOWLEDGE), "recovery_pooled"]
AVERAGED = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "retained_verbmem_f", "retained_knowmem_f",
            "relative_verbmem_f", "relative_knowmem_f", "utility_kept", *RECOVERY_KEYS]


def aggregate(rows: list[dict]) -> list[dict]:
    """Rows averaged over seeds: one per (run label, scheme), each value as its mean, with `sd` (the
    spread over seeds) and `n` (how many seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["scheme"])].append(r)
    out = []
    for (label, scheme), rs in groups.items():
        first = rs[0]
        agg = {"label": label, "scheme": scheme, "model": first["model"], "dtype": first["dtype"], "lr": first["lr"],
               "seeds": sorted(x["seed"] for x in rs if x["seed"] is not None), "n": len(rs), "sd": {}}
        for key in AVERAGED:
            values = [x.get(key) for x in rs]
            agg[key] = mean(values)
            agg["sd"][key] = spread(values)
        out.append(agg)
    return out


def cell(a: dict, key: str, pct: bool = False) -> str:
    """Mean, with the spread over seeds when there are several."""
    sd = a["sd"].get(key)
    if sd is None:
        return fmt(a.get(key), pct)
    return f"{fmt(a.get(key), pct)} ± {fmt(sd, pct)}"


def ordered_labels(agg: list[dict]) -> list[str]:
    labels = {a["label"] for a in agg}
    return sorted(labels, key=lambda k: (k not in ("Target", "Retrained"), k != "Target", k))


def paper_table(agg: list[dict], schemes: list[str]) -> str:
    """Markdown table in the layout of the paper's Table 1 (M1..M4 per model and precision)."""
    order = {s: i for i, s in enumerate(schemes)}
    rows = []
    for label in ordered_labels(agg):
        for a in sorted((a for a in agg if a["label"] == label), key=lambda a: order.get(a["scheme"], 99)):
            name = label if a["scheme"] == "full" else f"{label} + {precision_label(a['scheme'])} ({a['scheme']})"
            rows.append([name, *(cell(a, k) for k, _ in METRIC_COLUMNS)])
    return markdown_table(["Method", *(c for _, c in METRIC_COLUMNS)], rows)


def runs_by_label(agg: list[dict]) -> dict[str, dict[str, dict]]:
    """Aggregated rows of unlearned runs: label -> scheme -> row."""
    by_run: dict[str, dict[str, dict]] = defaultdict(dict)
    for a in agg:
        if a["dtype"]:
            by_run[a["label"]][a["scheme"]] = a
    return by_run


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


def constrained(method: str) -> bool:
    """Utility-constrained methods (the paper's headline averages over these): those with a retain term
    (`Method.needs_retain`: *_gdr, *_klr, RMU) and SURE."""
    from ..unlearn.methods import is_wrapper, resolve_method

    if is_wrapper(method):
        return method == "sure"
    try:
        return resolve_method(method).needs_retain
    except UserError:  # a method this installation does not know (a run folder from elsewhere)
        return False


def four_bit(schemes: list[str]) -> list[str]:
    return [s for s in schemes if s != "full" and precision_label(s) in ("int4", "4-bit")]


def retained_mean(a: dict) -> float | None:
    """The paper's headline retained share: the mean of VerbMem and KnowMem on D_f, unlearned / target."""
    return combined((a[f"retained_{k}"] for k in KNOWLEDGE), "mean")


def method_verdicts(agg: list[dict], schemes: list[str], bins: dict[str, dict] | None = None) -> list[dict]:
    """Per unlearned run (seeds averaged): retained share at full precision and the recovery under each
    quantized scheme (for VerbMem, KnowMem and their mean), a verdict, and the bins prediction."""
    bins = bins or {}
    by_run = runs_by_label(agg)
    out = []
    for label in sorted(by_run):
        runs = by_run[label]
        full = runs.get("full")
        if not full:
            continue
        entry = {"label": label, "method": full["model"], "dtype": full["dtype"], "n": full["n"],
                 "retained": {**{k: full[f"retained_{k}"] for k in KNOWLEDGE}, "mean": retained_mean(full)},
                 "utility_kept": full["utility_kept"], "recovery": {}, "retained_under": {}, "recovery_sd": {}}
        for s in [x for x in schemes if x != "full"]:
            q = runs.get(s)
            if q:
                entry["recovery"][s] = {k: q[f"recovery_{k}"] for k in (*KNOWLEDGE, "pooled")}
                entry["recovery_sd"][s] = q["sd"].get("recovery_pooled")
                entry["retained_under"][s] = retained_mean(q)
        entry["verdict"] = verdict_of(entry, four_bit(schemes))
        entry["verdict_text"] = verdict_text(entry["verdict"], entry["retained"]["mean"], entry["utility_kept"])
        if label in bins:
            entry["bins"] = bins[label]
        out.append(entry)
    return out


def verdict_of(entry: dict, four: list[str]) -> Verdict:
    """From the mean retained share: does what full precision forgot come back under every 4-bit scheme?"""
    return quantization_verdict(entry["retained"]["mean"],
                                [entry["recovery"][s]["pooled"] for s in four if s in entry["recovery"]])


def judged_recovery(v: dict, attack: str, key: str) -> float | None:
    """The recovery under `attack` (a knowledge metric or 'pooled'), or None where full precision forgot
    less than 5% of it: a share of almost nothing is noise (one question more or less reads as +-1000%)."""
    if forgot_too_little(v["retained"]["mean" if key == "pooled" else key]):
        return None
    return v["recovery"].get(attack, {}).get(key)


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
             f"prediction within {PREDICTION_TOLERANCE:.0%}?"]
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


def is_quantization(name: str) -> bool:
    return name == "full" or as_attack(name).family == "quant"


def retrained_gain(agg: list[dict], attack: str) -> float | None:
    """What an attack gives the retrained model (seeds averaged): `scoring.control_gain`, metrics averaged
    (against the target at the attack's reference precision)."""
    at = {(a["label"], a["scheme"]): a for a in agg}
    rt, rt_a, t = at.get(("Retrained", "full")), at.get(("Retrained", attack)), at.get(("Target", target_reference(attack)))
    return control_gain(rt_a, rt, t, "mean")


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
            f"attacks bringing back > {SURVIVES:.0%}"]
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


def forecast_survival(b: dict) -> float | None:
    """The survival a forecast is judged by: the one from the weights alone. The first-order one (by the
    forget loss's gradient) is shown beside it; on the rows measured so far it was not closer (findings
    section 11)."""
    return b.get("projected_survival")


def prediction_agrees(v: dict) -> bool | None:
    """Is the bins forecast (1 - survival) within PREDICTION_TOLERANCE of the measured mean recovery
    under the analysed scheme?"""
    b = v.get("bins")
    rec = v["recovery"].get(b["scheme"], {}).get("pooled") if b else None
    if rec is None or forecast_survival(b) is None or v["verdict"] is Verdict.TOO_LITTLE:
        return None
    return abs((1 - forecast_survival(b)) - rec) <= PREDICTION_TOLERANCE


SHALLOW_AT_THIS_SIZE = (
    "a model this small cannot forget deeply inside its quantization bins: it needs ~1.5% relative weight change "
    "to forget, more than a capped bf16 update that stays in the int4 bins can make (docs/findings.md, section "
    "5); `unlearn-audit demo` shows the deep form on SmolLM2-135M")


def regime_lines(verdicts: list[dict], four: list[str], tiny: bool = False) -> list[str]:
    """Per training precision: which runs show the paper's failure, and whether that agrees with the
    paper (pure bf16 at a small learning rate: knowledge returns; fp32, mixed and SURE: it holds).
    `tiny`: the run's models are the built-in tiny ones, which can only show the shallow form, and the
    line says so instead of disagreeing."""
    lines = []
    for dtype in sorted({v["dtype"] for v in verdicts}):
        vs = [v for v in verdicts if v["dtype"] == dtype]
        judged = [v for v in vs if v["verdict"].judged]
        returns = [v for v in judged if v["verdict"] is Verdict.RETURNS]
        parts = [f"{dtype} regime, 4-bit = {', '.join(four) or 'none'}: knowledge returns for {len(returns)} of "
                 f"{len(vs)} runs" + (f" ({'; '.join(v['label'] for v in returns)})" if returns else "")]
        expect_return = [v for v in judged if dtype == "bf16" and constrained(v["method"]) and v["method"] != "sure"]
        expect_hold = [v for v in judged if v not in expect_return and (dtype != "bf16" or v["method"] == "sure")]
        if expect_return:
            hits = [v for v in expect_return if v["verdict"] is Verdict.RETURNS]
            full = mean([v["retained"]["mean"] for v in expect_return])
            deep = [v for v in hits if v["retained"]["mean"] <= FORGOT_ENOUGH
                    and (v["utility_kept"] is None or v["utility_kept"] >= UTILITY_KEPT)]
            utility = mean([v["utility_kept"] for v in expect_return])
            if len(deep) >= max(1, (len(expect_return) + 1) // 2):
                word = "AGREES with the paper's failure"
            elif tiny and hits:
                word = "SHALLOW FORM of the paper's failure, as expected at this size"
            elif hits:
                word = "PARTLY AGREES with the paper's failure"
            else:
                word = "DISAGREES with the paper's failure"
            parts.append(f"{word}: in {len(hits)} of {len(expect_return)} "
                         f"utility-constrained runs at least {RETURNS:.0%} of the forgotten knowledge returns "
                         f"({len(deep)} of them forgot as deeply as the paper, retaining at most "
                         f"{FORGOT_ENOUGH:.0%} at full precision while keeping at least {UTILITY_KEPT:.0%} of the "
                         f"target's KnowMem_r; mean retained here {fmt(full, True)}, paper 21%; mean utility kept "
                         f"{fmt(utility, True)})")
            if tiny and len(deep) < max(1, (len(expect_return) + 1) // 2):
                parts.append(SHALLOW_AT_THIS_SIZE)
        if expect_hold:
            held = [v for v in expect_hold if v["verdict"] is Verdict.HOLDS]
            word = "AGREES" if len(held) == len(expect_hold) else "DISAGREES"
            over = [v for v in held if over_unlearned(v["utility_kept"])]
            parts.append(f"{word} with the paper's contrast: forgetting holds (at most {HOLDS:.0%} back) for "
                         f"{len(held)} of {len(expect_hold)} runs expected to hold"
                         + (f" ({len(over)} of them over-unlearned: KnowMem_r below {UTILITY_KEPT:.0%} of the "
                            "target's, so their forgetting holds trivially)" if over else ""))
        too_little = [v["label"] for v in vs if v["verdict"] is Verdict.TOO_LITTLE]
        if too_little:
            parts.append(f"NOT COMPARABLE: {len(too_little)} run(s) kept more than {FORGOT_SOMETHING:.0%} of the "
                         "knowledge at full precision; raise the learning rate or the epochs")
        lines.append(". ".join(parts))
    return lines


def bins_rows(ledger) -> list[dict]:
    """The finished bins analyses, one per unlearned run and scheme (labelled like the eval rows)."""
    return [dict(c.result) for c in ledger.cells("bins") if c.status == "done"]


def bins_by_label(brows: list[dict], scheme: str | None) -> dict[str, dict]:
    """Per run label, the seeds' mean erased mass and survival along the update under `scheme`."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in brows:
        if b["scheme"] == scheme:
            groups[b["label"]].append(b)
    return {label: {"scheme": scheme, "n": len(bs),
                    "erased_mass_share": mean([b["erased_mass_share"] for b in bs]),
                    "projected_survival": mean([b.get("projected_survival") for b in bs]),
                    "first_order_survival": mean([(b.get("first_order") or {}).get("first_order_survival")
                                                  for b in bs])}
            for label, bs in groups.items()}


def bins_lines(brows: list[dict]) -> list[str]:
    """The bins table, one row per unlearned run and scheme (no lines without analyses)."""
    rows = []
    for r in sorted(brows, key=lambda r: (r["label"], r["scheme"], r["seed"] or 0)):
        cap = f"; bf16 cap {r['bf16_cap']:.3g}" if r.get("bf16_cap") else ""
        rows.append([r["label"], str(r["seed"]), r["scheme"], f"{r['changed_share']:.1%}", f"{r['same_code_share']:.1%}",
                     f"{r['zero_bin_share']:.1%}", f"{r['erased_mass_share']:.1%}{cap}",
                     fmt(r.get("projected_survival"), True), r["verdict"]])
    head = ["Unlearned model", "seed", "scheme", "changed", "same code", "in zero bin", "erased mass",
            "survival along update", "verdict"]
    return markdown_table(head, rows).split("\n") if rows else []


def plot_knowledge(agg: list[dict], schemes: list[str], path: Path) -> Path | None:
    """KnowMem and VerbMem on D_f against precision, one line per model (mean over seeds, with the
    spread as error bars), one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({a["dtype"] for a in agg if a["dtype"]})
    if not regimes:
        return None
    fig, axes = plt.subplots(2, len(regimes), figsize=(6 * len(regimes), 7), squeeze=False)
    x = list(range(len(schemes)))
    for col, dtype in enumerate(regimes):
        labels = ["Target", "Retrained"] + sorted({a["label"] for a in agg if a["dtype"] == dtype})
        for row, key in enumerate(("knowmem_f", "verbmem_f")):
            ax = axes[row][col]
            for label in labels:
                pts = {a["scheme"]: a for a in agg if a["label"] == label}
                if not pts:
                    continue
                ys = [pts[s][key] if s in pts and pts[s][key] is not None else float("nan") for s in schemes]
                err = [(pts[s]["sd"].get(key) or 0.0) if s in pts else 0.0 for s in schemes]
                style = {"Target": "k--", "Retrained": "k:"}.get(label, "-o")
                ax.errorbar(x, ys, yerr=err, fmt=style, capsize=3, label=label)
            ax.set_xticks(x, schemes, fontsize=7, rotation=30, ha="right")  # attack names are long
            ax.set_title(f"{dtype} regime: {key} (x100, mean ± spread over seeds)", fontsize=9)
            ax.set_ylim(-2, 102)
        axes[0][col].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def plot_retained_bars(verdicts: list[dict], schemes: list[str], path: Path) -> Path | None:
    """The paper's figure form: per method, the retained share of the target's forget-set knowledge
    (mean of VerbMem and KnowMem, seeds averaged) at full precision and after each quantizer, as bars;
    one panel per training precision, side by side on one scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quant = [s for s in schemes if s == "full" or is_quantization(s)]
    regimes = sorted({v["dtype"] for v in verdicts})
    if not regimes or not quant:
        return None
    panels = [[v for v in verdicts if v["dtype"] == d] for d in regimes]
    widest = max(len(p) for p in panels)
    fig, axes = plt.subplots(1, len(regimes), figsize=(max(6.0, 1.5 * widest + 1.5) * len(regimes), 4.8),
                             squeeze=False, sharey=True)
    width = 0.8 / len(quant)
    colours = plt.get_cmap("viridis")([i / max(1, len(quant) - 1) * 0.85 for i in range(len(quant))])
    for ax, dtype, runs in zip(axes[0], regimes, panels):
        for j, scheme in enumerate(quant):
            ys = [retained_after(v, scheme) for v in runs]
            xs = [i + (j - (len(quant) - 1) / 2) * width for i in range(len(runs))]
            ax.bar(xs, [100 * y if y is not None else float("nan") for y in ys], width, color=colours[j],
                   label="full precision" if scheme == "full" else f"{precision_label(scheme)} ({scheme})")
        ax.axhline(100, color="k", ls="--", lw=0.8, label="the target")
        ax.axhline(FORGOT_ENOUGH * 100, color="grey", ls=":", lw=0.8, label=f"{FORGOT_ENOUGH:.0%}: deep forgetting")
        ax.set_xticks(range(len(runs)), [v["label"].replace(" (", "\n(", 1) for v in runs], fontsize=7)
        ax.set_title(f"{dtype} unlearning", fontsize=10)
        ax.set_ylim(0, 130)
    axes[0][0].set_ylabel("forget-set knowledge retained\n(% of the target's, mean of VerbMem and KnowMem)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper right", ncol=2)
    fig.suptitle("Retained after unlearning: full precision and quantized", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def retained_after(v: dict, scheme: str) -> float | None:
    """The paper's retained share (unlearned / target, VerbMem and KnowMem averaged) under a scheme."""
    return v["retained"]["mean"] if scheme == "full" else v["retained_under"].get(scheme)


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
    from ..evaluate.benchmark import benchmark_names, get_benchmark

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
                f"{name} {fmt(full[key])} -> {fmt(q[key])}" for key, name in
                (("verbmem_f", "VerbMem_f"), ("knowmem_f", "KnowMem_f"), ("knowmem_r", "KnowMem_r"))))
    return out


def model_quality(ledger) -> list[str]:
    out = []
    for cell in ledger.cells("model"):
        if cell.status == "done" and cell.result.get("quality"):
            q = cell.result["quality"]
            out.append(f"- {cell.result['role']} (seed {cell.result.get('seed')}): KnowMem exact match forget "
                       f"{q['forget']['exact_match']:.2f}, retain {q['retain']['exact_match']:.2f} "
                       f"(model at `{cell.result['path']}`)")
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
    from ..utils.environment import ENVIRONMENT_FILE, describe, lock_differences

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
            "target_quantized": target_under_quantization(agg, schemes),
            "failures": failures(ledger),
            "benchmarks": other_benchmarks(rows, schemes),
            "counts": ledger.counts(),
            "seeds": sorted({r["seed"] for r in rows if r["seed"] is not None}),
            "environment": environment_lines(run_dir),
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
          f"'knowledge returns' = at most {FORGOT_ENOUGH:.0%} retained at full precision and at least {RETURNS:.0%} "
          f"recovered under every 4-bit scheme; 'forgetting holds' = at most {HOLDS:.0%} recovered; 'over-unlearned' = "
          f"KnowMem_r below {UTILITY_KEPT:.0%} of the target's (forgetting then holds trivially); '-' where full "
          f"precision forgot less than {1 - FORGOT_SOMETHING:.0%} (a share of almost nothing is noise). The bins "
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
           f"more than {SURVIVES:.0%} of what was forgotten.", "", pieces["robustness"], "",
           "## Against the paper (21% retained at full precision -> 83% after 4-bit)", ""]
    md += [f"- {line}" for line in pieces["agreement"]] or ["- (no unlearned models evaluated yet)"]
    if pieces["target_quantized"]:
        md += ["", "The target's own change under each quantizer (recovery is measured against the quantized "
               "target):", ""] + [f"- {line}" for line in pieces["target_quantized"]]
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


def merge_run_folders(out: str | Path, runs: list[str | Path]) -> Path:
    """`report --out OUT RUN...`: one run folder holding the cells of several (the shards of one grid):
    every finished or failed cell, the grid's config and the bins plots; refuses folders of other grids."""
    import shutil

    from .config import load_grid
    from .grid import plan

    out, runs = Path(out), [Path(r) for r in runs]
    configs = []
    for r in runs:
        if not (r / "ledger.sqlite").is_file() or not (r / "config.yaml").is_file():
            raise UserError(f"{r} is not a run folder of a grid (no ledger.sqlite or config.yaml)")
        if out.resolve() == r.resolve():
            raise UserError(f"--out {out} is one of the folders to merge; choose a new folder")
        configs.append(load_grid(r / "config.yaml"))
    if any(c != configs[0] for c in configs[1:]):
        raise UserError("the folders hold different grids (their config.yaml differ); merge shards of one grid only")
    order = {c.id: i for i, c in enumerate(plan(configs[0]))}
    merged = Ledger(out / "ledger.sqlite")
    for r in runs:
        for cell in Ledger(r / "ledger.sqlite").cells():
            if cell.status in ("done", "failed"):  # in the grid's own order, as one process would list them
                merged.copy_in(cell, order.get(cell.id, len(order)))
        if (r / "bins").is_dir():
            shutil.copytree(r / "bins", out / "bins", dirs_exist_ok=True)
    atomic_write_text(out / "config.yaml", (runs[0] / "config.yaml").read_text())
    merge_environments(out, runs)
    return out


def merge_environments(out: Path, runs: list[Path]) -> None:
    """The merged folder's environment.json: each distinct environment the shards were computed in."""
    from ..utils.environment import ENVIRONMENT_FILE, numeric_part

    envs: list[dict] = []
    for r in runs:
        path = r / ENVIRONMENT_FILE
        for env in read_json(path)["environments"] if path.is_file() else []:
            if all(numeric_part(env) != numeric_part(e) for e in envs):
                envs.append(env)
    if envs:
        atomic_write_json(out / ENVIRONMENT_FILE, {"environments": envs})


def render_folder(run_dir: str | Path) -> dict:
    """`report`: render a run folder as its config.yaml planned it (every cell of the ledger without one)."""
    from .config import load_grid
    from .grid import folder_shard, planned_ids

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
