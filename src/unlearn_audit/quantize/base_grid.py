"""The 4-bit grid a packaged base ships on, recovered from its own weights, and moving a model off it
(issue 32 item 6).

The packaged bases are GGUF files: SmolLM2's matrices are Q4_1 (blocks of 32 along each row on the grid
min + d * k, k = 0..15, d = (max - min) / 15), Gemma's mostly Q4_K (sub-blocks of 32 with their own 4-bit
scale and min, the same form). Converted to floats, every weight of such a base is a grid point and the
grid of each block is recovered exactly from the base's own 32 values (when the block uses its lowest and
highest code, as a min/max quantizer's blocks do). Fine-tuning moves the weights only a small fraction
of a step (docs/findings.md section 17), so every target made from the base inherits the grid;
`dither` moves each weight a uniform random amount of up to `amount` steps of its block instead.
Tensors whose rows are not a multiple of 32 wide, and 1-D tensors (norms), are left as they are.
"""

from __future__ import annotations

import torch

BLOCK = 32
ON_GRID = 0.05  # within this share of a step of a grid point counts as on the grid (10% of random weights)


def blocks_of(w: torch.Tensor) -> torch.Tensor | None:
    """The tensor as rows of 32 consecutive weights along its rows (None: not a 2-D tensor so shaped)."""
    if w.dim() != 2 or w.shape[-1] % BLOCK:
        return None
    return w.float().reshape(-1, BLOCK)


def block_grid(base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(origin, step) of each block of the base: its minimum and (max - min) / 15."""
    low, high = base.amin(1, keepdim=True), base.amax(1, keepdim=True)
    return low, (high - low) / 15


def grid_counts(base: torch.Tensor, other: torch.Tensor) -> dict[str, float] | None:
    """For one tensor of the base and the same tensor of another model: the sum of |w - w_base| / step
    over its weights, how many moved at least half a step (another code under the base's grid), how many
    still sit on the base's grid, and how many there are (None: not a tensor of 32-wide blocks)."""
    b, o = blocks_of(base), blocks_of(other)
    if b is None or o is None or b.shape != o.shape:
        return None
    origin, step = block_grid(b)
    step = step.clamp(min=torch.finfo(torch.float32).tiny)
    distance = (o - b).abs() / step
    position = (o - origin) / step
    return {"distance": float(distance.sum()), "moved": float((distance >= 0.5).sum()),
            "on_grid": float(((position - position.round()).abs() <= ON_GRID).sum()), "n": float(distance.numel())}


def grid_summary(counts: list[dict[str, float] | None]) -> dict[str, float | None]:
    """Over the tensors' `grid_counts`: the mean move from the base in steps, the share of weights moved
    half a step or more and the share still on the base's grid."""
    kept = [c for c in counts if c]
    n = sum(c["n"] for c in kept)
    if not n:
        return {"mean_steps": None, "moved_share": None, "on_grid_share": None}
    return {"mean_steps": sum(c["distance"] for c in kept) / n, "moved_share": sum(c["moved"] for c in kept) / n,
            "on_grid_share": sum(c["on_grid"] for c in kept) / n}


@torch.no_grad()
def dither(model, amount: float, seed: int) -> int:
    """Add to every weight of each 2-D parameter a uniform random amount in [-amount, amount] steps of its
    block's grid (the grid of the model's own values: call it on the base itself). Returns how many
    weights moved."""
    gen = torch.Generator().manual_seed(seed)
    moved = 0
    for _, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        b = blocks_of(p.data)
        if b is None:
            continue
        _, step = block_grid(b)
        noise = (torch.rand(b.shape, generator=gen) * 2 - 1) * amount * step
        p.data.copy_((b + noise).reshape(p.shape).to(p.dtype))
        moved += b.numel()
    return moved
