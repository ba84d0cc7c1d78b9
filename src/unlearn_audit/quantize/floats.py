"""Floating-point weight formats as weight-only fake quantization (float32 math, rows = output channels,
blocks along the input dimension): what vLLM / TensorRT serve as FP8 and FP4.

    fp8-e4m3         s = absmax(row) / 448, Q(w) = s * e4m3(w / s): compressed-tensors' FP8 channel weights
                     (llmcompressor's FP8_DYNAMIC weights); e4m3 = torch.float8_e4m3fn, nearest even, saturating
    fp8-e4m3-tensor  the same with one s per tensor (compressed-tensors' static FP8 weights)
    fp8-dynamic      fp8-e4m3 weights, and every quantized Linear's input cast per token at run time with
                     s = absmax(token) / 448 (compressed-tensors' FP8_DYNAMIC, W8A8 as vLLM serves it)
    mxfp4            OCP MX v1.0: blocks of 32 inputs, X = 2^(floor(log2 absmax(block)) - 2) stored as E8M0,
                     Q(w) = X * e2m1(w / X), E2M1 = {0, 0.5, 1, 1.5, 2, 3, 4, 6}: nearest, ties to the smaller
                     magnitude, saturating at 6 (llama.cpp's / gguf-py's quantize_row_mxfp4)
    nvfp4            NVIDIA NVFP4 as compressed-tensors 0.19 stores it (NVFP4A16 weights): a float32 global
                     scale g = 448 * 6 / absmax over the tensor (over q/k/v together and gate/up together, as
                     llmcompressor fuses them for vLLM), E4M3 block scales s = e4m3(g * absmax(block of 16) / 6)
                     (0 -> 0.125), Q(w) = (s / g) * e2m1(w / (s / g)) with E2M1 rounded to nearest even

Each quantizer returns (codes, dequantized, step): codes are the element values the format stores (e4m3 or
e2m1, before scaling), step the distance to the neighbouring code at that value times its scale (`bins`
reads it as Delta). The width of an MX / NVFP4 tensor must be a multiple of its block (compressed-tensors
and llama.cpp refuse other widths too).
"""

from __future__ import annotations

import torch

from ..errors import UserError

MANTISSA_BITS = {"bf16": 7, "fp16": 10}
SMALLEST_EXPONENT = {"bf16": -126, "fp16": -14}  # of the normal numbers; below, the spacing is constant


def float_spacing(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The distance between neighbouring values of the 16-bit format at x (its 'quantization step')."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=1e-38))).clamp(min=SMALLEST_EXPONENT[kind])
    return torch.exp2(exponent - MANTISSA_BITS[kind])

E4M3_MAX = 448.0
E2M1_MAX = 6.0
BLOCKS = {"mxfp4": 32, "nvfp4": 16}
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # llmcompressor's FUSED_LAYER_NAMES
NVFP4_ZERO_SCALE = 0.125  # compressed-tensors replaces a zero E4M3 block scale by the format's eps


def e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest E4M3 value (torch.float8_e4m3fn, ties to even), saturating at +-448."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def e4m3_spacing(c: torch.Tensor) -> torch.Tensor:
    """Distance between neighbouring E4M3 values at |c| (3 mantissa bits; subnormals below 2^-6)."""
    exponent = torch.floor(torch.log2(c.abs().clamp(min=2.0**-6)))
    return torch.exp2(exponent - 3)


def e2m1_even(r: torch.Tensor) -> torch.Tensor:
    """E2M1 value nearest to r, ties to even, saturating at +-6 (compressed-tensors' cast_to_fp4)."""
    a = r.abs()
    m = torch.where(a <= 0.25, 0.0, torch.where(a < 0.75, 0.5, torch.where(a <= 1.25, 1.0, torch.where(
        a < 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(a < 3.5, 3.0, torch.where(a <= 5.0, 4.0, 6.0)))))))
    return torch.copysign(m, r)


def e2m1_down(r: torch.Tensor) -> torch.Tensor:
    """E2M1 value nearest to r, ties to the smaller magnitude, saturating at +-6 (llama.cpp's
    best_index_mxfp4: the first of equal errors in the order 0, 0.5, 1, 1.5, 2, 3, 4, 6)."""
    a = r.abs()
    m = torch.where(a <= 0.25, 0.0, torch.where(a <= 0.75, 0.5, torch.where(a <= 1.25, 1.0, torch.where(
        a <= 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(a <= 3.5, 3.0, torch.where(a <= 5.0, 4.0, 6.0)))))))
    return torch.where(m == 0, 0.0, torch.copysign(m, r))  # llama.cpp stores a rounded-away value as +0


def e2m1_spacing(c: torch.Tensor) -> torch.Tensor:
    """Distance between neighbouring E2M1 magnitudes at |c|: 0.5 below 2, 1 below 4, 2 above."""
    a = c.abs()
    return torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))


def check_width(cols: int, kind: str, name: str = "a tensor") -> None:
    """MX and NVFP4 blocks run along the input dimension; a width they do not divide is refused."""
    block = BLOCKS.get(kind)
    if block and cols % block:
        raise UserError(f"{kind}: {name} has input width {cols}, not a multiple of the format's block of {block}; "
                        "compressed-tensors and llama.cpp refuse it too (use an rtn-* or gguf-* scheme)")


def fp8(x: torch.Tensor, per_tensor: bool, amax: float | None = None):
    """(codes, dequantized, step) of rows x under FP8 E4M3 with s = absmax / 448 per row (or per tensor:
    `amax` is then the whole tensor's, for a chunk of its rows)."""
    if per_tensor:
        top = torch.tensor(float(x.abs().max()) if amax is None else amax, dtype=torch.float32, device=x.device)
        scale = (top / E4M3_MAX).reshape(1, 1)
    else:
        scale = x.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.finfo(torch.float32).eps)  # compressed-tensors' eps for 0
    codes = e4m3(x / scale)
    return codes, codes * scale, e4m3_spacing(codes) * scale


def mxfp4(x: torch.Tensor):
    """(codes, dequantized, step) of rows x (width a multiple of 32) under OCP MXFP4 (module docstring)."""
    rows, cols = x.shape
    check_width(cols, "mxfp4")
    b = x.reshape(rows, cols // 32, 32)
    amax = b.abs().amax(dim=2, keepdim=True)
    exponent = torch.frexp(amax).exponent - 1  # floor(log2 amax), exact
    shared = torch.where(amax > 0, exponent - 2, -127).clamp(-127, 127)  # E8M0: 2^(e - 127), e in 0..254
    scale = torch.exp2(shared.float())
    codes = e2m1_down(b / scale)
    return codes.reshape(rows, cols), (codes * scale).reshape(rows, cols), (e2m1_spacing(codes) * scale).reshape(rows, cols)


def nvfp4_global_scale(amax: float, device=None) -> torch.Tensor:
    """compressed-tensors' generate_gparam: g = 448 * 6 / absmax in float32 (1 where that is not finite)."""
    top = torch.tensor(amax, dtype=torch.float32, device=device).clamp(min=torch.finfo(torch.float32).tiny)
    g = (E4M3_MAX * E2M1_MAX) / top
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)


def nvfp4(x: torch.Tensor, amax: float | None = None):
    """(codes, dequantized, step) of rows x under NVFP4 (module docstring); `amax` is the absmax that sets the
    global scale (the tensor's or its fused group's; default: x's own)."""
    rows, cols = x.shape
    check_width(cols, "nvfp4")
    g = nvfp4_global_scale(float(x.abs().max()) if amax is None else amax, x.device)
    b = x.reshape(rows, cols // 16, 16)
    block = b.abs().amax(dim=2) / E2M1_MAX  # calculate_qparams: max(|min|, |max|) / (range / 2)
    scale = e4m3(g * block)
    scale = torch.where(scale == 0, NVFP4_ZERO_SCALE, scale).unsqueeze(-1) / g  # then fake_quantize's scale / g
    codes = e2m1_even((b / scale).clamp(-E2M1_MAX, E2M1_MAX))
    return codes.reshape(rows, cols), (codes * scale).reshape(rows, cols), (e2m1_spacing(codes) * scale).reshape(rows, cols)


def quantize_rows(x: torch.Tensor, kind: str, amax: float | None = None):
    """(codes, dequantized, step) of rows x (float32, whole rows) under the format `kind`: e4m3 / dynamic
    (per row), e4m3-tensor, mxfp4, nvfp4; `amax`: the tensor-wide absmax for the per-tensor ones."""
    if kind in ("e4m3", "dynamic"):
        return fp8(x, per_tensor=False)
    if kind == "e4m3-tensor":
        return fp8(x, per_tensor=True, amax=amax)
    if kind == "mxfp4":
        return mxfp4(x)
    if kind == "nvfp4":
        return nvfp4(x, amax)
    raise ValueError(f"unknown float format {kind!r}")


def fused_groups(names) -> dict[str, list[str]]:
    """{weight name: the weights whose absmax sets its NVFP4 global scale} (itself, or its q/k/v or gate/up
    siblings when all of them are present, as llmcompressor's fuse_weight_observers links them)."""
    names = set(names)
    out = {}
    for name in names:
        parent, _, leaf = name.removesuffix(".weight").rpartition(".")
        group = [name]
        for fused in FUSED:
            siblings = [f"{parent}.{g}.weight" for g in fused]
            if leaf in fused and all(s in names for s in siblings):
                group = siblings
        out[name] = group
    return out


def activation_hook(module, args):
    """forward pre-hook of fp8-dynamic: each token's input cast to E4M3 with s = absmax(token) / 448
    (compressed-tensors' dynamic TOKEN strategy), in float32, returned in the input's dtype."""
    x = args[0]
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.finfo(torch.float32).eps)
    return (e4m3(xf / scale).mul_(scale).to(x.dtype), *args[1:])


@torch.no_grad()
def apply_float(model, kind: str, modules: list[tuple[str, torch.nn.Module]]) -> dict[str, str]:
    """Replace each module's weight by Q(w) under the format, in place (fp8-dynamic also hooks its input);
    widths are checked for every module before any is changed. Returns {weight name: format}."""
    weights, seen = {}, set()
    for name, mod in modules:  # a tied head shares the embedding's weight: quantize it once
        if id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            weights[f"{name}.weight"] = mod
    for name, mod in weights.items():
        check_width(mod.weight.shape[1], kind, name)
    amax = {n: float(m.weight.detach().abs().max()) for n, m in weights.items()}
    groups = fused_groups(weights) if kind == "nvfp4" else {n: [n] for n in weights}
    for name, mod in weights.items():
        top = max(amax[n] for n in groups[name])
        w = mod.weight
        w.copy_(quantize_rows(w.detach().float(), kind, top)[1].to(w.dtype))
        if kind == "dynamic":
            mod.register_forward_pre_hook(activation_hook)
    return {n: kind for n in weights}
