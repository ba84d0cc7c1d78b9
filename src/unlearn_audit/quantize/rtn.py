"""Round-to-nearest (RTN) quantization, our own code because it is the paper's object of study.

Symmetric, N bits, codes q in [-2^(N-1), 2^(N-1) - 1]:
    Q(w) = Delta * clamp(round(w / Delta)),   Delta = max|w| / D   over a tensor, row or group, with
    D = 2^(N-1)         ("paper": Zhang et al.'s Delta = max|w| / 2^(N-1); the positive extreme clips)
    D = 2^(N-1) - 1     ("maxq": the common convention, no clipping)
    D = (2^N - 1) / 2   ("ct": compressed-tensors / llmcompressor's symmetric scale)
Asymmetric, codes in [0, 2^N - 1]: scale = (max - min) / (2^N - 1), zero = round(-min / scale),
    Q(w) = scale * (clamp(round(w / scale) + zero) - zero)   with min <= 0 <= max.
Granularity: one Delta per tensor, per output channel (row), or per group of `group_size` consecutive
inputs of a row (a last partial group gets its own Delta). Everything is computed in float32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

GRANULARITIES = ("tensor", "channel", "group")
DELTAS = ("paper", "maxq", "ct")


@dataclass(frozen=True)
class RTNScheme:
    """An RTN configuration; `name` round-trips through `parse_rtn`."""

    bits: int
    granularity: str = "group"
    group_size: int | None = 128
    symmetric: bool = True
    delta: str = "paper"

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise UserError(f"RTN supports 2 to 8 bits, not {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and (not self.group_size or self.group_size < 1):
            raise UserError("group-wise RTN needs a positive group size")
        if self.delta not in DELTAS:
            raise UserError(f"delta convention must be one of {', '.join(DELTAS)}")

    @property
    def name(self) -> str:
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        suffix = "" if self.symmetric else "-asym"
        if self.symmetric and self.delta != "paper":
            suffix = f"-{self.delta}"
        return f"rtn-int{self.bits}-{gran}{suffix}"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def divisor(self) -> float:
        """D in Delta = max|w| / D (symmetric schemes)."""
        half = 2 ** (self.bits - 1)
        return {"paper": float(half), "maxq": float(half - 1), "ct": (2**self.bits - 1) / 2}[self.delta]


RTN_PATTERN = re.compile(r"^rtn-int(\d)-(g(\d+)|channel|tensor)(?:-(asym|maxq|ct|paper))?$")


def parse_rtn(name: str) -> RTNScheme:
    """'rtn-int4-g128' -> RTNScheme(4, group, 128); also -channel, -tensor and -asym/-maxq/-ct suffixes."""
    m = RTN_PATTERN.match(name)
    if not m:
        raise UserError(f"'{name}' is not an RTN scheme (examples: rtn-int4-g128, rtn-int8-channel, rtn-int3-g64-asym)")
    bits, gran, group, variant = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    granularity = "group" if group else gran
    return RTNScheme(
        bits=bits,
        granularity=granularity,
        group_size=int(group) if group else None,
        symmetric=variant != "asym",
        delta=variant if variant in ("maxq", "ct") else "paper",
    )


def _grouped(w: torch.Tensor, scheme: RTNScheme) -> list[torch.Tensor]:
    """Views of `w` (2-D, float32) whose last dimension is one quantization group."""
    if scheme.granularity == "tensor":
        return [w.reshape(1, -1)]
    if scheme.granularity == "channel":
        return [w]
    g = scheme.group_size
    cols = w.shape[1]
    full = (cols // g) * g
    parts = []
    if full:
        parts.append(w[:, :full].reshape(w.shape[0], cols // g, g))
    if full < cols:  # the last partial group gets its own Delta
        parts.append(w[:, full:].reshape(w.shape[0], 1, cols - full))
    return parts


def _quantize_groups(x: torch.Tensor, scheme: RTNScheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, zero) for a tensor whose last dim is a group."""
    if scheme.symmetric:
        scale = x.abs().amax(dim=-1, keepdim=True) / scheme.divisor
        zero = torch.zeros_like(scale)
    else:
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (2**scheme.bits - 1)
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(x / safe) + zero, scheme.qmin, scheme.qmax)
    return codes, scale, zero


def quantize(w: torch.Tensor, scheme: RTNScheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, dequantized weight, Delta per element), all float32 with the shape of `w` (2-D)."""
    if w.dim() != 2:
        raise UserError(f"RTN quantizes 2-D weights, got shape {tuple(w.shape)}")
    x = w.detach().float()
    codes_parts, deq_parts, delta_parts = [], [], []
    for part in _grouped(x, scheme):  # every part holds whole rows' groups (a tensor's one group: all rows)
        codes, scale, zero = _quantize_groups(part, scheme)
        codes_parts.append(codes.reshape(x.shape[0], -1))
        deq_parts.append(((codes - zero) * scale).reshape(x.shape[0], -1))
        delta_parts.append(scale.expand_as(part).reshape(x.shape[0], -1))
    return torch.cat(codes_parts, 1), torch.cat(deq_parts, 1), torch.cat(delta_parts, 1)


def fake_quantize(w: torch.Tensor, scheme: RTNScheme) -> torch.Tensor:
    """Q(w) in float32: quantize then dequantize."""
    return quantize(w, scheme)[1]
