"""End-to-end evaluation: on a world model, on the real MUSE files, resumable, via the CLI."""

import json

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.muse import default_auc_retrain
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_eval_cli_on_world_model(run_cli, micro_target, micro_retrained, micro_world, tmp_path):
    out = tmp_path / "eval"
    code, stdout, _ = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--retrained",
                              micro_retrained, "--out", out, "--quiet")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("verbmem_f", "knowmem_f", "knowmem_r"):
        assert isinstance(metrics[key], float)
        assert f"| {key} | {metrics[key]:.2f} |" in stdout  # the printed table is metrics.json's
    assert metrics["verbmem_f"] > 50 and metrics["knowmem_f"] > 50  # the target remembers
    assert metrics["details"]["privleak"]["auc_retrain_source"] == "measured on the retrained model"
    # the target is far more familiar with forget texts than with holdout texts
    assert metrics["details"]["privleak"]["auc"] < 0.2
    for metric in ("verbmem_f", "knowmem_f", "knowmem_r"):
        log = json.loads((out / metric / "log.json").read_text())
        assert {"prompt", "gt", "response", "rougeL"} <= set(log[0])
        assert "mean_rougeL" in json.loads((out / metric / "agg.json").read_text())
    auc = json.loads((out / "privleak" / "auc.json").read_text())
    assert len(auc) == 90 and auc["forget_holdout_Min-40%"] == metrics["details"]["privleak"]["auc"]


def test_real_muse_news_formats_flow_through(micro_target, shared_dir, tmp_path):
    corpus = Corpus(shared_dir / "muse" / "news")
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    cfg = EvalConfig(limit=3)
    res = evaluate_model(model, tok, corpus, cfg, out_dir=tmp_path, show=False)
    assert set(res["metrics"]) == {"verbmem_f", "knowmem_f", "knowmem_r", "privleak"}
    assert "NEWS" in res["details"]["privleak"]["auc_retrain_source"]  # MUSE's published constant
    assert res["details"]["privleak"]["auc_retrain"] == 0.4772
    assert res["details"]["verbmem_f"]["truncated"] >= 1  # real prompts exceed the tiny context
    assert len(json.loads((tmp_path / "knowmem_f" / "log.json").read_text())) == 3


def test_finished_metrics_are_not_recomputed(micro_target, micro_world, tmp_path, monkeypatch):
    corpus = Corpus(micro_world)
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    cfg = EvalConfig(metrics=["knowmem_f", "knowmem_r"], limit=4)
    first = evaluate_model(model, tok, corpus, cfg, out_dir=tmp_path, identity={"m": 1}, show=False)
    import unlearn_audit.evaluate.muse as muse

    def boom(*a, **k):
        raise AssertionError("recomputed a finished metric")

    monkeypatch.setattr(muse, "run_metric", boom)
    again = evaluate_model(model, tok, corpus, cfg, out_dir=tmp_path, identity={"m": 1}, show=False)
    assert again["metrics"] == first["metrics"]
    with pytest.raises(AssertionError):  # another model identity does recompute
        evaluate_model(model, tok, corpus, cfg, out_dir=tmp_path, identity={"m": 2}, show=False)


def test_default_auc_retrain_without_retrained_model(micro_world):
    assert default_auc_retrain(Corpus(micro_world)).value == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "verbmem_f,bogus"], "unknown metric"),
    (["--limit", "0"], "--limit must be at least 1"),
])
def test_eval_bad_flags_exit_2(run_cli, micro_target, micro_world, tmp_path, argv, message):
    code, _, err = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--out", tmp_path, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_eval_model_without_weights_exit_2(run_cli, micro_world, micro_target, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((micro_target / "config.json").read_text())
    code, _, err = run_cli("eval", "--model", bad, "--corpus", micro_world, "--out", tmp_path / "o")
    assert code == 2 and "holds no weights" in err
    assert not (tmp_path / "o" / "metrics.json").exists()
