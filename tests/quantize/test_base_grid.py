"""The base's 4-bit grid recovered from its own weights, distances in steps, and the dither that moves a
model off it."""

from __future__ import annotations

import pytest
import torch

from unlearn_audit.quantize.base_grid import block_grid, blocks_of, dither, grid_counts, grid_summary


def on_q4_1_grid(rows: int = 8, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """A tensor whose blocks of 32 sit on Q4_1 grids that use their lowest and highest code."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows * cols // 32, 32), generator=gen)
    codes[:, 0], codes[:, 1] = 0, 15
    low = torch.randn(rows * cols // 32, 1, generator=gen)
    step = torch.rand(rows * cols // 32, 1, generator=gen) * 0.1 + 0.01
    return (low + codes * step).reshape(rows, cols), low, step


def test_the_grid_of_each_block_is_recovered_from_the_base_itself():
    w, low, step = on_q4_1_grid()
    origin, found = block_grid(blocks_of(w))
    torch.testing.assert_close(origin, low)
    torch.testing.assert_close(found, step)
    assert blocks_of(torch.zeros(4, 48)) is None and blocks_of(torch.zeros(64)) is None


def test_distances_are_counted_in_steps_of_the_base_grid():
    w, _, step = on_q4_1_grid()
    c = grid_counts(w, w)
    assert c == {"distance": 0.0, "moved": 0.0, "on_grid": float(w.numel()), "n": float(w.numel())}
    shifted = (blocks_of(w) + 0.25 * step).reshape(w.shape)  # a quarter step: off the grid, same code
    c = grid_counts(w, shifted)
    assert c["distance"] == pytest.approx(0.25 * w.numel(), rel=1e-4) and c["moved"] == 0 and c["on_grid"] == 0
    s = grid_summary([c, None, grid_counts(w, (blocks_of(w) + step).reshape(w.shape))])
    assert s["mean_steps"] == pytest.approx(0.625, rel=1e-4) and s["moved_share"] == 0.5 and s["on_grid_share"] == 0.5
    assert grid_summary([None]) == {"mean_steps": None, "moved_share": None, "on_grid_share": None}


def test_dither_moves_every_weight_within_the_amount_and_off_the_grid():
    w, _, _ = on_q4_1_grid(rows=64, cols=256)
    model = torch.nn.Linear(256, 64, bias=False)
    norm = torch.nn.LayerNorm(64)
    with torch.no_grad():
        model.weight.copy_(w)
    holder = torch.nn.Sequential(model, norm)
    before_norm = norm.weight.clone()
    assert dither(holder, 0.5, seed=0) == w.numel()
    c = grid_counts(w, model.weight.detach())
    assert c["moved"] == 0 and c["distance"] / c["n"] == pytest.approx(0.25, abs=0.01)  # uniform on [-0.5, 0.5]
    assert c["on_grid"] / c["n"] == pytest.approx(0.1, abs=0.01)  # as random weights
    assert torch.equal(norm.weight, before_norm)  # 1-D tensors stay
    again = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False))
    with torch.no_grad():
        again[0].weight.copy_(w)
    dither(again, 0.5, seed=0)
    assert torch.equal(again[0].weight, model.weight)  # the seed picks the draw
