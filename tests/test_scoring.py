"""The scoring vocabulary against hand-computed values, boundaries included."""

import math

import pytest

from unlearn_audit.experiment.audit import verdict
from unlearn_audit.scoring import (
    Gate,
    Verdict,
    combined,
    control_gain,
    fmt,
    knowledge_recovery,
    knowledge_share,
    markdown_table,
    over_unlearned,
    quantization_verdict,
    recovery,
    share,
    verdict_text,
)


def test_share_against_a_baseline_and_the_one_point_rule():
    assert share(60.0, 80.0, 20.0) == pytest.approx(40 / 60)
    assert share(30.0, 60.0) == pytest.approx(0.5)  # the paper's u / t
    assert share(10.0, 20.0, 30.0) is None  # the target knows less than the control: nothing to forget
    assert share(5.0, 21.0, 20.0) == pytest.approx(-15.0)  # exactly one point: defined (and negative here)
    assert share(5.0, 20.9, 20.0) is None  # less than one point: undefined
    assert share(None, 50.0) is None and share(10.0, None) is None


def test_metrics_combine_by_mean_or_worst():
    u, t, c = {"verbmem_f": 30.0, "knowmem_f": 10.0}, {"verbmem_f": 60.0, "knowmem_f": 50.0}, {"verbmem_f": 0.0, "knowmem_f": 10.0}
    assert knowledge_share(u, t, None, "mean") == pytest.approx((0.5 + 0.2) / 2)
    assert knowledge_share(u, t, None, "worst") == pytest.approx(0.5)
    assert knowledge_share(u, t, c, "worst") == pytest.approx(0.5)  # knowmem: (10-10)/(50-10) = 0
    assert combined([None, float("nan")], "mean") is None


def test_recovery_is_the_way_from_the_unlearned_score_to_the_attacked_targets():
    assert recovery(20.0, 50.0, 80.0) == pytest.approx(0.5)
    assert recovery(20.0, 20.0, 60.0) == 0.0  # unchanged although the quantizer cost the target 20 points
    assert recovery(20.0, 60.0, 60.0) == 1.0  # scores as the quantized target: the paper's fallback
    assert recovery(20.0, 10.0, 60.0) == pytest.approx(-0.25)
    assert recovery(20.0, 30.0, 25.0) == pytest.approx(2.0)  # exactly MIN_RECOVERABLE: defined
    assert recovery(20.0, 30.0, 24.9) is None  # the attacked target knows < 5 points more: nothing to return to
    assert recovery(None, 0.5, 80.0) is None and recovery(20.0, None, 80.0) is None


def test_recovery_pools_the_points_over_the_metrics_where_it_is_defined():
    u = {"verbmem_f": 0.0, "knowmem_f": 60.0}
    t_q = {"verbmem_f": 50.0, "knowmem_f": 62.0}  # knowmem: 2 points to return to, not measured
    u_q = {"verbmem_f": 10.0, "knowmem_f": 70.0}
    assert knowledge_recovery(u, u_q, t_q) == pytest.approx(10 / 50)
    t_q["knowmem_f"] = 80.0
    assert knowledge_recovery(u, u_q, t_q) == pytest.approx((10 + 10) / (50 + 20))
    assert knowledge_recovery(u, u_q, t_q, "worst") == pytest.approx(0.5)
    assert knowledge_recovery(u, u_q, {"verbmem_f": 1.0, "knowmem_f": 61.0}) is None


def test_control_gain_is_a_share_of_the_targets_forgettable_knowledge():
    t = {"verbmem_f": 80.0, "knowmem_f": 60.0}
    c_full = {"verbmem_f": 20.0, "knowmem_f": 10.0}
    c_attacked = {"verbmem_f": 35.0, "knowmem_f": 10.0}
    assert control_gain(c_attacked, c_full, t, "worst") == pytest.approx(15 / 60)
    assert control_gain(c_attacked, c_full, t, "mean") == pytest.approx((15 / 60 + 0) / 2)
    assert control_gain(None, c_full, t, "mean") is None


@pytest.mark.parametrize("retained, recs, expected", [
    (0.95, [0.5, 0.9], Verdict.RETURNS),  # 0.95 retained is still judged; every 4-bit scheme at >= 50%
    (0.951, [0.9], Verdict.TOO_LITTLE),
    (None, [0.9], Verdict.TOO_LITTLE),
    (0.4, [0.49, 0.9], Verdict.PARTLY),
    (0.4, [0.1, 0.05], Verdict.HOLDS),
    (0.4, [0.11], Verdict.PARTLY),
    (0.4, [None], Verdict.NO_FOUR_BIT),
    (0.4, [], Verdict.NO_FOUR_BIT),
])
def test_quantization_verdict_boundaries(retained, recs, expected):
    assert quantization_verdict(retained, recs) is expected


def test_verdict_text_says_when_forgetting_was_shallow():
    assert verdict_text(Verdict.RETURNS, 0.6) == "knowledge returns"
    assert verdict_text(Verdict.RETURNS, 0.61) == "knowledge returns (shallow forgetting)"
    assert verdict_text(Verdict.TOO_LITTLE, 0.99) == "forgot too little to judge"
    assert Verdict.TOO_LITTLE == "forgot too little to judge" and not Verdict.TOO_LITTLE.judged


def test_gate_exit_codes_and_the_utility_floor():
    assert [g.exit_code for g in Gate] == [0, 1, 1, 3]
    assert over_unlearned(0.79) and not over_unlearned(0.8) and not over_unlearned(None)


def audit_full(retained, utility):
    return {"attack": "full", "retained": retained, "utility_kept": utility}


def audit_row(retained, holds):
    return {"attack": "quant:rtn-int4-g128", "retained": retained, "holds": holds, "recovery": 0.6,
            "unlearned_full": {"knowmem_f": 10.0}, "unlearned": {"knowmem_f": 40.0}, "target": {"knowmem_f": 50.0},
            "control": None}


@pytest.mark.parametrize("full, rows, gate, words", [
    (audit_full(0.3, 0.9), [], Gate.NOT_REMOVED, "did not remove"),
    (audit_full(0.1, 0.9), [audit_row(0.8, False)], Gate.RETURNS, "does not survive quant:rtn-int4-g128"),
    (audit_full(0.1, 0.9), [audit_row(0.2, True)], Gate.HOLDS, "holds under every attack"),
    (audit_full(0.0, 0.26), [audit_row(0.0, True)], Gate.OVER_UNLEARNED, "over-unlearned"),
    (audit_full(0.3, 0.1), [], Gate.NOT_REMOVED, "did not remove"),  # knowledge first: over-unlearning is secondary
])
def test_audit_gate_states_the_utility_and_fails_over_unlearning(full, rows, gate, words):
    got, line = verdict(full, rows, max_retained=0.25, min_utility=0.8)
    assert got is gate and words in line
    assert f"utility kept {fmt(full['utility_kept'], True)} of the target's KnowMem_r" in line


def test_numbers_and_tables_have_one_format():
    assert fmt(None) == "-" and fmt(math.nan) == "-" and fmt(12.345) == "12.3" and fmt(12.345, digits=2) == "12.35"
    assert fmt(0.123, True) == "12%" and fmt(-0.001, True) == "0%" and fmt(-0.2, True) == "-20%"
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_the_report_names_over_unlearning():
    assert verdict_text(Verdict.HOLDS, 0.2, 0.5) == "forgetting holds (over-unlearned)"
    assert verdict_text(Verdict.HOLDS, 0.7, 0.5) == "forgetting holds (shallow forgetting; over-unlearned)"
    assert verdict_text(Verdict.HOLDS, 0.2, 0.8) == "forgetting holds"
    assert verdict_text(Verdict.HOLDS, 0.2, 0.9, False) == "forgetting holds (retain answers not fluent)"
    assert verdict_text(Verdict.HOLDS, 0.2, 0.5, False) == "forgetting holds (over-unlearned; retain answers not fluent)"
    assert verdict_text(Verdict.HOLDS, 0.2, 0.9, True) == verdict_text(Verdict.HOLDS, 0.2, 0.9, None) == "forgetting holds"


def test_hidden_or_gone_names_every_place_the_knowledge_hides():
    from unlearn_audit.scoring import Hidden, hidden_or_gone

    assert hidden_or_gone(False, ["quant"]) == [Hidden.NOT_REMOVED]
    assert hidden_or_gone(True, []) == [Hidden.ERASED]
    assert hidden_or_gone(True, ["prompt", "quant", "probe", "relearn"]) == [
        Hidden.WEIGHTS, Hidden.REPRESENTATIONS, Hidden.PROMPTING]
    assert hidden_or_gone(True, ["probe"]) == [Hidden.REPRESENTATIONS]


def test_forgetting_that_no_attack_breaks_is_erased_only_if_every_place_was_tested():
    """With weight attacks alone the knowledge is "not found under the attacks tested", not "erased"."""
    from unlearn_audit.scoring import Hidden, hidden_or_gone, untested_places

    assert hidden_or_gone(True, [], ["quant", "prune"]) == [Hidden.NOT_FOUND]
    assert untested_places(["quant", "prune"]) == ["hidden states", "prompts"]
    assert hidden_or_gone(True, [], ["quant", "probe", "prompt"]) == [Hidden.ERASED]
    assert untested_places(["quant", "probe", "prompt"]) == []


def test_the_two_retained_shares_and_utility_kept_are_named_apart():
    """retained_mean (the paper's headline, the report's) and retained_worst (audit's gate) differ on the
    same models; utility kept reads the benchmark's utility metric."""
    from unlearn_audit.scoring import retained_mean, retained_worst, utility_kept

    u, t, c = {"verbmem_f": 20.0, "knowmem_f": 60.0, "knowmem_r": 45.0}, \
        {"verbmem_f": 80.0, "knowmem_f": 80.0, "knowmem_r": 50.0}, {"verbmem_f": 20.0, "knowmem_f": 40.0}
    assert retained_mean(u, t) == (0.25 + 0.75) / 2
    assert retained_worst(u, t) == 0.75 and retained_worst(u, t, c) == 0.5  # (60 - 40) / (80 - 40)
    assert utility_kept(u, t) == 0.9 and utility_kept({"mmlu": 30.0}, {"mmlu": 40.0}, "mmlu") == 0.75
    assert utility_kept(u, {"knowmem_r": 0.0}) is None


def test_missing_scores_and_baselines_are_handled_not_guessed():
    from unlearn_audit.scoring import ratio

    assert ratio(None, 2.0) is None and ratio(2.0, None) is None and ratio(2.0, 0.0) is None and ratio(3.0, 2.0) == 1.5
    assert share(50.0, 100.0, None) == 0.5  # no baseline: the paper's u / t
    u, t = {"verbmem_f": 30.0}, {"verbmem_f": 60.0, "knowmem_f": 50.0}
    assert knowledge_share(u, t) == 0.5  # a metric the model was not scored on is left out, not a KeyError
    assert knowledge_share({"verbmem_f": 30.0, "knowmem_f": 40.0}, {"verbmem_f": 60.0}, {"knowmem_f": 5.0}) == 0.5


def test_the_combining_rule_is_named_and_defaults_to_the_gate_form():
    u, t = {"verbmem_f": 30.0, "knowmem_f": 10.0}, {"verbmem_f": 60.0, "knowmem_f": 50.0}
    assert knowledge_share(u, t) == 0.5  # default: the worst (larger) share, as audit's gate reads it
    for how in ("MEAN", "best", None):
        with pytest.raises(ValueError, match=f"combine by 'mean' or 'worst', not {how!r}"):
            combined([0.5], how)
        with pytest.raises(ValueError, match=f"by 'pooled' or 'worst', not {how!r}"):
            knowledge_recovery(u, u, t, how)
    u_q, t_q = {"verbmem_f": 40.0, "knowmem_f": 35.0}, {"verbmem_f": 60.0, "knowmem_f": 50.0}
    assert knowledge_recovery(u, u_q, t_q) == pytest.approx((10 + 25) / (30 + 40))  # default: pooled
    assert knowledge_recovery(u, u_q, t_q, "worst") == pytest.approx(25 / 40)


def test_the_paper_headline_is_a_mean_over_the_metrics_asked_for():
    from unlearn_audit.scoring import retained_mean, retained_worst

    u, t = {"verbmem_f": 30.0, "knowmem_f": 10.0, "rouge": 8.0}, {"verbmem_f": 60.0, "knowmem_f": 50.0, "rouge": 10.0}
    assert retained_mean(u, t) == pytest.approx(0.35)
    assert retained_mean(u, t, ("knowmem_f", "rouge")) == pytest.approx((0.2 + 0.8) / 2)
    assert retained_worst(u, t, None, ("knowmem_f",)) == pytest.approx(0.2)


def test_control_gain_needs_all_three_models():
    t = {"verbmem_f": 80.0}
    assert control_gain({"verbmem_f": 40.0}, {"verbmem_f": 20.0}, None, "mean") is None
    assert control_gain({"verbmem_f": 40.0}, None, t, "mean") is None
    assert control_gain({"verbmem_f": 40.0}, {"verbmem_f": 20.0, "knowmem_f": None}, t, "mean") == pytest.approx(1 / 3)


def test_utility_is_stated_with_the_benchmarks_metric():
    from unlearn_audit.scoring import utility_words

    assert utility_words(None) == "utility not measured (no KnowMem_r)"
    assert utility_words(0.9) == "utility kept 90% of the target's KnowMem_r"
    assert utility_words(0.5, "MMLU") == "utility kept 50% of the target's MMLU"
    assert fmt(1.0, True) == "100%" and fmt(2.5, True) == "250%"


def test_means_and_spreads_over_seeds_skip_missing_values():
    from unlearn_audit.scoring import mean, spread

    assert mean([1.0, None, 3.0, math.nan]) == 2.0 and mean([None]) is None and mean([]) is None
    assert spread([1.0, 3.0, None]) == pytest.approx(math.sqrt(2.0))  # sample (n - 1) deviation
    assert spread([2.0, 4.0, 9.0]) == pytest.approx(math.sqrt(13.0))
    assert spread([5.0]) is None and spread([5.0, math.nan]) is None


def test_one_percent_formatter_with_decimals():
    from unlearn_audit.scoring import percent

    assert percent(0.1234) == "12%" and percent(0.1234, 1) == "12.3%" and percent(None, 1) == "-"
    assert percent(-0.0004, 1) == "0.0%" and percent(-0.25) == "-25%" and percent(math.nan) == "-"
