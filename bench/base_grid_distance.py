"""How far models fine-tuned from a packaged GGUF base sit from that base's 4-bit grid (issue 32 item 6).

The packaged SmolLM2 base is a Q4_1 file (blocks of 32 weights along a row, each block on the grid
min + d * k, k = 0..15, d = (max - min) / 15) with a Q8_0 token embedding (d = max|w| / 127, grid d * k);
converted to fp32 every weight of the base is a grid point, and the grid of each block is recovered exactly
from the base's own values. For each model given, per weight: its distance from the base in units of its
block's step d, and whether it still sits on the base's grid (within 0.05 of a step of a grid point; a
weight placed at random does so 10% of the time).

    python bench/base_grid_distance.py BASE_FOLDER MODEL_FOLDER [MODEL_FOLDER ...]

Prints one line per model: the median and 90th percentile of |w - w_base| / d, the share of weights that
moved by at least half a step (another code than the base's under the base's grid) and the share still on
the base's grid, over the Q4_1 matrices and the Q8_0 embedding separately.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open

from unlearn_audit.quantize.base_grid import BLOCK, ON_GRID, block_grid

SAMPLE = 10_000  # weights per tensor whose percentiles are taken (all of them enter the shares)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k).float() for k in f.keys() if f.get_slice(k).get_shape().__len__() == 2})
    return out


def grid(name: str, w: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(type, origin, step) per block of 32 along each row: Q8_0 for the embedding, Q4_1 otherwise."""
    blocks = w.reshape(-1, BLOCK)
    if "embed_tokens" in name:
        return "q8_0", torch.zeros(len(blocks), 1), blocks.abs().amax(1, keepdim=True) / 127
    return "q4_1", *block_grid(blocks)


def main() -> None:
    base_folder, *models = (Path(a) for a in sys.argv[1:])
    if not models:
        sys.exit(__doc__)
    base = tensors(base_folder)
    grids = {name: grid(name, w) for name, w in base.items() if w.shape[-1] % BLOCK == 0}
    base_on = {t: [] for t in ("q4_1", "q8_0")}
    for name, (kind, origin, step) in grids.items():
        u = (base[name].reshape(-1, BLOCK) - origin) / step.clamp(min=1e-30)
        base_on[kind].append(((u - u.round()).abs() <= ON_GRID).float().mean().item())
    print(f"base {base_folder}: on its own grid: " + ", ".join(f"{k} {100 * sum(v) / max(len(v), 1):.1f}%"
                                                               for k, v in base_on.items()))
    for folder in models:
        other = tensors(folder)
        stats = {t: {"n": 0, "moved": 0, "on": 0, "dist": []} for t in ("q4_1", "q8_0")}
        for name, (kind, origin, step) in grids.items():
            if name not in other:
                continue
            w, b = other[name].reshape(-1, BLOCK), base[name].reshape(-1, BLOCK)
            safe = step.clamp(min=1e-30)
            dist = ((w - b).abs() / safe).flatten()
            u = (w - origin) / safe
            s = stats[kind]
            s["n"] += dist.numel()
            s["moved"] += int((dist >= 0.5).sum())
            s["on"] += int(((u - u.round()).abs() <= ON_GRID).sum())
            s["dist"].append(dist[torch.randint(0, dist.numel(), (min(SAMPLE, dist.numel()),),
                                                generator=torch.Generator().manual_seed(0))])
        parts = []
        for kind, s in stats.items():
            if s["n"]:
                d = torch.cat(s["dist"])
                parts.append(f"{kind}: |dw|/d median {d.median():.2f}, p90 {d.quantile(0.9):.2f}; moved >= 0.5 step "
                             f"{100 * s['moved'] / s['n']:.1f}%; on the base's grid {100 * s['on'] / s['n']:.1f}%")
        print(f"{folder}: " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
