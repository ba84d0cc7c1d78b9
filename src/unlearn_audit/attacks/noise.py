"""`noise:rel=R` / `noise:std=S`: Gaussian noise added to the weights.

Each weight matrix the quantizers touch gets i.i.d. N(0, sigma^2), sigma = S, or R times that matrix's
own standard deviation (comparable across model sizes). Seeded. A check of how narrow the unlearned
solution is: forgetting that a random perturbation of quantization-step size undoes was never deep.
Not a published attack; weight perturbations of this kind are how robustness of unlearning to small
weight changes is probed (cf. quantization itself, which is a structured perturbation of the same size).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..quantize.backends import QuantizeOptions, target_linears
from .registry import Attack, AttackFamily, Param, register_attack


@register_attack
class Noise(AttackFamily):
    family = "noise"
    params = [Param("rel", float, 0.0, lambda v: v >= 0, "a non-negative number"),
              Param("std", float, 0.0, lambda v: v >= 0, "a non-negative number"),
              Param("seed", int, 0)]
    usage = "noise:rel=R (R x each matrix's std) or noise:std=S (absolute), optional seed=N"
    source = "weight-perturbation check (no single source)"

    @classmethod
    def validate(cls, attack: Attack) -> None:
        rel, std = attack.params["rel"], attack.params["std"]
        if (rel > 0) == (std > 0):
            raise UserError(f"{attack.name}: give exactly one of rel=R or std=S, positive")

    @classmethod
    @torch.no_grad()
    def transform(cls, model, attack: Attack) -> None:
        g = torch.Generator().manual_seed(attack.params["seed"])
        for _, mod in target_linears(model, QuantizeOptions()):
            w = mod.weight
            sigma = attack.params["std"] or attack.params["rel"] * w.float().std().item()
            noise = torch.randn(w.shape, generator=g, dtype=torch.float32) * sigma
            w.add_(noise.to(w.dtype).to(w.device))
