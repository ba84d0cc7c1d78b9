"""Scheme names: one string per way a deployment quantizes a model.

    rtn-int4-g128, rtn-int8-channel, rtn-int4-tensor, rtn-int3-g64-asym, rtn-int4-g128-ct ...  (our RTN)
    bnb-fp4, bnb-nf4 (bitsandbytes 4-bit, blocks of 64; the paper's 4-bit), bnb-int8 (LLM.int8)
    gptq-int4-g128, awq-int4-g128                         (llmcompressor, calibrated on retain texts)
    hqq-int4-g64                                          (HQQ, calibration-free)
    cast-bf16, cast-fp16                                  (a 16-bit float format; the `cast:` attack)
    gguf-q4_k_m, gguf-q8_0, ... [-imatrix-retain|forget|FILE]   (llama-quantize's file types: gguf.py)
    fp8-e4m3, fp8-e4m3-tensor, fp8-dynamic, mxfp4, nvfp4  (floating-point formats: floats.py)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..utils.registry import Registry
from . import floats, gguf
from .codebook import codebook_groups, codebook_quantize, zero_bin_halfwidth
from .floats import float_spacing
from .rtn import RTNScheme, parse_rtn
from .rtn import fake_quantize as rtn_fake_quantize

LIB_PATTERN = re.compile(r"^(gptq|awq|hqq)-int(\d)-g(\d+)$")
EXAMPLES = ("rtn-int4-g128, rtn-int8-channel, bnb-fp4, bnb-nf4, bnb-int8, gptq-int4-g128, awq-int4-g128, hqq-int4-g64, "
            "gguf-q4_k_m, gguf-q8_0-imatrix-retain, fp8-e4m3, mxfp4, nvfp4")
FLOAT_SCHEMES = {"fp8-e4m3": ("fp8", "e4m3"), "fp8-e4m3-tensor": ("fp8", "e4m3-tensor"),
                 "fp8-dynamic": ("fp8", "dynamic"), "mxfp4": ("mxfp4", "mxfp4"), "nvfp4": ("nvfp4", "nvfp4")}


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string."""

    name: str
    family: str
    bits: int
    group_size: int | None = None
    rtn: RTNScheme | None = None
    kind: str | None = None  # bnb: fp4 / nf4 / int8; gguf: the file type (q4_k_m); floats: e4m3, mxfp4, ...
    imatrix: str | None = None  # gguf: the importance matrix's source (retain, forget or a file)
    # resolved for one tensor (gguf.planned, bins): its ggml type, the converted file's type, the absmax that
    # sets a tensor-wide scale (fp8-e4m3-tensor, nvfp4) when only some of its rows are at hand
    qtype: str | None = None
    source: str | None = None
    tensor_amax: float | None = None

    @property
    def analysable(self) -> bool:
        """Whether `bins` can reproduce the quantizer from the weights alone (no calibration data, no
        activations)."""
        if self.family == "gguf":
            return self.imatrix is None
        return self.family in ("rtn", "bnb", "cast", "mxfp4", "nvfp4") or self.kind in ("e4m3", "e4m3-tensor")

    @property
    def whole_tensor(self) -> bool:
        """Whether a tensor-wide statistic sets the scale (`bins` then reads each tensor's absmax first)."""
        return self.kind in ("e4m3-tensor", "nvfp4")


def group_views(w: torch.Tensor, scheme: Scheme) -> list[torch.Tensor]:
    """2-D views (n_groups, group_size) of `w` that cover it, one quantization step per row of a view."""
    rows, cols = w.shape
    if scheme.family == "bnb" and scheme.kind in ("fp4", "nf4"):
        flat = w.reshape(-1)  # bitsandbytes blocks of 64 run over the flattened row-major tensor
        full = (flat.numel() // 64) * 64
        return [v for v in (flat[:full].reshape(-1, 64), flat[full:].reshape(1, -1)) if v.numel()]
    if scheme.family in ("bnb", "cast", "gguf", "fp8", "mxfp4", "nvfp4") or scheme.rtn.granularity == "channel":
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
    if scheme.family == "gguf":
        return gguf.quantize(w, scheme.qtype, scheme.source)[0]
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
    if scheme.family == "gguf":  # codes: the dequantized values (block scales differ between models)
        deq, step = gguf.quantize(x, scheme.qtype, scheme.source)
        return deq, deq, step, step / 2
    if scheme.family in ("fp8", "mxfp4", "nvfp4"):
        codes, deq, step = floats.quantize_rows(x, scheme.kind, scheme.tensor_amax)
        return codes, deq, step, step / 2
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


@SCHEME_FAMILIES.register("gguf")
def _gguf(name: str) -> Scheme | None:
    """llama-quantize's file types, optionally calibrated by an importance matrix (gguf.py)."""
    parsed = gguf.parse(name)
    if parsed is None:
        return None
    ftype, source = parsed
    return Scheme(name, "gguf", gguf.BITS[ftype], None, kind=ftype, imatrix=source)


def _float(name: str) -> Scheme | None:
    """FP8 E4M3 (per channel, per tensor, with dynamic activations), MXFP4 and NVFP4 (floats.py)."""
    if name not in FLOAT_SCHEMES:
        return None
    family, kind = FLOAT_SCHEMES[name]
    return Scheme(name, family, 8 if family == "fp8" else 4, floats.BLOCKS.get(kind), kind=kind)


for _family in ("fp8", "mxfp4", "nvfp4"):
    SCHEME_FAMILIES.add(_family, _float)


def parse_scheme(name: str) -> Scheme:
    """Parse a scheme string by its family (the part before the first '-', or the whole name: mxfp4);
    unknown names are one-line user errors listing the families and examples."""
    name = name.strip()
    if name == "full":
        raise UserError("'full' means no quantization; do not pass --quantize for it")
    family = name.partition("-")[0]
    parsed = SCHEME_FAMILIES[family](name) if family in SCHEME_FAMILIES else None
    if parsed is None:
        raise UserError(f"unknown quantization scheme '{name}'; families: {', '.join(SCHEME_FAMILIES.names())} "
                        f"(e.g. {EXAMPLES})")
    return parsed


def four_bit(schemes: list[str]) -> list[str]:
    """The 4-bit schemes among `schemes` (int4 RTN/GPTQ/AWQ/HQQ, bitsandbytes FP4/NF4): what the paper's
    verdict reads."""
    return [s for s in schemes if s != "full" and precision_label(s) in ("int4", "4-bit")]


def precision_label(name: str) -> str:
    """'full' -> 'full'; 'rtn-int4-g128' (or 'quant:rtn-int4-g128') -> 'int4'; 'bnb-nf4' -> '4-bit';
    'gguf-q4_k_m' -> 'Q4_K_M' (what it applied per tensor: gguf.applied_label); 'nvfp4' -> 'NVFP4';
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
    if s.family == "gguf":
        return s.kind.upper() + (" imatrix" if s.imatrix else "")
    if s.family in ("fp8", "mxfp4", "nvfp4"):
        return {"dynamic": "FP8 W8A8"}.get(s.kind, s.family.upper())
    return f"int{s.bits}" if s.family != "bnb" else f"{s.bits}-bit"
