"""Quantize a model the way deployments do: our RTN, or a library behind an optional extra.

`quantized_model(spec, scheme)` loads a model and returns it quantized, ready for evaluation:
  rtn-*   Linear weights replaced by Q(w) (quantize-dequantize; runs anywhere).
  bnb-*   loaded through transformers' BitsAndBytesConfig (real 4-bit / LLM.int8 kernels; CPU works
          with bitsandbytes >= 0.45). The paper's released code used exactly load_in_4bit (FP4) and
          load_in_8bit.
  gptq-*, awq-*  llmcompressor `oneshot`, calibrated on the corpus's retain texts (no hub data).
  hqq-*   HQQ's calibration-free quantizer.
  gguf-*  every weight replaced by what llama-quantize's file type holds (gguf.py; `gguf` package for the
          dequantizer), with an importance matrix from the corpus's retain or forget texts or a file.
  fp8-*, mxfp4, nvfp4  Linear weights replaced by their float-format quantize-dequantize (floats.py);
          fp8-dynamic also casts each Linear's input per token at run time.
Libraries are imported lazily; a missing one is a one-line error naming the extra to install. A model
quantized here carries `quantization_record` (what was applied, per tensor for gguf) for the records.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..models.loading import LoadOptions, load_model
from ..utils.io import atomic_dir, atomic_write_json
from ..utils.registry import Registry
from .rtn import fake_quantize
from .schemes import Scheme, parse_scheme

log = logging.getLogger(__name__)

EXTRAS = {"bnb": ("bitsandbytes", "bnb"), "gptq": ("llmcompressor", "gptq"), "awq": ("llmcompressor", "gptq"),
          "hqq": ("hqq", "hqq"), "gguf": ("gguf", "gguf")}


@dataclass(frozen=True)
class QuantizeOptions:
    """Which layers to quantize and how to calibrate."""

    include_embeddings: bool = False
    include_lm_head: bool = False
    calibration_samples: int = 64
    calibration_max_length: int = 512


def require(family: str):
    """Import the library a scheme family needs, or explain which extra installs it."""
    module, extra = EXTRAS[family]
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"{family} schemes need the '{module}' package: pip install 'unlearn-audit[{extra}]'") from None


def check_installed(family: str) -> None:
    """Fail early (without importing it) when the library a scheme family needs is missing."""
    import importlib.util

    if family in EXTRAS:
        module, extra = EXTRAS[family]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{family} schemes need the '{module}' package: pip install 'unlearn-audit[{extra}]'")


def target_linears(model, opts: QuantizeOptions) -> list[tuple[str, torch.nn.Module]]:
    """The modules whose weights are quantized: every nn.Linear but lm_head (unless asked), plus embeddings."""
    out = []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            if mod is head and not opts.include_lm_head:
                continue
            out.append((name, mod))
        elif isinstance(mod, torch.nn.Embedding) and opts.include_embeddings:
            out.append((name, mod))
    return out


ANNOUNCED: set = set()


def announce_once(key) -> bool:
    """True the first time a process meets `key`: a grid quantizes many models of one architecture, and
    the same note on each would bury everything else."""
    if key in ANNOUNCED:
        return False
    ANNOUNCED.add(key)
    return True


@torch.no_grad()
def apply_rtn(model, scheme: Scheme, opts: QuantizeOptions | None = None):
    """Replace each target weight by its RTN quantize-dequantize, in place; returns the model. Layers whose
    width the group size does not divide are announced (their last group gets its own scale)."""
    opts = opts or QuantizeOptions()
    if scheme.family != "rtn":
        raise UserError(f"{scheme.name} is not an RTN scheme")
    partial = partial_groups(model, scheme, opts)
    if partial and announce_once((scheme.name, tuple(partial.items()))):
        name, width = next(iter(partial.items()))
        log.warning("%s: %d layer(s) have a width that is not a multiple of %d (first: %s, %d); their last "
                    "group of %d columns gets its own scale (docs/quantization.md)", scheme.name, len(partial),
                    scheme.group_size, name, width, width % scheme.group_size)
    for _, mod in target_linears(model, opts):
        mod.weight.copy_(fake_quantize(mod.weight, scheme.rtn).to(mod.weight.dtype))
    return model


def partial_groups(model, scheme: Scheme, opts: QuantizeOptions) -> dict[str, int]:
    """{layer: input width} of the layers a group-wise scheme cannot cover with whole groups."""
    g = scheme.group_size if scheme.family != "rtn" or scheme.rtn.granularity == "group" else None
    if not g:
        return {}
    return {name: mod.weight.shape[1] for name, mod in target_linears(model, opts) if mod.weight.shape[1] % g}


@torch.no_grad()
def apply_cast(model, scheme: Scheme):
    """Round every floating-point parameter to the scheme's 16-bit format (the model keeps its dtype)."""
    from .schemes import CAST_DTYPES

    dtype = CAST_DTYPES[scheme.kind]
    for p in model.parameters():
        if p.is_floating_point():
            p.copy_(p.to(dtype).to(p.dtype))
    return model


def calibration_dataset(tokenizer, texts: list[str], opts: QuantizeOptions):
    """Tokenized calibration texts as a `datasets.Dataset` (what llmcompressor's oneshot expects)."""
    import datasets

    texts = [t for t in texts if t.strip()][: opts.calibration_samples]
    if not texts:
        raise UserError("no calibration texts: the corpus's raw/retain.json is empty")
    enc = [tokenizer(t, truncation=True, max_length=opts.calibration_max_length) for t in texts]
    return datasets.Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in enc], "attention_mask": [e["attention_mask"] for e in enc]}
    )


def llmcompressor_recipe(scheme: Scheme):
    """GPTQ or AWQ recipe for int-N weights in groups, symmetric, lm_head left in full precision."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=True, strategy="group",
                            group_size=scheme.group_size)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}
    if scheme.family == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        return GPTQModifier(config_groups=groups, ignore=["lm_head"])
    from llmcompressor.modifiers.awq import AWQModifier

    return AWQModifier(config_groups=groups, ignore=["lm_head"])


@contextlib.contextmanager
def cpu_awq_workaround():
    """llmcompressor's AWQ pins memory for an accelerator; on CPU that raises, so make it a no-op."""
    if torch.cuda.is_available():
        yield
        return
    from llmcompressor.pipelines import cache

    original = cache.IntermediatesCache.__dict__.get("pin_memory")
    if original is None:
        yield
        return
    cache.IntermediatesCache.pin_memory = staticmethod(lambda *a, **k: None) if isinstance(original, staticmethod) \
        else (lambda self, *a, **k: None)
    try:
        yield
    finally:
        cache.IntermediatesCache.pin_memory = original


def check_group_size(model, scheme: Scheme, opts: QuantizeOptions) -> None:
    """GPTQ/AWQ (llmcompressor) need every quantized layer's input width to be a multiple of the group size; say which
    layer is not (before the library fails deep inside) and what to use instead. Our RTN instead gives a
    partial last group its own scale (docs/quantization.md)."""
    bad = list(partial_groups(model, scheme, opts).items())
    if bad:
        name, width = bad[0]
        fits = [g for g in (128, 64, 32) if all(w % g == 0 for _, w in bad)]
        hint = f"use a group size that divides it (e.g. {scheme.family}-int{scheme.bits}-g{fits[0]})" if fits else (
            "use rtn-* schemes, which give a partial last group its own scale")
        raise UserError(f"{scheme.name}: {len(bad)} layer(s) have an input width that is not a multiple of "
                        f"{scheme.group_size} (first: {name}, width {width}); {hint}")


def apply_llmcompressor(model, tokenizer, scheme: Scheme, calibration_texts: list[str], opts: QuantizeOptions):
    """Run GPTQ/AWQ in place; the model then applies the quantized weights in its forward pass."""
    require(scheme.family)
    check_group_size(model, scheme, opts)
    from llmcompressor import oneshot

    dataset = calibration_dataset(tokenizer, calibration_texts, opts)
    ctx = cpu_awq_workaround() if scheme.family == "awq" else contextlib.nullcontext()
    with ctx, quiet_library_logs():
        oneshot(model=model, dataset=dataset, recipe=llmcompressor_recipe(scheme), processor=tokenizer,
                num_calibration_samples=len(dataset), max_seq_length=opts.calibration_max_length)
    return model


def apply_hqq(model, scheme: Scheme):
    """HQQ quantization in place (calibration-free)."""
    require("hqq")
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    dtype = next(model.parameters()).dtype
    device = str(next(model.parameters()).device)
    cfg = BaseQuantizeConfig(nbits=scheme.bits, group_size=scheme.group_size)
    with quiet_library_logs():
        AutoHQQHFModel.quantize_model(model, quant_config=cfg, compute_dtype=dtype, device=device)
    return model


def bnb_config(scheme: Scheme):
    """transformers' BitsAndBytesConfig for bnb-fp4 / bnb-nf4 / bnb-int8 (library defaults otherwise)."""
    require("bnb")
    from transformers import BitsAndBytesConfig

    if scheme.kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=scheme.kind,
                              bnb_4bit_compute_dtype=torch.float32)


@contextlib.contextmanager
def quiet_library_logs():
    """Hide the per-call warnings quantization libraries print (fp16 casts, missing kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("bitsandbytes", "llmcompressor", "hqq")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        loguru = silence_loguru()
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
            if loguru:
                for name in ("llmcompressor", "compressed_tensors"):
                    loguru.enable(name)


def silence_loguru():
    """llmcompressor and compressed-tensors log through loguru; mute them for the duration."""
    try:
        from loguru import logger
    except ImportError:
        return None
    for name in ("llmcompressor", "compressed_tensors"):
        logger.disable(name)
    return logger


@dataclass
class Quantization:
    """What quantizing one model took: its scheme, options and calibration, for the backend and the record."""

    scheme: Scheme
    opts: QuantizeOptions
    load: LoadOptions | None = None
    dtype: str = "fp32"
    device: str | None = None
    tokenizer: object = None
    calibration_texts: list[str] | None = None


BACKENDS: Registry[Callable] = Registry("quantization backend")  # scheme family -> fn(spec, Quantization)


def register_backend(*families: str):
    """Register the function that loads and quantizes a model for these scheme families."""
    def add(fn):
        for family in families:
            BACKENDS.add(family, fn)
        return fn
    return add


@register_backend("bnb")
def load_bnb(spec, q: Quantization):
    if q.opts.include_embeddings or q.opts.include_lm_head:
        raise UserError("bitsandbytes keeps embeddings and lm_head in full precision; drop those flags")
    with quiet_library_logs():
        return load_model(spec, None if q.dtype == "auto" else q.dtype, q.load,
                          quantization_config=bnb_config(q.scheme), device_map=q.device or "cpu")


@register_backend("rtn")
def load_rtn(spec, q: Quantization):
    return apply_rtn(load_model(spec, q.dtype, q.load, q.device), q.scheme, q.opts)


@register_backend("cast")
def load_cast(spec, q: Quantization):
    return apply_cast(load_model(spec, q.dtype, q.load, q.device), q.scheme)


@register_backend("hqq")
def load_hqq(spec, q: Quantization):
    return apply_hqq(load_model(spec, q.dtype, q.load, q.device), q.scheme)


@register_backend("gguf")
def load_gguf_twin(spec, q: Quantization):
    from . import gguf
    from .bins import stored_dtype

    require("gguf")
    gguf.check_model(spec, q.load)  # a model llama.cpp's converter does not know: refused before loading
    stored = stored_dtype(spec, q.load)
    model = load_model(spec, q.dtype, q.load, q.device)
    matrix, info = importance_matrix(model, q)
    types = gguf.apply_gguf(model, q.scheme, stored, matrix)
    model.quantization_record = {
        "scheme": q.scheme.name, "gguf_types": types, "applied": gguf.applied_label(q.scheme.name, types),
        "gguf_source_type": gguf.source_type(stored), "llama_cpp_commit": gguf.LLAMA_CPP_COMMIT,
        "imatrix": None if matrix is None else {"source": q.scheme.imatrix, **info}}
    return model


def importance_matrix(model, q: Quantization) -> tuple[dict | None, dict]:
    """The scheme's importance matrix for the loaded (unquantized) model (imatrix.importance_of)."""
    from . import imatrix

    return imatrix.importance_of(model, q.scheme.name, q.scheme.imatrix, q.tokenizer, q.calibration_texts)


@register_backend("fp8", "mxfp4", "nvfp4")
def load_float(spec, q: Quantization):
    from .floats import apply_float

    model = load_model(spec, q.dtype, q.load, q.device)
    formats = apply_float(model, q.scheme.kind, target_linears(model, q.opts))
    model.quantization_record = {"scheme": q.scheme.name, "formats": formats,
                                 "activations": "fp8 e4m3 per token, at run time" if q.scheme.kind == "dynamic" else None}
    return model


@register_backend("gptq", "awq")
def load_llmcompressor(spec, q: Quantization):
    if q.tokenizer is None or not q.calibration_texts:
        raise UserError(f"{q.scheme.name} needs calibration texts (pass a corpus with raw/retain.json)")
    model = load_model(spec, q.dtype, q.load, q.device)
    return apply_llmcompressor(model, q.tokenizer, q.scheme, q.calibration_texts, q.opts)


def quantized_model(
    spec: str | Path,
    scheme: str | Scheme,
    load: LoadOptions | None = None,
    opts: QuantizeOptions | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    tokenizer=None,
    calibration_texts: list[str] | None = None,
):
    """Load the model at `spec` and quantize it with `scheme` (its family's backend); returns a model ready
    to evaluate."""
    s = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    q = Quantization(s, opts or QuantizeOptions(), load, dtype, device, tokenizer, calibration_texts)
    return BACKENDS[s.family](spec, q)


def quantization_record(model, scheme: Scheme, opts: QuantizeOptions) -> dict:
    """What `quantize` writes to quantization.json about the layers: which were quantized and which a
    group-wise scheme could not cover with whole groups; for gguf schemes the type of every tensor
    (`gguf_types`) and the label of what was applied."""
    twin = scheme.family in ("rtn", "gguf", "fp8", "mxfp4", "nvfp4")
    gguf = scheme.family == "gguf"  # llama.cpp quantizes the embeddings and the head (or the tied embedding)
    return {"scheme": scheme.name, "family": scheme.family, "bits": scheme.bits, "group_size": scheme.group_size,
            "embeddings_quantized": gguf or opts.include_embeddings, "lm_head_quantized": gguf or opts.include_lm_head,
            "storage": "dequantized weights (quantize-dequantize)" if twin else "library format",
            "partial_last_group": partial_groups(model, scheme, opts) if scheme.family == "rtn" else {},
            **getattr(model, "quantization_record", {})}


def calibration_for(scheme: str | Scheme, corpus) -> list[str] | None:
    """Retain texts (never the forget set) for schemes that calibrate (GPTQ/AWQ); for a gguf scheme's importance
    matrix the part it names (retain or forget); None for the others. A missing part is refused here, before
    any model is loaded."""
    if scheme == "full":
        return None
    s = parse_scheme(scheme) if isinstance(scheme, str) else scheme
    part = "retain" if s.family in ("gptq", "awq") else s.imatrix if s.imatrix in ("retain", "forget") else None
    if part is None:
        return None
    if corpus is None:
        raise UserError(f"{s.name} calibrates on data: pass --calibration CORPUS (its {part} texts are used)")
    check_calibration_part(s, corpus, part)
    return corpus.raw(part)


def check_calibration_part(s: Scheme, corpus, part: str) -> None:
    """One line naming the corpus file a calibrated scheme needs when the corpus lacks it."""
    path = corpus.root / "raw" / f"{part}.json"
    if not path.is_file():
        raise UserError(f"{s.name} calibrates on the corpus's {part} texts, but {path} does not exist")


def model_at(spec: str | Path, scheme: str, load: LoadOptions | None = None, opts: QuantizeOptions | None = None,
             dtype: str = "fp32", device: str | None = None, tokenizer=None, corpus=None):
    """The model at `spec` in full precision (`scheme` 'full') or quantized with `scheme`, calibrated on
    the corpus's retain texts where the scheme needs data."""
    if scheme == "full":
        return load_model(spec, dtype, load, device)
    return quantized_model(spec, scheme, load, opts, dtype, device, tokenizer, calibration_for(scheme, corpus))


def save_quantized(model, tokenizer, scheme: Scheme, out: str | Path, record: dict) -> Path:
    """Write a quantized model atomically as an HF folder with quantization.json recording the scheme."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        if scheme.family in ("gptq", "awq"):
            model.save_pretrained(tmp, save_compressed=True)
        elif scheme.family == "hqq":
            from hqq.models.hf.base import AutoHQQHFModel

            AutoHQQHFModel.save_quantized(model, str(tmp))
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "quantization.json", record)
    return out


def quantize_to_folder(model_path, scheme: Scheme, out: str | Path, opts, qopts: QuantizeOptions, dtype: str,
                       device: str | None, tokenizer, calibration=None, calibration_source: str | None = None) -> tuple[Path, dict]:
    """`quantize`: the model at `model_path` quantized with `scheme`, written with its quantization.json
    (the scheme's layers, the source model's hash, the calibration set); returns (folder, record)."""
    import time

    from .. import __version__
    from ..models.loading import model_fingerprint

    if scheme.kind == "dynamic":
        raise UserError(f"{scheme.name} casts activations at run time, which a folder of weights cannot hold; "
                        f"evaluate it directly (eval --quantize {scheme.name}, audit quant:{scheme.name})")
    started = time.time()
    model = quantized_model(model_path, scheme, opts, qopts, dtype, device, tokenizer, calibration)
    record = {**quantization_record(model, scheme, qopts), "source_model": str(model_path),
              "source_hash": model_fingerprint(model_path), "calibration": calibration_source,
              "seconds": round(time.time() - started, 2), "unlearn_audit_version": __version__}
    return save_quantized(model, tokenizer, scheme, out, record), record
