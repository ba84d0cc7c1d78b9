"""`finetune` makes a target (forget + retain) and a retrained model (retain only) from any causal LM."""

import json

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.finetune import FinetuneConfig, finetune, training_texts


def nll(folder, texts) -> float:
    import torch

    model, tok = load_model(folder, "fp32"), load_tokenizer(folder)
    with torch.no_grad():
        return sum(model(ids := torch.tensor([tok(t).input_ids]), labels=ids).loss.item() for t in texts) / len(texts)


def test_target_role_learns_the_forget_set_and_retrained_never_sees_it(micro_retrained, micro_world, tmp_path):
    corpus = Corpus(micro_world)
    forget = corpus.raw("forget")
    assert set(forget) <= set(training_texts(corpus, "target"))
    assert not set(forget) & set(training_texts(corpus, "retrained"))
    cfg = FinetuneConfig(role="target", epochs=2, learning_rate=1e-3)
    out = finetune(micro_retrained, corpus, cfg, tmp_path / "target", show=False)  # a base that never saw D_f
    assert nll(out, forget) < nll(micro_retrained, forget) - 0.3
    info = json.loads((out / "finetune.json").read_text())
    assert info["role"] == "target" and info["texts"] == len(forget) + len(corpus.raw("retain"))


def test_finetune_cli_and_bad_role(run_cli, micro_retrained, micro_world, tmp_path):
    code, out, _ = run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--role", "retrained",
                           "--epochs", "1", "--out", tmp_path / "r", "--quiet")
    assert code == 0 and "retrained model written" in out
    assert json.loads((tmp_path / "r" / "finetune.json").read_text())["role"] == "retrained"
    with pytest.raises(SystemExit) as exit_:  # argparse refuses a role outside its choices
        run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--role", "both", "--out", tmp_path / "x")
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()
