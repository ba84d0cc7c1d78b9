"""The methods meant to survive recovery attacks: quantization-aware unlearning (STE), the margin term,
RMU and SimNPO, each checked for the property that defines it and for forgetting on a tiny model."""

import json
import re
from dataclasses import replace

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize import parse_scheme
from unlearn_audit.unlearn import UnlearnConfig, unlearn
from unlearn_audit.unlearn.margin import margin_loss
from unlearn_audit.unlearn.qat import FakeQuantized, dequantized
from unlearn_audit.unlearn.rmu import control_vector, rmu_layer

BASE = UnlearnConfig(method="ga", epochs=2, batch_size=4, learning_rate=1e-3, dtype="fp32")


def forget_nll(model_dir, texts) -> float:
    model, tok = load_model(model_dir, "fp32"), load_tokenizer(model_dir)
    with torch.no_grad():
        return sum(model(ids := torch.tensor([tok(t).input_ids]), labels=ids).loss.item() for t in texts) / len(texts)


@pytest.fixture(scope="module")
def corpus(micro_world):
    return Corpus(micro_world)


@pytest.mark.parametrize("scheme", ["rtn-int4-g128", "bnb-nf4"])
def test_straight_through_gradients_reach_the_full_precision_weights(micro_target, corpus, scheme):
    """The value is Q(w), the gradient w.r.t. w equals the gradient w.r.t. Q(w) (straight through)."""
    s = parse_scheme(scheme)
    tok = load_tokenizer(micro_target)
    ids = torch.tensor([tok(corpus.raw("forget")[0]).input_ids])
    model = load_model(micro_target, "fp32")
    FakeQuantized(model, s)(input_ids=ids, labels=ids).loss.backward()
    quantized = load_model(micro_target, "fp32")  # the weights replaced by Q(w) for real
    with torch.no_grad():
        for mod in quantized.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not quantized.get_output_embeddings():
                mod.weight.copy_(dequantized(mod.weight, s))
    quantized(input_ids=ids, labels=ids).loss.backward()
    q_params = dict(quantized.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, q_params[name].grad, rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked > 0


def test_margin_term_is_zero_when_the_margin_holds_and_pushes_when_not():
    labels = torch.tensor([[1, 2, 3]])
    ref = torch.zeros(1, 3, 5)
    far = ref.clone()
    far[..., 2:4] = -10.0  # the true next tokens (2, 3) are ~10 nats less likely than under the target
    assert margin_loss(far, ref, labels, margin=2.0).item() == 0.0
    near = ref.clone().requires_grad_(True)
    loss = margin_loss(near, ref, labels, margin=2.0)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert near.grad[0, 0, 2] > 0  # descending it lowers the true token's logit


def test_rmu_steers_the_chosen_block_and_trains_only_its_matrices(micro_target, corpus, tmp_path):
    cfg = replace(BASE, method="rmu", learning_rate=1e-3, rmu_steering=5.0, rmu_alpha=10.0, epochs=3)
    out = unlearn(micro_target, corpus, cfg, tmp_path / "rmu", show=False)
    tok = load_tokenizer(micro_target)
    ids = torch.tensor([tok(corpus.raw("forget")[0]).input_ids])

    def distance(folder):
        model = load_model(folder, "fp32")
        layer = rmu_layer(model.config, cfg)
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
        return (h - control_vector(h.shape[-1], cfg.seed, cfg.rmu_steering)).pow(2).mean().item()

    assert distance(out) < 0.8 * distance(micro_target)  # the forget activations moved towards c*u
    before, after = load_model(micro_target, "fp32").state_dict(), load_model(out, "fp32").state_dict()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.endswith("mlp.down_proj.weight") for n in moved), moved


@pytest.mark.parametrize("settings", [
    dict(method="simnpo"),
    dict(method="simnpo_gdr"),
    dict(method="qat", base="ga", through="rtn-int4-g128,bnb-nf4"),
    dict(method="npo", margin_weight=1.0),
    dict(method="rmu", rmu_steering=5.0, rmu_alpha=10.0, learning_rate=5e-3),
], ids=lambda d: "-".join(f"{v}" for v in d.values()))
def test_each_method_lowers_forget_likelihood(micro_target, corpus, tmp_path, settings):
    out = unlearn(micro_target, corpus, replace(BASE, **settings), tmp_path / "m", show=False)
    texts = corpus.raw("forget")
    assert forget_nll(out, texts) > forget_nll(micro_target, texts) + 0.2
    info = json.loads((out / "unlearn.json").read_text())
    if "through" in settings:
        assert info["resolved"]["through"] == ["rtn-int4-g128", "bnb-nf4"] and info["method"] == "qat(ga)"
    if settings.get("margin_weight"):
        assert info["resolved"]["margin"] > 0  # derived from the int4 step, not given


@pytest.mark.parametrize("settings, message", [
    (dict(method="qat", through="gptq-int4-g128"), "only rtn-* and bnb-fp4/bnb-nf4"),
    (dict(through_mix=1.5), "--through-mix"),
    (dict(margin_weight=-1.0), "--margin-weight"),
    (dict(method="rmu", rmu_layer=9), "--rmu-layer 9 is outside"),
])
def test_bad_settings_are_user_errors(micro_target, corpus, tmp_path, settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        unlearn(micro_target, corpus, replace(BASE, **settings), tmp_path / "bad", show=False)
