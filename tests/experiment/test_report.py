"""The report's arithmetic on hand-made rows: labels keyed by every varying axis, seeds averaged with
their spread, retention against the same seed's target, and the per-method verdict."""

import pytest

from unlearn_audit.experiment.report import rows as report_rows
from unlearn_audit.experiment.report import tables as report_tables
from unlearn_audit.experiment.report import verdicts as verdicts_of


def row(model, scheme, kf, vf, kr=90.0, dtype=None, seed=None, settings=None, model_seed=None, lr=None):
    return {"model": model, "dtype": dtype, "lr": lr, "seed": seed, "scheme": scheme, "settings": settings,
            "model_seed": model_seed, "verbmem_f": vf, "knowmem_f": kf, "knowmem_r": kr, "privleak": 0.0}


def world(returned: float, seeds=(0, 1, 2), per_seed_targets=True, epochs=(10,)):
    """Target knows 80 / 80; the unlearned model keeps 20 at full precision and `returned` after int4."""
    rows = []
    for seed in seeds:
        ms = seed if per_seed_targets else None
        for scheme in ("full", "rtn-int4-g128"):
            rows.append(row("target", scheme, 80.0, 80.0, seed=ms))
            rows.append(row("retrained", scheme, 0.0, 0.0, seed=ms))
            for ep in epochs:
                value = 20.0 + seed if scheme == "full" else returned
                rows.append(row("npo_klr", scheme, value, value, 85.0, "bf16", seed,
                                {"method": "npo_klr", "seed": seed, "epochs": ep, "alpha": 1.0}, ms, 1e-5))
    report_rows.label_rows(rows)
    report_rows.add_retention(rows)
    report_rows.add_recovery(rows)
    return rows


def test_labels_name_every_varying_axis_and_seeds_share_a_label():
    rows = world(20.0, epochs=(10, 20))
    labels = {r["label"] for r in rows if r["dtype"]}
    assert labels == {"NPO_KLR (bf16, lr 1e-05, epochs 10)", "NPO_KLR (bf16, lr 1e-05, epochs 20)"}
    single = world(20.0)  # epochs does not vary: not in the label
    assert {r["label"] for r in single if r["dtype"]} == {"NPO_KLR (bf16, lr 1e-05)"}


def test_seeds_are_averaged_with_their_spread():
    agg = report_rows.aggregate(world(20.0))
    full = next(a for a in agg if a["model"] == "npo_klr" and a["scheme"] == "full")
    assert full["n"] == 3 and full["seeds"] == [0, 1, 2]
    assert full["knowmem_f"] == pytest.approx(21.0)
    assert full["sd"]["knowmem_f"] == pytest.approx(1.0)  # 20, 21, 22
    assert full["retained_knowmem_f"] == pytest.approx(21.0 / 80)
    assert "21.0 ± 1.0" in report_tables.paper_table(agg, ["full", "rtn-int4-g128"])
    header = report_tables.retention_table(agg, ["full", "rtn-int4-g128"]).splitlines()[0]
    assert "rtn-int4-g128: VerbMem / KnowMem" in header  # columns name the scheme


def test_retention_uses_the_target_of_the_same_seed():
    rows = world(20.0)
    for r in rows:
        if r["model"] == "target" and r["seed"] == 1:
            r["knowmem_f"] = 40.0
    report_rows.add_retention(rows)
    seed1 = next(r for r in rows if r["model"] == "npo_klr" and r["seed"] == 1 and r["scheme"] == "full")
    assert seed1["retained_knowmem_f"] == pytest.approx(21.0 / 40)


@pytest.mark.parametrize("returned, verdict", [(70.0, "knowledge returns"), (22.0, "forgetting holds"),
                                               (40.0, "partly returns")])
def test_verdict_per_method_from_the_recovery(returned, verdict):
    agg = report_rows.aggregate(world(returned))
    (v,) = verdicts_of.method_verdicts(agg, ["full", "rtn-int4-g128"])
    assert v["verdict"] == verdict
    rec = v["recovery"]["rtn-int4-g128"]
    per_seed = [(returned - (20 + s)) / (80 - (20 + s)) for s in (0, 1, 2)]  # (u_q - u) / (t_q - u), averaged
    assert rec["knowmem_f"] == pytest.approx(sum(per_seed) / 3)
    assert rec["pooled"] == pytest.approx(rec["knowmem_f"])  # both metrics moved alike here
    assert v["recovery_sd"]["rtn-int4-g128"] > 0


def test_a_quantizer_that_costs_the_target_is_not_recovery():
    """int4 costs the target a quarter of its knowledge and leaves the unlearned model where it was: the
    retained share u/t rises (20/60 > 20/80) but nothing came back."""
    rows = world(20.0, seeds=(0,))
    for r in rows:
        if r["model"] == "target" and r["scheme"] == "rtn-int4-g128":
            r["knowmem_f"] = r["verbmem_f"] = 60.0
    report_rows.add_retention(rows)
    report_rows.add_recovery(rows)
    (v,) = verdicts_of.method_verdicts(report_rows.aggregate(rows), ["full", "rtn-int4-g128"])
    assert v["retained_under"]["rtn-int4-g128"] == pytest.approx(20 / 60)
    assert v["recovery"]["rtn-int4-g128"]["pooled"] == 0.0 and v["verdict"] == "forgetting holds"


def set_full(rows, value):
    for r in rows:
        if r["model"] == "npo_klr" and r["scheme"] == "full":
            r["knowmem_f"] = r["verbmem_f"] = value
    report_rows.add_retention(rows)
    report_rows.add_recovery(rows)
    return verdicts_of.method_verdicts(report_rows.aggregate(rows), ["full", "rtn-int4-g128"])


def test_shallow_forgetting_is_named_and_too_little_is_not_judged():
    (v,) = set_full(world(80.0), 70.0)  # 87.5% retained at full precision, all of it back after int4
    assert v["verdict"] == "knowledge returns" and v["verdict_text"] == "knowledge returns (shallow forgetting)"
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"])
    assert "PARTLY AGREES" in line
    (v,) = set_full(world(80.0), 79.0)
    assert v["verdict"] == "forgot too little to judge"
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"])
    assert "NOT COMPARABLE" in line


def test_tiny_models_name_the_shallow_form_and_why_instead_of_disagreeing():
    (v,) = set_full(world(80.0), 70.0)  # shallow: 87.5% retained, all of it back after int4
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"], tiny=True)
    assert "SHALLOW FORM" in line and "AGREES" not in line and "findings.md" in line
    (v,) = verdicts_of.method_verdicts(report_rows.aggregate(world(70.0)), ["full", "rtn-int4-g128"])
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"], tiny=True)  # deep even on tiny models: agrees
    assert "AGREES with the paper's failure" in line and "SHALLOW" not in line


def test_regime_line_agrees_when_deep_bf16_forgetting_returns():
    (v,) = verdicts_of.method_verdicts(report_rows.aggregate(world(70.0)), ["full", "rtn-int4-g128"])
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"])
    assert line.count("AGREES") == 1 and "DISAGREES" not in line and "PARTLY" not in line


def test_deep_forgetting_that_costs_the_utility_is_not_the_papers_failure():
    rows = world(70.0)
    for r in rows:
        if r["model"] == "npo_klr":
            r["knowmem_r"] = 60.0  # 67% of the target's 90: not utility-preserving
    report_rows.add_retention(rows)
    report_rows.add_recovery(rows)
    (v,) = verdicts_of.method_verdicts(report_rows.aggregate(rows), ["full", "rtn-int4-g128"])
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"])
    assert "PARTLY AGREES" in line and "mean utility kept 67%" in line


def test_fp32_regime_agrees_when_forgetting_holds():
    rows = world(22.0)
    for r in rows:
        if r["dtype"]:
            r["dtype"] = "fp32"
    (v,) = verdicts_of.method_verdicts(report_rows.aggregate(rows), ["full", "rtn-int4-g128"])
    (line,) = verdicts_of.regime_lines([v], ["rtn-int4-g128"])
    assert "AGREES with the paper's contrast" in line and "DISAGREES" not in line


def test_bins_prediction_sits_beside_the_measurement():
    agg = report_rows.aggregate(world(70.0))
    bins = {"NPO_KLR (bf16, lr 1e-05)": {"scheme": "rtn-int4-g128", "n": 3, "erased_mass_share": 0.9,
                                          "projected_survival": 0.05}}
    verdicts = verdicts_of.method_verdicts(agg, ["full", "rtn-int4-g128"], bins)
    table = report_tables.verdict_table(verdicts, ["full", "rtn-int4-g128"])
    assert "knowledge returns" in table
    # measured: (70 - 21) / (80 - 21) = 83% back (seeds averaged); forecast 95%: right within 25 points
    assert "rtn-int4-g128: 95% back by the update's size (5% of the update survives; 90% of its mass erased) | yes |" in table
    bins["NPO_KLR (bf16, lr 1e-05)"]["projected_survival"] = 0.7  # forecast 30% back: wrong
    table = report_tables.verdict_table(verdicts_of.method_verdicts(agg, ["full", "rtn-int4-g128"], bins), ["full", "rtn-int4-g128"])
    assert "rtn-int4-g128: 30% back" in table and table.rstrip().endswith("| no |")
    bins["NPO_KLR (bf16, lr 1e-05)"]["first_order_survival"] = 0.2  # by the gradient: 80% back
    table = report_tables.verdict_table(verdicts_of.method_verdicts(agg, ["full", "rtn-int4-g128"], bins), ["full", "rtn-int4-g128"])
    assert "rtn-int4-g128: 80% back by the forget loss's gradient; 30% back by the update's size" in table
    assert table.rstrip().endswith("| no |")  # shown beside it, but judged by the forecast from the weights


def test_recovery_of_almost_nothing_forgotten_is_not_printed():
    """97.5% retained: 2 points to return to, a question or two; the recovery is undefined and the tables
    print '-'."""
    (v,) = set_full(world(80.0), 78.0)
    assert v["recovery"]["rtn-int4-g128"]["knowmem_f"] is None
    table = report_tables.verdict_table([v], ["full", "rtn-int4-g128"])
    assert "| - / - (-) |" in table and "100%" not in table.split("|")[3]
    assert "rtn-int4-g128: " not in report_tables.robustness_table([v], ["full", "rtn-int4-g128"])


def test_environment_section_names_the_machine_and_a_mixed_resume(tmp_path):
    from unlearn_audit.experiment.report.tables import environment_lines
    from unlearn_audit.utils.environment import record_environment

    assert environment_lines(tmp_path) == []  # a folder from before environments were recorded
    record_environment(tmp_path, threads=2)
    lines = environment_lines(tmp_path)
    assert len(lines) == 2 and "threads" in lines[0] and "README" in lines[1]
    record_environment(tmp_path, threads=1)  # resumed with another thread count
    assert any("computed under 2 environments" in line for line in environment_lines(tmp_path))


def test_utility_constrained_methods_are_those_with_a_retain_term():
    """The paper's headline is over utility-constrained runs: a retain term (GDR, KLR, RMU's retain loss)
    or SURE; plain GA/NPO/SimNPO and unknown methods are not."""
    from unlearn_audit.experiment.report.verdicts import constrained

    assert [m for m in ("ga", "ga_gdr", "npo_klr", "rmu", "simnpo", "simnpo_gdr", "sure", "qat", "bogus")
            if constrained(m)] == ["ga_gdr", "npo_klr", "rmu", "simnpo_gdr", "sure"]


def test_gguf_columns_say_what_llama_cpp_applied_read_from_the_target():
    from types import SimpleNamespace

    def cell(model, scheme, applied, status="done"):
        result = {"model": model, "scheme": scheme,
                  **({"quantization": {"applied": applied}} if applied else {})}
        return SimpleNamespace(status=status, result=result)

    class Cells:
        def cells(self, kind):
            assert kind == "eval"
            return [cell("ga_gdr", "gguf-q4_k_m", "gguf-q4_k_m (applied: q5_0 x9)"),
                    cell("target", "gguf-q4_k_m", "gguf-q4_k_m (applied: q5_0 x8, q8_0 x4)"),
                    cell("target", "rtn-int4-g128", None),
                    cell("target", "gguf-q8_0", "gguf-q8_0 (applied: q8_0 x12)", status="failed")]

    assert report_tables.applied_lines(Cells()) == ["Q4_K_M = gguf-q4_k_m (applied: q5_0 x8, q8_0 x4)"]
