"""Emulated pure bf16 (bf16 weights, gradients and AdamW state; fp32 forward/backward) against native
pure bf16: the same rounding of the update, so the same weights move and quantization erases the same
share of the update. This is what lets the demo run the paper's regime at fp32 speed on CPUs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.quantize.bins import analyse
from unlearn_audit.training.bf16 import Bf16StateAdamW
from unlearn_audit.unlearn import UnlearnConfig, unlearn

LR = 3e-5


def flat_update(target, unlearned) -> torch.Tensor:
    t, u = load_file(str(target / "model.safetensors")), load_file(str(unlearned / "model.safetensors"))
    return torch.cat([(u[k].float() - t[k].float()).flatten() for k in sorted(t)])


@pytest.fixture(scope="module")
def pair(micro_target, micro_world, tmp_path_factory):
    corpus = Corpus(micro_world)
    out = tmp_path_factory.mktemp("bf16")
    runs = {}
    for arithmetic in ("native", "emulated"):
        cfg = UnlearnConfig(method="ga_gdr", dtype="bf16", arithmetic=arithmetic, learning_rate=LR, epochs=3,
                            batch_size=4)
        runs[arithmetic] = unlearn(micro_target, corpus, cfg, out / arithmetic, show=False)
    return runs


def test_emulated_bf16_moves_the_same_weights_in_the_same_direction(micro_target, pair):
    native, emulated = flat_update(micro_target, pair["native"]), flat_update(micro_target, pair["emulated"])
    changed_n, changed_e = native != 0, emulated != 0
    assert changed_n.float().mean() > 0.01  # the update is not trivially empty
    agree = (changed_n == changed_e).float().mean().item()
    assert agree > 0.99, agree  # the same weights move (the bf16 cap decides which)
    cos = torch.nn.functional.cosine_similarity(native, emulated, dim=0).item()
    assert cos > 0.98, cos
    assert abs(native.norm() / emulated.norm() - 1) < 0.02


def test_emulated_bf16_is_erased_by_int4_like_native(micro_target, pair):
    erased = {a: analyse(micro_target, p, "rtn-int4-g128", LR)["erased_mass_share"] for a, p in pair.items()}
    assert abs(erased["native"] - erased["emulated"]) < 0.02, erased


def test_the_arithmetic_is_recorded_and_the_weights_are_saved_in_bf16(pair):
    for arithmetic, path in pair.items():
        info = json.loads((path / "unlearn.json").read_text())
        assert info["precision"]["arithmetic"] == arithmetic
        assert arithmetic in info["precision"]["description"]
        assert set(info["precision"]["parameter_dtypes"]) == {"bfloat16"}


@pytest.mark.parametrize("fused", [False, True])
def test_bf16_state_adamw_steps_exactly_like_adamw_on_bf16_tensors(fused):
    """The emulated optimizer is the native path's (AdamW on bf16 tensors, loop or fused) bit for bit."""
    torch.manual_seed(0)
    w = torch.randn(64, 64).to(torch.bfloat16)
    native = torch.nn.Parameter(w.clone())
    emulated = torch.nn.Parameter(w.float())
    opt_n = torch.optim.AdamW([native], lr=1e-3, weight_decay=0.1, fused=fused)  # as HF adamw_torch(_fused)
    opt_e = Bf16StateAdamW([emulated], lr=1e-3, weight_decay=0.1, fused=fused)
    for _ in range(5):
        g = torch.randn(64, 64)
        native.grad, emulated.grad = g.to(torch.bfloat16), g.clone()
        opt_n.step()
        opt_e.step()
    assert torch.equal(native.detach().float(), emulated.detach())  # bit-identical given the same gradients
    state = opt_e.state_dict()
    opt_e.load_state_dict(state)  # resume round-trip
    assert opt_e.inner.state_dict()["state"][0]["exp_avg"].dtype == torch.bfloat16
