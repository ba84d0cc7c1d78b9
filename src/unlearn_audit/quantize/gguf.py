"""GGUF file types as a twin of llama.cpp: a model's weights quantized and dequantized exactly as
`convert_hf_to_gguf.py` + `llama-quantize` would write them (llama.cpp commit 0c1e570, vendored by
llama-cpp-python 0.3.36), tensor by tensor with the type llama-quantize gives it.

    gguf-q4_0 ... gguf-q8_0, gguf-q4_k_m, gguf-q4_k_s, gguf-q5_k_m, gguf-q6_k   (suffix -imatrix-SOURCE)

Per tensor (ggml_mix.py): the file type's default type, Q6_K (or Q8_0) for the output head and for tied
token embeddings, more bits for some attn_v / ffn_down layers (use_more_bits), and legacy fallbacks for
rows that 256 does not divide (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16); the token embedding is
quantized too (with tied embeddings it is also the head); 1-D tensors stay F32. The values come from the
numpy port of ggml-quants.c (ggml_quants.py, byte-identical to the C). Before quantizing, each weight is
rounded to the type `convert_hf_to_gguf.py --outtype auto` writes it in: bf16 and f16 checkpoints as they
are, an fp32 checkpoint to f16 (its default; `gguf_source_type` in the record).

Only Llama-style models (tensor names convert_hf_to_gguf maps for LlamaForCausalLM, which Mistral, Qwen2
and Gemma share) are supported; another model is a one-line error before any weight is read.

Cost: the numpy quantizer runs once per tensor, vectorised across blocks (one core), and the k-quants'
scale search (20-36 candidate scales per sub-block) sets it: measured 0.3-0.8 s per million weights for
Q6_K / Q5_K / Q4_K (1.1 s for Q4_K with an importance matrix), 0.01-0.02 s for Q4_0 ... Q8_0, so a
135M-parameter model takes seconds to a minute and a 7B model at Q4_K_M about an hour; an importance
matrix adds one forward pass over its calibration tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import numpy as np
import torch

from ..errors import UserError
from .ggml_mix import hf_tensor_types, hf_to_gguf_name
from .ggml_quants import BLOCK, dequantize_rows, fp16_bits_to_fp32, get_scale_min_k4, quantize_rows

LLAMA_CPP_COMMIT = "0c1e570"
FTYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_m", "q4_k_s", "q5_k_m", "q6_k")
BITS = {"q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5, "q8_0": 8, "q4_k_m": 4, "q4_k_s": 4, "q5_k_m": 5, "q6_k": 6}
IMATRIX_PARTS = ("retain", "forget")
PATTERN = re.compile(r"^gguf-([a-z0-9_]+)(?:-imatrix-(.+))?$")
LAYER = re.compile(r"\.layers\.(\d+)\.")


def parse(name: str) -> tuple[str, str | None] | None:
    """'gguf-q4_k_m' -> ('q4_k_m', None); 'gguf-q4_k_m-imatrix-retain' -> ('q4_k_m', 'retain'); the source
    may also be a llama.cpp imatrix file (.gguf or legacy .dat). None when `name` is no gguf scheme."""
    m = PATTERN.match(name)
    if not m:
        return None
    ftype, source = m.group(1), m.group(2)
    if ftype not in FTYPES:
        raise UserError(f"{name}: unknown GGUF file type '{ftype}'; choose one of "
                        + ", ".join(f"gguf-{f}" for f in FTYPES))
    if source is not None and source not in IMATRIX_PARTS:
        from pathlib import Path

        if not Path(source).is_file():
            raise UserError(f"{name}: the importance matrix must be -imatrix-retain, -imatrix-forget or an existing "
                            f"llama.cpp imatrix file; '{source}' is none of them")
    return ftype, source


# ----------------------------------------------------------------------------- which tensor gets which type


def source_type(stored) -> str:
    """The type `convert_hf_to_gguf.py --outtype auto` writes a checkpoint's 2-D weights in, from the stored
    dtype of its weights (a torch dtype or a safetensors dtype name): bf16 as it is, anything else f16 (its
    default for fp32 checkpoints); 'gguf' (a GGUF model requantized) is read as f32."""
    text = str(stored).lower().removeprefix("torch.")
    if text in ("bf16", "bfloat16"):
        return "bf16"
    return "f32" if text == "gguf" else "f16"


def check_llama_style(shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a model with a weight matrix llama.cpp's Llama converter has no GGUF name for."""
    bad = [n for n, s in shapes.items() if len(s) >= 2 and hf_to_gguf_name(n) is None]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(f"gguf schemes follow llama.cpp's converter for Llama-style models, which has no GGUF name for "
                        f"this model's weight {bad[0]}{more}; use an rtn-* scheme for it")


def types_for(shapes: dict[str, tuple[int, ...]], ftype: str, tied: bool = False, has_imatrix: bool = False,
              source: str = "f16") -> dict[str, str]:
    """{Hugging Face name: ggml type} llama-quantize writes for `ftype` ('q4_k_m', ...), from the names and
    shapes of a Llama-style model's parameters (a tied head stored twice counts once, as the converter skips
    it); names without a GGUF name (1-D biases) stay 'f32'."""
    check_llama_style(shapes)
    if tied:
        shapes = {n: s for n, s in shapes.items() if n != "lm_head.weight"}
    layers = {int(m.group(1)) for n in shapes if (m := LAYER.search(n))}
    types = hf_tensor_types(shapes, ftype, len(layers), has_imatrix=has_imatrix, source_type=source)
    return {n: types.get(n, "f32") for n in shapes}


def planned(scheme, shapes: dict[str, tuple[int, ...]], tied: bool, stored) -> dict:
    """{name: the scheme resolved for that tensor (its `qtype`, `source`)} for the tensors llama-quantize
    changes (every one but those it keeps in F32)."""
    src = source_type(stored)
    types = types_for(shapes, scheme.kind, tied, scheme.imatrix is not None, src)
    return {n: replace(scheme, qtype=t, source=src) for n, t in types.items() if t != "f32"}


def applied_label(name: str, types: dict[str, str]) -> str:
    """What a gguf scheme applied, for tables: 'gguf-q4_k_m (applied: q5_0 x8, q8_0 x4, q6_k x2)' (tensors per
    type, most first; tensors kept in F32 are not counted)."""
    counts = Counter(t for t in types.values() if t != "f32")
    parts = ", ".join(f"{t} x{c}" for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{name} (applied: {parts})"


# ----------------------------------------------------------------------------- the values


def round_to_source(x: torch.Tensor, source: str | None) -> torch.Tensor:
    """The weights as the converted GGUF holds them (float32 out)."""
    if source == "f16":
        return x.half().float()
    return x.bfloat16().float() if source == "bf16" else x


def block_steps(blocks: np.ndarray, qtype: str, rows: int, cols: int) -> np.ndarray:
    """The step d (times the sub-block scale for k-quants) of every value of GGUF blocks, (rows, cols)."""
    size, nbytes = BLOCK[qtype]
    b = np.ascontiguousarray(blocks).reshape(-1, nbytes)

    def fp16_at(offset: int) -> np.ndarray:
        return fp16_bits_to_fp32(np.ascontiguousarray(b[:, offset:offset + 2]).view("<u2"))  # (nb, 1)

    if qtype == "q6_k":
        step = fp16_at(208) * b[:, 192:208].view(np.int8).astype(np.float32)  # 16 sub-blocks of 16
    elif qtype in ("q4_k", "q5_k"):
        step = fp16_at(0) * get_scale_min_k4(b[:, 4:16])[0].astype(np.float32)  # 8 sub-blocks of 32
    else:
        step = fp16_at(0)  # legacy: one d per block of 32 (negative for q4_0 / q5_0: d = max / -8)
    per = size // step.shape[1]
    return np.abs(np.repeat(step, per, axis=1)).reshape(rows, cols).astype(np.float32)


def quantize(x: torch.Tensor, qtype: str, source: str | None = None, imatrix: np.ndarray | None = None):
    """(dequantized, step) of rows x (float32) as llama-quantize writes them in `qtype` (or F16 / F32),
    after rounding to the converted file's `source` type; `imatrix`: per-column importance or None."""
    x = round_to_source(x.detach().float().cpu(), source)
    if qtype in ("f16", "bf16", "f32"):
        from .floats import float_spacing

        deq = round_to_source(x, qtype)
        return deq, float_spacing(deq, "fp16" if qtype == "f16" else "bf16")
    rows, cols = x.shape
    blocks = quantize_rows(x.numpy(), qtype, imatrix)
    deq = torch.from_numpy(dequantize_rows(blocks, qtype, cols))
    return deq, torch.from_numpy(block_steps(blocks, qtype, rows, cols))


@torch.no_grad()
def apply_gguf(model, scheme, stored, imatrix: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """Replace every weight of a loaded model by what the GGUF file holds, in place; returns {name: type}
    (the tied head is the embedding's parameter, so it follows it)."""
    params = dict(model.named_parameters())  # a tied head appears once, under the embedding's name
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    plan = planned(scheme, shapes, False, stored)
    for name, s in plan.items():
        p = params[name]
        deq = quantize(p, s.qtype, s.source, (imatrix or {}).get(name))[0]
        p.copy_(deq.reshape(p.shape).to(p.dtype))
    return {n: plan[n].qtype if n in plan else "f32" for n in shapes}


def meta_shapes(config) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of the model a config describes, without any weight (meta device)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"gguf schemes need a causal LM transformers builds from its config ({str(exc).splitlines()[0]}); "
                        "use an rtn-* scheme for this model") from None
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def types_of_model(spec, scheme_name: str, load=None) -> dict[str, str]:
    """{name: type} a gguf scheme gives the model at `spec`, read from its config alone (for labels)."""
    from ..models.loading import model_config

    parsed = parse(scheme_name)
    if parsed is None:
        raise UserError(f"{scheme_name} is not a gguf-* scheme")
    ftype, source = parsed
    config = model_config(spec, load)
    if config is None:
        raise UserError(f"{spec}: a .gguf file is already a GGUF model; gguf schemes quantize model folders")
    return types_for(meta_shapes(config), ftype, bool(getattr(config, "tie_word_embeddings", False)),
                     source is not None)


def check_model(spec, load=None) -> None:
    """Refuse a model the gguf schemes cannot follow, from its config alone (before any weight is read)."""
    from ..models.loading import model_config

    config = model_config(spec, load)
    if config is not None:
        check_llama_style(meta_shapes(config))
