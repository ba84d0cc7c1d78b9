"""`--joint-pass`: a regularized method's forget and retain batches in one forward pass per network give
the loss and gradients of the two separate passes (to float rounding), with half the passes."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn_audit.unlearn.methods import Batch, resolve_method
from unlearn_audit.unlearn.trainer import UnlearnConfig


def counted(model):
    """The model, with a count of its forward passes."""
    model.calls = 0
    hook = model.register_forward_pre_hook(lambda *_: setattr(model, "calls", model.calls + 1))
    return model, hook


def paired_inputs(vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for split, (rows, length, real) in {"forget": (2, 9, [9, 6]), "retain": (3, 13, [13, 4, 10])}.items():
        ids = torch.randint(3, vocab, (rows, length), generator=gen)
        mask = (torch.arange(length) < torch.tensor(real).unsqueeze(1)).long()
        inputs.update({f"{split}_input_ids": ids * mask, f"{split}_attention_mask": mask,
                       f"{split}_labels": ids.masked_fill(mask == 0, -100)})
    return inputs


@pytest.mark.parametrize("name", ["ga_gdr", "npo_klr", "npo_gdr", "simnpo_klr"])
def test_one_joint_pass_gives_the_separate_passes_loss_and_gradients(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    ref, _ = counted(copy.deepcopy(model).eval())  # copied before the count's hook, which it would share
    model, _ = counted(model)
    method, cfg, inputs = resolve_method(name), UnlearnConfig(method=name), paired_inputs(300)
    results = {}
    for joint in (False, True):
        model.zero_grad()
        model.calls = ref.calls = 0
        batch = Batch(model, ref, inputs, joint=joint)
        loss = method.forget.fn(batch, cfg) + method.regularizer.fn(batch, cfg)
        loss.backward()
        results[joint] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, model.calls, ref.calls)
    (separate, grads, calls, ref_calls), (joint, joint_grads, joint_calls, joint_ref_calls) = results[False], results[True]
    assert joint == pytest.approx(separate, rel=1e-5)
    for n, g in grads.items():
        torch.testing.assert_close(joint_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)
    assert (calls, joint_calls) == (2, 1)
    assert joint_ref_calls == (1 if method.needs_ref else 0) and ref_calls == (2 if name == "npo_klr" else int(method.needs_ref))


def test_a_method_without_retain_batches_runs_its_one_pass_as_before():
    batch = Batch(None, None, {"forget_input_ids": torch.zeros(1, 2)}, joint=True)
    assert batch.joint is False
