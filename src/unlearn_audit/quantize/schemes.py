"""Scheme names: one string per way a deployment quantizes a model.

    rtn-int4-g128, rtn-int8-channel, rtn-int4-tensor, rtn-int3-g64-asym, rtn-int4-g128-ct ...  (our RTN)
    bnb-fp4, bnb-nf4 (bitsandbytes 4-bit, blocks of 64; the paper's 4-bit), bnb-int8 (LLM.int8)
    gptq-int4-g128, awq-int4-g128                         (llmcompressor, calibrated on retain texts)
    hqq-int4-g64                                          (HQQ, calibration-free)
    cast-bf16, cast-fp16                                  (a 16-bit float format; the `cast:` attack)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..utils.registry import Registry
from .codebook import codebook_groups, codebook_quantize, zero_bin_halfwidth
from .rtn import RTNScheme, parse_rtn
from .rtn import fake_quantize as rtn_fake_quantize

LIB_PATTERN = re.compile(r"^(gptq|awq|hqq)-int(\d)-g(\d+)$")
EXAMPLES = "rtn-int4-g128, rtn-int8-channel, bnb-fp4, bnb-nf4, bnb-int8, gptq-int4-g128, awq-int4-g128, hqq-int4-g64"


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string."""

    name: str
    family: str
    bits: int
    group_size: int | None = None
    rtn: RTNScheme | None = None
    kind: str | None = None  # bnb: fp4 / nf4 / int8

    @property
    def analysable(self) -> bool:
        """Whether `bins` can reproduce the quantizer from the weights alone (no calibration data)."""
        return self.family in ("rtn", "bnb", "cast")


def group_views(w: torch.Tensor, scheme: Scheme) -> list[torch.Tensor]:
    """2-D views (n_groups, group_size) of `w` that cover it, one quantization step per row of a view."""
    rows, cols = w.shape
    if scheme.family == "bnb" and scheme.kind in ("fp4", "nf4"):
        flat = w.reshape(-1)  # bitsandbytes blocks of 64 run over the flattened row-major tensor
        full = (flat.numel() // 64) * 64
        return [v for v in (flat[:full].reshape(-1, 64), flat[full:].reshape(1, -1)) if v.numel()]
    if scheme.family in ("bnb", "cast") or scheme.rtn.granularity == "channel":
        return [w]
    if scheme.rtn.granularity == "tensor":
        return [w.reshape(1, -1)]
    g = scheme.rtn.group_size
    full = (cols // g) * g
    views = [w[:, :full].reshape(-1, g)] if full else []
    if full < cols:
        views.append(w[:, full:])  # the last partial group of each row
    return views


def fake_quantize(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Q(w) in float32 under `scheme` (a new tensor): RTN and bitsandbytes' FP4/NF4 through their own
    quantizers, casts element by element at any shape, LLM.int8's rows through `quantize_groups`."""
    if scheme.family == "rtn":
        return rtn_fake_quantize(w, scheme.rtn)
    if scheme.family == "bnb" and scheme.kind in ("fp4", "nf4"):
        return codebook_quantize(w, scheme.kind)[1]
    x = w.detach().float()
    flat = x.reshape(1, -1) if scheme.family == "cast" else x
    return quantize_groups(flat, scheme)[1].reshape(x.shape)


def quantize_groups(x: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, dequantized, step, zero-bin half-width) of groups x (n, g); step and half-width are (n, 1).

    The analysis runs this on billions of weights, so it allocates as few temporaries as possible."""
    if scheme.family == "bnb" and scheme.kind in ("fp4", "nf4"):
        codes, deq, absmax = codebook_groups(x, scheme.kind)
        return codes, deq, absmax, absmax * zero_bin_halfwidth(scheme.kind)
    if scheme.family == "cast":
        deq = x.to(CAST_DTYPES[scheme.kind]).float()
        return deq, deq, float_spacing(deq, scheme.kind), float_spacing(deq, scheme.kind) / 2
    rtn = scheme.rtn if scheme.family == "rtn" else RTNScheme(8, "channel", None, True, "maxq")
    if rtn.symmetric:
        scale = x.abs().amax(dim=1, keepdim=True).div_(rtn.divisor)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = (x / safe).round_().clamp_(rtn.qmin, rtn.qmax)
        return codes, codes * scale, scale, scale / 2
    lo = x.amin(dim=1, keepdim=True).clamp_(max=0)
    hi = x.amax(dim=1, keepdim=True).clamp_(min=0)
    scale = (hi - lo).div_(2**rtn.bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = (-lo / safe).round_()
    codes = (x / safe).round_().add_(zero).clamp_(rtn.qmin, rtn.qmax)
    return codes, (codes - zero).mul_(scale), scale, scale / 2


CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MANTISSA_BITS = {"bf16": 7, "fp16": 10}
SMALLEST_EXPONENT = {"bf16": -126, "fp16": -14}  # of the normal numbers; below, the spacing is constant


def float_spacing(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The distance between neighbouring values of the 16-bit format at x (its 'quantization step')."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=1e-38))).clamp(min=SMALLEST_EXPONENT[kind])
    return torch.exp2(exponent - MANTISSA_BITS[kind])


SCHEME_FAMILIES: Registry[Callable[[str], Scheme | None]] = Registry("quantization scheme family")


@SCHEME_FAMILIES.register("rtn")
def _rtn(name: str) -> Scheme:
    rtn = parse_rtn(name)
    return Scheme(name, "rtn", rtn.bits, rtn.group_size, rtn=rtn)


@SCHEME_FAMILIES.register("bnb")
def _bnb(name: str) -> Scheme | None:
    if name in ("bnb-fp4", "bnb-nf4"):
        return Scheme(name, "bnb", 4, 64, kind=name[4:])
    return Scheme(name, "bnb", 8, None, kind="int8") if name == "bnb-int8" else None


@SCHEME_FAMILIES.register("cast")
def _cast(name: str) -> Scheme | None:
    """A 16-bit float format: round-to-nearest-even of every weight."""
    return Scheme(name, "cast", 16, None, kind=name[5:]) if name in ("cast-bf16", "cast-fp16") else None


def _library(name: str) -> Scheme | None:
    """gptq-, awq- and hqq-intB-gG: the libraries' grouped integer schemes."""
    m = LIB_PATTERN.match(name)
    if not m:
        return None
    family, bits, group = m.group(1), int(m.group(2)), int(m.group(3))
    if not 2 <= bits <= 8:
        raise UserError(f"{name}: bits must be between 2 and 8")
    return Scheme(name, family, bits, group)


for _family in ("gptq", "awq", "hqq"):
    SCHEME_FAMILIES.add(_family, _library)


def parse_scheme(name: str) -> Scheme:
    """Parse a scheme string by its family (the part before the first '-'); unknown names are one-line
    user errors listing examples."""
    name = name.strip()
    if name == "full":
        raise UserError("'full' means no quantization; do not pass --quantize for it")
    family, dash, _ = name.partition("-")
    parsed = SCHEME_FAMILIES[family](name) if dash and family in SCHEME_FAMILIES else None
    if parsed is None:
        raise UserError(f"unknown quantization scheme '{name}'; examples: {EXAMPLES}")
    return parsed


def precision_label(name: str) -> str:
    """'full' -> 'full'; 'rtn-int4-g128' (or 'quant:rtn-int4-g128') -> 'int4'; 'bnb-nf4' -> '4-bit';
    any other attack name stays itself (for tables and plots)."""
    if name == "full":
        return "full"
    family, _, rest = name.partition(":")
    if rest:
        if family != "quant":
            return name
        name = rest
    s = parse_scheme(name)
    if s.family == "cast":
        return s.kind
    return f"int{s.bits}" if s.family != "bnb" else f"{s.bits}-bit"
