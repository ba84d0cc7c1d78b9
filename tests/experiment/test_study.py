"""The study over targets (`demo --targets N`): its targets, the verdict rule over them (findings section 14),
and a run end to end on the micro world with the micro target standing in for the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unlearn_audit.errors import UserError
from unlearn_audit.experiment.ledger import Ledger, located
from unlearn_audit.experiment.report.verdicts import failure_form, verdict_over_targets
from unlearn_audit.experiment.study import study_grids, summarise, target_name, target_options
from unlearn_audit.scoring import Verdict


def run(label="GA_GDR (bf16, lr 6e-05)", retained=0.5, utility=0.9, verdict=Verdict.RETURNS, method="ga_gdr",
        dtype="bf16"):
    return {"label": label, "method": method, "dtype": dtype, "verdict": verdict,
            "retained": {"mean": retained}, "utility_kept": utility}


def test_the_study_takes_its_listed_targets_in_order_then_further_seeds():
    listed = [{"seed": 0}, {"seed": 1}, {"seed": 2}, {"seed": 0, "fused_adamw": False}]
    assert target_options(listed, 2) == listed[:2]
    assert target_options(listed, 6) == [*listed, {"seed": 3}, {"seed": 4}]
    assert [target_name(t) for t in target_options(listed, 5)] == ["seed0", "seed1", "seed2",
                                                                   "seed0-per-tensor-adamw", "seed3"]
    assert target_name({"seed": 5, "epochs": 3}) == "seed5-epochs=3"
    with pytest.raises(UserError, match="at least 1"):
        target_options(listed, 0)


def test_the_packaged_study_gives_each_target_its_own_fine_tuning_and_the_same_rule():
    grids = study_grids(4)
    assert [name for name, _ in grids] == ["seed0", "seed1", "seed2", "seed0-per-tensor-adamw"]
    assert [(g.finetune["seed"], g.finetune["fused_adamw"]) for _, g in grids] == [(0, True), (1, True), (2, True),
                                                                                   (0, False)]
    assert all(g.runs == grids[0][1].runs for _, g in grids)  # the unlearning runs do not change with the target
    assert all(r["stop_at_depth"] == 0.5 and r["min_utility_kept"] == 0.8 and r["epochs"] == 10 for r in grids[0][1].runs)
    assert grids[0][1].world["validation_share"] > 0


def test_a_study_file_without_a_base_or_with_bad_targets_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "targets": [{"seed": 0}]}))
    with pytest.raises(UserError, match="give `base`"):
        study_grids(1, path)
    path.write_text(yaml.safe_dump({"name": "s", "base": "x", "targets": [1, 2]}))
    with pytest.raises(UserError, match="list of fine-tuning options"):
        study_grids(1, path)


def test_a_target_fails_deeply_when_at_least_half_of_its_runs_do():
    deep, shallow = run(retained=0.5), run(retained=0.7)
    held = run(verdict=Verdict.HOLDS)
    assert failure_form([deep, shallow]) == "deep"  # 1 of 2: half
    assert failure_form([deep, shallow, shallow]) == "shallow"  # 1 of 3
    assert failure_form([run(retained=0.5, utility=0.7), held]) == "shallow"  # deep only at a utility cost
    assert failure_form([held, run(verdict=Verdict.PARTLY)]) == "none"
    assert failure_form([]) == "none"


@pytest.mark.parametrize("forms, verdict", [
    (["deep", "deep", "shallow"], "AGREES"),  # 2 of 3 deep
    (["deep", "shallow", "shallow"], "PARTLY AGREES"),  # 3 of 3 back, 1 deep
    (["deep", "shallow", "none"], "PARTLY AGREES"),  # 2 of 3 back
    (["deep", "none", "none"], "DISAGREES"),
    (["deep", "deep", "deep", "none"], "AGREES"),  # 3 of 4 >= 2/3
    (["deep", "deep", "shallow", "none"], "PARTLY AGREES"),
    (["deep", "deep", "none", "none"], "DISAGREES"),  # 2 of 4 < 2/3
])
def test_the_verdict_over_targets_needs_two_thirds(forms, verdict):
    assert verdict_over_targets(forms) == verdict


def test_the_verdict_over_no_target_is_an_error():
    with pytest.raises(UserError, match="at least one target"):
        verdict_over_targets([])


def test_the_summary_averages_each_target_first_then_spreads_over_targets():
    def target(form, runs):
        return {"form": form, "runs": [{"retained": r, "recovery": c, "utility_kept": u, "forecast_within": w}
                                       for r, c, u, w in runs]}

    rows = [target("deep", [(0.4, 0.8, 0.9, True), (0.6, 0.6, 0.9, False)]),  # means 0.5, 0.7, 0.9
            target("shallow", [(0.7, 0.6, 1.0, None)]),
            {"form": "none", "runs": []}]  # no evaluated run: not judged
    s = summarise(rows)
    assert (s["n"], s["deep"], s["back"], s["verdict"]) == (2, 1, 2, "PARTLY AGREES")
    assert s["retained"]["mean"] == pytest.approx(0.6) and s["retained"]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert s["recovery"]["mean"] == pytest.approx(0.65) and s["utility_kept"]["mean"] == pytest.approx(0.95)
    assert s["forecasts"] == {"within": 1, "rows": 2}


def test_demo_targets_runs_each_target_in_its_folder_and_judges_over_them(run_cli, micro_world, micro_target,
                                                                           tmp_path, monkeypatch):
    study = {"name": "s", "corpus": str(micro_world), "base": str(micro_target),
             "finetune": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 64},
             "runs": [{"method": "ga_gdr", "dtype": "bf16", "learning_rate": 1e-3, "seeds": [0], "epochs": 1}],
             "schemes": ["full", "rtn-int4-g128"], "bins_schemes": ["rtn-int4-g128"],
             "unlearn": {"batch_size": 4}, "eval_limit": 6, "targets": [{"seed": 0}, {"seed": 1}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.setenv("UNLEARN_AUDIT_STUDY_CONFIG", str(tmp_path / "s.yaml"))
    code, out, _ = run_cli("demo", "--targets", "2", "--out", tmp_path / "study", "--quiet")
    assert code == 0, out
    result = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [t["target"] for t in result["targets"]] == ["seed0", "seed1"]
    for seed, name in enumerate(("seed0", "seed1")):
        ledger = Ledger(tmp_path / "study" / name / "ledger.sqlite")
        infos = [json.loads((Path(located(tmp_path / "study" / name, c.result)["path"]) / "finetune.json").read_text())
                 for c in ledger.cells() if c.kind == "model"]
        ledger.close()
        assert sorted((i["role"], i["config"]["seed"]) for i in infos) == [("retrained", seed), ("target", seed)]
    assert result["summary"]["n"] == 2 and result["summary"]["verdict"] in ("AGREES", "PARTLY AGREES", "DISAGREES")
    assert result["summary"]["verdict"] == verdict_over_targets([t["form"] for t in result["targets"]])
    report = (tmp_path / "study" / "study.md").read_text()
    assert "| seed1 |" in report and "over 2 targets" in report and (tmp_path / "study" / "study.png").is_file()
    assert result["summary"]["verdict"] in out
    # resumed: nothing is trained again and the study is the same
    code, out, _ = run_cli("demo", "--targets", "2", "--out", tmp_path / "study", "--quiet")
    assert code == 0 and json.loads((tmp_path / "study" / "study.json").read_text()) == result


def test_demo_targets_refuses_bad_input_before_any_work(run_cli, tmp_path):
    for argv, message in ((["--targets", "0"], "at least 1"), (["--targets", "2", "--quick"], "does not combine")):
        code, out, err = run_cli("demo", *argv, "--out", tmp_path / "x")
        assert code == 2 and message in err and not (tmp_path / "x").exists()
