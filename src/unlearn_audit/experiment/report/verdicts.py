"""Verdicts over the aggregated rows: per method what the 4-bit quantizers and the other attacks do to its
forgetting, whether the `bins` forecast was right, and the regime lines that compare a run with the paper.
"""

from __future__ import annotations

from ...attacks import target_reference
from ...errors import UserError
from ...quantize.schemes import four_bit
from ...scoring import (
    FORGOT_ENOUGH,
    FORGOT_SOMETHING,
    HOLDS,
    KNOWLEDGE,
    PREDICTION_TOLERANCE,
    RETURNS,
    UTILITY_KEPT,
    Verdict,
    combined,
    control_gain,
    fluent,
    fmt,
    forgot_too_little,
    mean,
    over_unlearned,
    percent,
    quantization_verdict,
    verdict_text,
)
from .rows import runs_by_label

PAPER = {"full": 21.0, "4-bit": 83.0}  # average retained share, utility-constrained methods (abstract)


def constrained(method: str) -> bool:
    """Utility-constrained methods (the paper's headline averages over these): those with a retain term
    (`Method.needs_retain`: *_gdr, *_klr, RMU) and SURE."""
    from ...unlearn.methods import is_wrapper, resolve_method

    if is_wrapper(method):
        return method == "sure"
    try:
        return resolve_method(method).needs_retain
    except UserError:  # a method this installation does not know (a run folder from elsewhere)
        return False


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
        entry["fluency"] = {"perplexity": full.get("fluency_perplexity"), "gold": full.get("fluency_gold"),
                            "fluent": fluent(full.get("fluency_perplexity"), full.get("fluency_gold"))}
        entry["verdict_text"] = verdict_text(entry["verdict"], entry["retained"]["mean"], entry["utility_kept"],
                                             entry["fluency"]["fluent"])
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


def retrained_gain(agg: list[dict], attack: str) -> float | None:
    """What an attack gives the retrained model (seeds averaged): `scoring.control_gain`, metrics averaged
    (against the target at the attack's reference precision)."""
    at = {(a["label"], a["scheme"]): a for a in agg}
    rt, rt_a, t = at.get(("Retrained", "full")), at.get(("Retrained", attack)), at.get(("Target", target_reference(attack)))
    return control_gain(rt_a, rt, t, "mean")


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


def expected_failures(verdicts: list[dict]) -> list[dict]:
    """The runs the paper's failure is about: judged, utility-constrained, pure bf16, not SURE."""
    return [v for v in verdicts if v["verdict"].judged and v["dtype"] == "bf16" and constrained(v["method"])
            and v["method"] != "sure"]


def returned(runs: list[dict]) -> list[dict]:
    """The runs whose forgotten knowledge 4-bit brings back (at least RETURNS of it)."""
    return [v for v in runs if v["verdict"] is Verdict.RETURNS]


def deep_failures(runs: list[dict]) -> list[dict]:
    """The paper's failure in its deep form: the knowledge returns although the run retained at most
    FORGOT_ENOUGH at full precision and kept at least UTILITY_KEPT of the target's utility."""
    return [v for v in returned(runs) if v["retained"]["mean"] <= FORGOT_ENOUGH
            and (v["utility_kept"] is None or v["utility_kept"] >= UTILITY_KEPT)]


def failure_form(runs: list[dict]) -> str:
    """One target's form of the paper's failure over its expected runs: 'deep' when at least half of them
    fail deeply, 'shallow' when some knowledge returns otherwise, 'none' when none returns
    (docs/findings.md section 14, rule 2)."""
    if runs and len(deep_failures(runs)) >= max(1, (len(runs) + 1) // 2):
        return "deep"
    return "shallow" if returned(runs) else "none"


OVER_TARGETS = 2 / 3  # the share of targets the verdict over targets needs (findings section 14, rule 3)


def verdict_over_targets(forms: list[str]) -> str:
    """The study's verdict over n targets from each target's failure form: AGREES when at least two thirds
    fail deeply, PARTLY AGREES when the knowledge returns on at least two thirds, else DISAGREES."""
    if not forms:
        raise UserError("a verdict over targets needs at least one target with evaluated runs")
    deep = sum(f == "deep" for f in forms)
    back = sum(f in ("deep", "shallow") for f in forms)
    if deep >= OVER_TARGETS * len(forms):
        return "AGREES"
    return "PARTLY AGREES" if back >= OVER_TARGETS * len(forms) else "DISAGREES"


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
        expect_return = expected_failures(judged) if dtype == "bf16" else []
        expect_hold = [v for v in judged if v not in expect_return and (dtype != "bf16" or v["method"] == "sure")]
        if expect_return:
            hits, deep = returned(expect_return), deep_failures(expect_return)
            full = mean([v["retained"]["mean"] for v in expect_return])
            utility = mean([v["utility_kept"] for v in expect_return])
            form = failure_form(expect_return)
            if form == "deep":
                word = "AGREES with the paper's failure"
            elif tiny and hits:
                word = "SHALLOW FORM of the paper's failure, as expected at this size"
            elif hits:
                word = "PARTLY AGREES with the paper's failure"
            else:
                word = "DISAGREES with the paper's failure"
            parts.append(f"{word}: in {len(hits)} of {len(expect_return)} "
                         f"utility-constrained runs at least {percent(RETURNS)} of the forgotten knowledge returns "
                         f"({len(deep)} of them forgot as deeply as the paper, retaining at most "
                         f"{percent(FORGOT_ENOUGH)} at full precision while keeping at least {percent(UTILITY_KEPT)} of the "
                         f"target's KnowMem_r; mean retained here {fmt(full, True)}, paper 21%; mean utility kept "
                         f"{fmt(utility, True)})")
            if tiny and form != "deep":
                parts.append(SHALLOW_AT_THIS_SIZE)
        if expect_hold:
            held = [v for v in expect_hold if v["verdict"] is Verdict.HOLDS]
            word = "AGREES" if len(held) == len(expect_hold) else "DISAGREES"
            over = [v for v in held if over_unlearned(v["utility_kept"])]
            parts.append(f"{word} with the paper's contrast: forgetting holds (at most {percent(HOLDS)} back) for "
                         f"{len(held)} of {len(expect_hold)} runs expected to hold"
                         + (f" ({len(over)} of them over-unlearned: KnowMem_r below {percent(UTILITY_KEPT)} of the "
                            "target's, so their forgetting holds trivially)" if over else ""))
        too_little = [v["label"] for v in vs if v["verdict"] is Verdict.TOO_LITTLE]
        if too_little:
            parts.append(f"NOT COMPARABLE: {len(too_little)} run(s) kept more than {percent(FORGOT_SOMETHING)} of the "
                         "knowledge at full precision; raise the learning rate or the epochs")
        lines.append(". ".join(parts))
    return lines


def retained_after(v: dict, scheme: str) -> float | None:
    """The paper's retained share (unlearned / target, VerbMem and KnowMem averaged) under a scheme."""
    return v["retained"]["mean"] if scheme == "full" else v["retained_under"].get(scheme)
