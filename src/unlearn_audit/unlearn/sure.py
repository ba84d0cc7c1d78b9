"""SURE (Zhang et al. 2025): unlearn only the weights that matter most for the forget loss.

Saliency of a weight row (one output unit of a matrix; each element of a 1-D parameter) is the L2 norm
of the forget-loss gradient over the forget set, computed once at the start. Rows at or above the
`percentile`-th saliency are trainable; every other row is frozen: its gradient is zeroed after each
backward pass, so with weight decay 0 AdamW's moments for it stay exactly zero and the row stays
bit-identical (tests check this). Module-level saliency keeps whole parameter tensors instead, by the
norm of their gradient (the paper's text).

The paper's released code computes a mask inside an `optimizer_step` override that HF Trainer never
calls (so nothing is masked) and back-propagates the forget loss twice; here the mask is applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

LEVELS = ("row", "module")


@dataclass
class SaliencyOptions:
    saliency: str | None = field(default=None, metadata={"help": "row or module: SURE-style masking on any method"})
    saliency_percentile: float = field(default=90.0, metadata={"help": "keep rows at or above this percentile"})


def gradient_norms(model, level: str) -> dict[str, torch.Tensor]:
    """Per-row (or per-tensor) gradient norms of every parameter that received a gradient."""
    norms = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().float()
        if level == "module":
            norms[name] = g.norm().reshape(1)
        elif g.dim() > 1:
            norms[name] = g.flatten(1).norm(dim=1)
        else:
            norms[name] = g.abs()
    return norms


def compute_masks(
    model,
    forget_batches: Iterable[dict],
    forget_loss: Callable[[dict], torch.Tensor],
    level: str = "row",
    percentile: float = 90.0,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (one entry per row, or one per tensor) from the accumulated forget gradient."""
    if level not in LEVELS:
        raise UserError(f"--saliency must be one of {', '.join(LEVELS)}")
    if not 0 <= percentile < 100:
        raise UserError("--saliency-percentile must lie in [0, 100)")
    model.zero_grad(set_to_none=True)
    n = 0
    for inputs in forget_batches:
        forget_loss(inputs).backward()
        n += 1
    if n == 0:
        raise UserError("the forget set gave no batches; SURE needs forget texts to compute saliency")
    norms = gradient_norms(model, level)
    model.zero_grad(set_to_none=True)
    flat = torch.cat([v.flatten() for v in norms.values()]).cpu().numpy().astype(np.float64)
    threshold = float(np.percentile(flat, percentile))
    masks = {name: (v >= threshold).cpu() for name, v in norms.items()}
    for name, p in model.named_parameters():  # parameters without a forget gradient stay frozen
        if name not in masks:
            masks[name] = torch.zeros(1 if level == "module" else (p.shape[0] if p.dim() else 1), dtype=torch.bool)
    return masks


def broadcast(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Expand a per-row (or per-tensor) mask to the parameter's shape."""
    if mask.numel() == 1:
        return mask.reshape([1] * param.dim()).to(param.device, param.dtype)
    return mask.reshape([-1] + [1] * (param.dim() - 1)).to(param.device, param.dtype)


@torch.no_grad()
def mask_gradients(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradient of every frozen row; called after each backward pass."""
    for name, p in model.named_parameters():
        if p.grad is not None and name in masks:
            p.grad.mul_(broadcast(masks[name], p.grad))


def kept_share(masks: dict[str, torch.Tensor], model) -> float:
    """Share of all parameters that SURE lets move."""
    total = kept = 0
    for name, p in model.named_parameters():
        m = masks.get(name)
        total += p.numel()
        if m is not None:
            kept += int((broadcast(m, p).expand_as(p) > 0).sum())
    return kept / max(total, 1)


def save_masks(masks: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, str(path))


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.bool() for k, v in load_file(str(path)).items()}
