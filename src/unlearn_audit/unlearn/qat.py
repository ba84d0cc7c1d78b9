"""Quantization-aware unlearning: the loss is also evaluated on the model as a quantizer will deploy it.

With `--through rtn-int4-g128,bnb-nf4` (or `--method qat --base M`, default through rtn-int4-g128) each
step computes the method's loss L(w) and, for every scheme s, L(Q_s(w)) on the fake-quantized model,
the weights the quantizers touch (every nn.Linear but lm_head) replaced by

    w_s = w + stopgrad(Q_s(w) - w)                     (straight-through estimator)

so the value is the deployed Q_s(w) and the gradient reaches the full-precision w unchanged (Bengio et
al. 2013; as quantization-aware training does). The step minimises

    mix * L(w) + (1 - mix) * mean_s L(Q_s(w)),         mix = --through-mix (default 0.5)

so the deployed low-bit model itself forgets, and the full-precision one too. Q_s is the quantizer of
`quantize/` (our RTN; the bitsandbytes FP4/NF4 codebooks in blocks of 64), so only schemes the weights
alone determine can be trained through; GPTQ/AWQ depend on calibration and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..quantize import parse_scheme
from ..quantize.backends import QuantizeOptions, target_linears
from ..quantize.codebook import codebook_quantize
from ..quantize.rtn import fake_quantize
from ..quantize.schemes import Scheme
from .methods import WRAPPERS

DEFAULT_THROUGH = WRAPPERS["qat"].through  # what --method qat trains through unless --through says


@dataclass
class ThroughOptions:
    through: str | None = field(default=None, metadata={
        "help": "quantization-aware unlearning: also evaluate the loss on the model fake-quantized with these "
                "schemes (comma-separated rtn-*/bnb-fp4/bnb-nf4; straight-through gradients); --method qat "
                "defaults it to rtn-int4-g128"})
    through_mix: float = field(default=0.5, metadata={
        "help": "weight of the full-precision loss next to the fake-quantized ones (1 = full precision only)"})

    def check_through(self) -> None:
        if not 0 <= self.through_mix <= 1:
            raise UserError("--through-mix must lie between 0 and 1")


def parse_through(text: str) -> list[Scheme]:
    """'rtn-int4-g128,bnb-nf4' -> schemes; refuses what cannot be fake-quantized from the weights alone."""
    schemes = [parse_scheme(s) for s in text.split(",") if s.strip()]
    if not schemes:
        raise UserError("--through needs at least one quantization scheme, e.g. rtn-int4-g128")
    for s in schemes:
        if not (s.family == "rtn" or (s.family == "bnb" and s.kind in ("fp4", "nf4"))):
            raise UserError(f"--through {s.name}: only rtn-* and bnb-fp4/bnb-nf4 can be fake-quantized during "
                            "training (GPTQ/AWQ depend on calibration; bnb-int8 on activations)")
    return schemes


def dequantized(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Q(w) as the deployed quantizer computes it, in w's dtype."""
    if scheme.family == "rtn":
        return fake_quantize(w, scheme.rtn).to(w.dtype)
    return codebook_quantize(w, scheme.kind)[1].to(w.dtype)


def straight_through(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    return w + (dequantized(w.detach(), scheme) - w).detach()


class FakeQuantized:
    """Calls `model` with its quantized weights replaced by straight-through fake-quantized ones; any other
    attribute (config, device) is the model's."""

    def __init__(self, model, scheme: Scheme):
        self.model = model
        self.scheme = scheme
        self.names = [f"{name}.weight" for name, _ in target_linears(model, QuantizeOptions())]

    def __call__(self, **kwargs):
        params = dict(self.model.named_parameters())
        swapped = {n: straight_through(params[n], self.scheme) for n in self.names}
        return torch.func.functional_call(self.model, swapped, args=(), kwargs=kwargs, strict=False)

    def __getattr__(self, name):
        return getattr(self.model, name)
