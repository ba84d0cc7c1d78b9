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


def tiny_causal_lm(family: str):
    """A random two-layer model of the family (Gemma 3 with a final logit soft-cap, to exercise it)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gemma3":
        config = Gemma3TextConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  final_logit_softcapping=2.0)
        model = Gemma3ForCausalLM(config)
        model.lm_head.weight.data.mul_(30)  # logits large enough for the cap to bend them
        return model
    return LlamaForCausalLM(LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_loss_equals_the_full_logits_loss_and_gradients(family, chunk):
    import torch

    from unlearn_audit.training.nll import IGNORE, chunked_mean_nll, mean_nll

    model = tiny_causal_lm(family)
    ids = torch.randint(3, 500, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, IGNORE)
    full = mean_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    chunked = chunked_mean_nll(model, ids, mask, labels, chunk)
    chunked.backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6, msg=n)
    if family == "gemma3":  # the soft-cap is applied: without it the loss differs
        model.config.final_logit_softcapping = None
        assert chunked_mean_nll(model, ids, mask, labels, chunk).item() != pytest.approx(full.item(), rel=1e-3)


def test_finetune_with_a_chunked_loss_learns_like_the_full_one(run_cli, micro_retrained, micro_world, tmp_path):
    code, out, _ = run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--epochs", "1",
                           "--loss-chunk", "16", "--out", tmp_path / "chunked", "--quiet")
    assert code == 0, out
    run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--epochs", "1", "--out", tmp_path / "full",
            "--quiet")
    forget = Corpus(micro_world).raw("forget")
    assert nll(tmp_path / "chunked", forget) == pytest.approx(nll(tmp_path / "full", forget), rel=1e-3)
    code, _, err = run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--loss-chunk", "-1",
                           "--out", tmp_path / "bad")
    assert code == 2 and "--loss-chunk must be 0" in err and not (tmp_path / "bad").exists()


def test_chunked_loss_refuses_an_output_head_with_a_bias():
    import torch

    from unlearn_audit.errors import UserError
    from unlearn_audit.training.nll import chunked_mean_nll

    model = tiny_causal_lm("llama")
    model.lm_head = torch.nn.Linear(64, 500, bias=True)
    ids = torch.randint(3, 500, (1, 5))
    with pytest.raises(UserError, match="without a bias"):
        chunked_mean_nll(model, ids, torch.ones_like(ids), ids, 4)
