"""`cast:`: every weight rounded to the format, and the bins forecast of what a cast erases."""

import pytest
import torch

from unlearn_audit.attacks import parse_attack
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_cast_rounds_every_weight_to_the_format(ga_model, linear_weights):
    model = load_model(ga_model, "fp32")  # unlearned in fp32 (the tiny target itself is stored in bf16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = parse_attack("cast:bf16")
    a.impl.transform(model, a)
    changed = 0
    for n, p in model.named_parameters():
        assert torch.equal(p, p.to(torch.bfloat16).float())  # representable in bf16
        assert torch.equal(p, before[n].to(torch.bfloat16).float())  # round-to-nearest of the original
        changed += int(not torch.equal(p, before[n]))
    assert changed > 0  # fp32 unlearning moved weights off the bf16 grid


def test_bins_forecasts_what_a_bf16_cast_erases(micro_target, tmp_path, linear_weights):
    """An fp32 update smaller than half a bf16 step is rounded away by the cast (forecast: 100% back);
    one of several steps survives it (forecast: about nothing back)."""
    from unlearn_audit.quantize.bins import analyse

    forecasts = {}
    for size, name in ((0.25, "below"), (8.0, "above")):
        model, tok = load_model(micro_target, "fp32"), load_tokenizer(micro_target)
        with torch.no_grad():
            for w in linear_weights(model):
                p = model.get_submodule(w).weight
                ulp = torch.exp2(torch.floor(torch.log2(p.abs().clamp(min=1e-30))) - 7)
                p.add_(size * ulp * torch.sign(torch.randn_like(p)))
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        r = analyse(micro_target, tmp_path / name, "cast-bf16")
        forecasts[name] = 1 - r["projected_survival"]
    assert forecasts["below"] == pytest.approx(1.0) and forecasts["above"] < 0.1
