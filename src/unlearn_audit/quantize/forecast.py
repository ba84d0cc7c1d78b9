"""A first-order forecast of the recovery: how much of the forgetting's effect on the forget texts' loss
survives quantization, weighted by that loss's gradient instead of by the size of each weight's update.

`bins` forecasts from the weights alone, 1 - <Q(u) - Q(t), u - t> / |u - t|^2: every unit of the update
counts the same. On SmolLM2 the forgetting that survives int4 sits in the 0.07% of weights whose int4 code
changed, which that weighting cannot see (docs/reproducibility.md). Weighting by the forget loss L's
gradient g (its first-order Taylor term) asks instead how much of the *loss change* survives:

    L(u) - L(t)       ~ <g, u - t>            (the forgetting, full precision)
    L(Q(u)) - L(Q(t)) ~ <g, Q(u) - Q(t)>      (what is left of it after quantization)
    survival = <g, Q(u) - Q(t)> / <g, u - t>,   forecast = 1 - survival

with g the mean of the gradients at t and at u (the trapezoid rule along the update, exact for a quadratic
loss). Q is the same torch twin `bins` uses (RTN, bitsandbytes' FP4/NF4 codebooks, casts, gguf file types,
FP8 / MXFP4 / NVFP4), resolved per tensor as `bins` resolves it, applied to the tensors the quantizer
quantizes; the other tensors keep their update (Q = identity). It needs one
forward and backward pass of the forget texts through each model, and both models with their gradients in
memory (4 x 4 bytes a parameter in fp32).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .bins import BinsOptions, TensorSchemes, comparison_dtype, gguf_types, open_weights, quantized_by
from .schemes import fake_quantize, parse_scheme


def forget_gradient(model, tokenizer, texts: list[str], batch_size: int = 4) -> dict[str, torch.Tensor]:
    """The gradient of the mean per-text NLL of `texts` (padding masked) with respect to every parameter."""
    if tokenizer.pad_token_id is None:
        raise UserError("the tokenizer has neither a pad nor an EOS token to pad the forget texts with")
    from ..models.generation import gather_logprobs

    model.zero_grad(set_to_none=True)
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True)
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        lp, real = gather_logprobs(logits[:, :-1], enc.input_ids[:, 1:]), enc.attention_mask[:, 1:].bool()
        per_text = -(lp * real).sum(1) / real.sum(1).clamp(min=1)  # each text's own mean, whatever its length
        (per_text.sum() / len(texts)).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def first_order_forecast(target: str | Path, unlearned: str | Path, scheme: str, texts: list[str],
                         batch_size: int = 4, opts: BinsOptions | None = None) -> dict:
    """The gradient-weighted survival of the forgetting under `scheme` (module docstring), and its parts."""
    from ..models.loading import load_model, load_tokenizer

    opts = opts or BinsOptions()
    s = parse_scheme(scheme)
    if not s.analysable:
        raise UserError(f"the forecast cannot reproduce {s.name}: it depends on calibration data")
    if not texts:
        raise UserError("the first-order forecast needs forget texts; the corpus has none")
    stored_t, stored_u = open_weights(target), open_weights(unlearned)
    tok = load_tokenizer(target)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    models = {"t": load_model(target, "fp32"), "u": load_model(unlearned, "fp32")}
    grads = {k: forget_gradient(m, tok, texts, batch_size) for k, m in models.items()}
    weights_t = dict(models["t"].named_parameters())
    resolve = TensorSchemes(s, stored_t, stored_u, opts)
    types = gguf_types(s, stored_t) if s.family == "gguf" else {}
    # per gradient (at t, at u, their mean): [<g, Q(u) - Q(t)>, <g, u - t>]; and <g_mid, u - t> where Q keeps u
    sums = {"at_t": [0.0, 0.0], "at_u": [0.0, 0.0], "mid": [0.0, 0.0]}
    kept = 0.0
    with torch.no_grad():
        for name, wu in models["u"].named_parameters():
            if name not in grads["t"] or name not in grads["u"]:
                continue
            wt = weights_t[name].float()
            rounding = rounding_of(stored_t, stored_u, name)
            if rounding is not None:  # an fp32 target against a bf16 unlearned model: storage is not the update
                wt = wt.to(rounding).float()
            d = wu.float() - wt
            if s.family == "gguf":
                rounded = types.get(name, "f32") != "f32"
            else:
                rounded = s.family == "cast" or quantized_by(name, d.shape, opts)  # a cast rounds every tensor
            q = fake_quantize(wu, resolve.unlearned(name)) - fake_quantize(wt, resolve.target(name, rounding)) \
                if rounded else d
            g_mid = (grads["t"][name] + grads["u"][name]) / 2
            for key, g in (("at_t", grads["t"][name]), ("at_u", grads["u"][name]), ("mid", g_mid)):
                sums[key][0] += float((g * q).sum(dtype=torch.float64))
                sums[key][1] += float((g * d).sum(dtype=torch.float64))
            if not rounded:
                kept += float((g_mid * d).sum(dtype=torch.float64))
    den = sums["mid"][1]
    if den == 0:
        return {"scheme": s.name, "first_order_survival": None, "texts": len(texts),
                "note": "the update does not change the forget loss to first order"}
    return {
        "scheme": s.name,
        "first_order_survival": sums["mid"][0] / den,
        "survival_gradient_at_target": sums["at_t"][0] / sums["at_t"][1] if sums["at_t"][1] else None,
        "survival_gradient_at_unlearned": sums["at_u"][0] / sums["at_u"][1] if sums["at_u"][1] else None,
        "kept_tensors_share": kept / den,
        "forget_loss_change_first_order": den,
        "texts": len(texts),
    }


def rounding_of(stored_t, stored_u, name: str) -> torch.dtype | None:
    """The storage rounding `bins` applies to the target before comparing (None: names it does not hold)."""
    if name in stored_t.where and name in stored_u.where:
        return comparison_dtype(stored_t.dtype(name), stored_u.dtype(name))
    return None
