"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP benchmark: measuring and
reducing malicious use with unlearning", arXiv 2403.03218, Sec. 5): at one decoder block l, push the
forget-set activations towards a fixed random direction and keep the retain-set activations where the
frozen target has them, training only the MLP output matrices of blocks l-2..l:

    L_RMU = E_forget[ mean_d (h_theta(x)_l - c*u)^2 ] + alpha * E_retain[ mean_d (h_theta(x)_l - h_ref(x)_l)^2 ]

averaged over real tokens; u is uniform on [0, 1)^d normalised to length 1 and seeded by `--seed`,
c = `--rmu-steering` (default 20), alpha = `--rmu-alpha` (default 1000; the WMDP code used 1200 for
zephyr-7b, open-unlearning 1000; both are model-dependent), l = `--rmu-layer` (default: the block in
the middle). `--rmu-params REGEX` overrides which parameters train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .methods import Batch, register_forget_loss


@dataclass
class RMUOptions:
    rmu_layer: int | None = field(default=None, metadata={"help": "RMU: decoder block steered (default: middle)"})
    rmu_steering: float = field(default=20.0, metadata={"help": "RMU: length of the random target direction"})
    rmu_alpha: float = field(default=1000.0, metadata={"help": "RMU: weight of the retain activation term"})
    rmu_params: str | None = field(default=None, metadata={
        "help": "RMU: regex of the trained parameters (default: MLP down_proj of blocks layer-2..layer)"})


def rmu_layer(model_config, cfg) -> int:
    layers = model_config.num_hidden_layers
    layer = cfg.rmu_layer if cfg.rmu_layer is not None else max(0, layers // 2 - 1)
    if not 0 <= layer < layers:
        raise UserError(f"--rmu-layer {layer} is outside the model's {layers} blocks (0..{layers - 1})")
    return layer


def trainable_pattern(layer: int, cfg) -> str:
    if cfg.rmu_params:
        return cfg.rmu_params
    blocks = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    return rf"(.*\.)?layers\.({blocks})\.mlp\.down_proj\.weight"


def freeze_all_but_rmu_params(model, cfg) -> list[str]:
    """RMU trains only the matched matrices; everything else is frozen (returns the trained names)."""
    pattern = re.compile(trainable_pattern(rmu_layer(model.config, cfg), cfg))
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(pattern.fullmatch(name)))
        if p.requires_grad:
            trained.append(name)
    if not trained:
        raise UserError(f"RMU: no parameter matches {pattern.pattern!r}; give --rmu-params REGEX")
    return trained


def control_vector(dim: int, seed: int, steering: float) -> torch.Tensor:
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm() * steering


def activation_distance(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of the mean squared difference over the hidden dimension."""
    per_token = (h.float() - target.float()).pow(2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_forget_loss("rmu", needs_ref=True, needs_retain=True, prepare=freeze_all_but_rmu_params,
                      options=RMUOptions)
def _rmu(batch: Batch, cfg) -> torch.Tensor:
    layer = rmu_layer(batch.model.config, cfg)
    h_forget = batch.hidden(batch.model, "forget", layer)
    u = control_vector(h_forget.shape[-1], cfg.seed, cfg.rmu_steering).to(h_forget.device)
    forget = activation_distance(h_forget, u.expand_as(h_forget), batch.inputs["forget_attention_mask"])
    h_retain = batch.hidden(batch.model, "retain", layer)
    with torch.no_grad():
        h_ref = batch.hidden(batch.ref_model, "retain", layer)
    retain = activation_distance(h_retain, h_ref, batch.inputs["retain_attention_mask"])
    return forget + cfg.rmu_alpha * retain
