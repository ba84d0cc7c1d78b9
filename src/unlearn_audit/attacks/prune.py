"""`prune:magnitude:SHARE`: unstructured magnitude pruning, a deployment compression like quantization.

In every weight matrix the quantizers touch (each nn.Linear but lm_head; embeddings stay), exactly
round(SHARE * n) weights of smallest |w| are set to 0 (ties broken by position), the rest unchanged.
Small weights are where small-learning-rate unlearning updates land (the paper's bf16 argument), so
pruning can remove the update together with the weight.

Source: Han et al., "Learning both weights and connections for efficient neural networks" (NeurIPS 2015);
layer-wise magnitude pruning is the baseline of Sun et al., "Wanda" (ICLR 2024).
"""

from __future__ import annotations

import torch

from ..quantize.backends import QuantizeOptions, target_linears
from .registry import Attack, AttackFamily, Param, register_attack


@register_attack
class Prune(AttackFamily):
    family = "prune"
    params = [Param("method", str, positional=True, check=lambda v: v == "magnitude", rule="magnitude"),
              Param("share", float, positional=True, check=lambda v: 0 < v < 1, rule="a share in (0, 1)")]
    usage = "prune:magnitude:SHARE, e.g. prune:magnitude:0.3"
    source = "Han et al., NeurIPS 2015; Sun et al. (Wanda), ICLR 2024"

    @classmethod
    @torch.no_grad()
    def transform(cls, model, attack: Attack) -> None:
        for _, mod in target_linears(model, QuantizeOptions()):
            prune_smallest_(mod.weight, attack.params["share"])


def prune_smallest_(w: torch.Tensor, share: float) -> None:
    """Zero the round(share * numel) entries of smallest magnitude, in place."""
    k = round(share * w.numel())
    if k:
        order = w.detach().abs().flatten().argsort(stable=True)
        w.view(-1)[order[:k]] = 0
