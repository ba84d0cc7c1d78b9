"""4-bit codebook quantization as bitsandbytes does it (FP4 and NF4, absmax per block of 64).

Used to analyse weights (`bins`) without bitsandbytes installed; a test checks that it gives the same
dequantized weights as `bitsandbytes.functional.quantize_4bit` / `dequantize_4bit`.
Q(w) = absmax_block * c_k, with c_k the codebook value nearest to w / absmax_block.
"""

from __future__ import annotations

import torch

# bitsandbytes' code tables (functional.get_4bit_type), indexed by the 4-bit code
FP4 = torch.tensor(
    [0.0, 0.0052083, 0.6666667, 1.0, 0.3333333, 0.5, 0.1666667, 0.25,
     0.0, -0.0052083, -0.6666667, -1.0, -0.3333333, -0.5, -0.1666667, -0.25]
)
NF4 = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0]
)
TABLES = {"fp4": FP4, "nf4": NF4}
BLOCKSIZE = 64


def codebook_groups(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, dequantized, absmax (n, 1)) of blocks x (n, blocksize), float32 math."""
    table = TABLES[kind].to(x.device)
    absmax = x.abs().amax(dim=1, keepdim=True)
    scaled = x / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codes = (scaled.unsqueeze(-1) - table).abs_().argmin(dim=-1)
    return codes, table[codes] * absmax, absmax


def codebook_quantize(w: torch.Tensor, kind: str, blocksize: int = BLOCKSIZE):
    """(codes, dequantized, absmax per element) of `w` (any shape, row-major blocks; the last block is
    zero-padded as bitsandbytes pads it, which leaves its absmax unchanged)."""
    flat = w.detach().float().reshape(-1)
    pad = (-flat.numel()) % blocksize
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    codes, deq, absmax = codebook_groups(flat.reshape(-1, blocksize), kind)
    n = w.numel()
    absmax_el = absmax.expand(-1, blocksize).reshape(-1)[:n].reshape(w.shape)
    return codes.reshape(-1)[:n].reshape(w.shape), deq.reshape(-1)[:n].reshape(w.shape), absmax_el


def zero_bin_halfwidth(kind: str) -> float:
    """Half the distance from 0 to the smallest non-zero code magnitude, as a share of absmax."""
    table = TABLES[kind]
    smallest = table[table.abs() > 0].abs().min().item()
    return smallest / 2
