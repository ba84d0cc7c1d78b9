"""Safe loading of causal LMs and tokenizers from a local folder or a hub id.

Rules (the project's non-negotiables): safetensors weights are preferred and pickle weights
(`pytorch_model.bin`) are refused unless the user passes `--allow-pickle`; `trust_remote_code` is only
ever set by an explicit flag; every failure a user can cause becomes a one-line `UserError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import torch

from ..errors import UserError
from .adapters import merge_into, merge_precision
from .files import check_safetensors, first_line, is_local, weight_files
from .gguf import load_gguf_model, load_gguf_tokenizer
from .packaged import check_packaged, converted_folder
from .spec import Kind, LoadOptions, ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL_HASH_LIMIT = 512 * 2**20  # hash every byte of models smaller than this; fingerprint larger ones


def check_vocab(folder: Path) -> None:
    """A tokenizer that can produce ids the model has no embedding for is the wrong tokenizer."""
    try:
        config = json.loads((folder / "config.json").read_text())
        tok_file = folder / "tokenizer.json"
        largest = largest_token_id(str(tok_file), tok_file.stat().st_mtime_ns) if tok_file.is_file() else None
    except (OSError, ValueError):
        raise UserError(f"{folder}: config.json or tokenizer.json is not valid JSON") from None
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if largest is not None and isinstance(vocab, int) and largest >= vocab:
        raise UserError(f"{folder}: the tokenizer has token id {largest} but the model's vocab_size is {vocab}; "
                        "the tokenizer belongs to another model")


@functools.lru_cache(maxsize=16)
def largest_token_id(path: str, mtime_ns: int) -> int:
    """The largest id a tokenizer.json can produce (parsed once per file version: a command loads the
    same folder several times, and large tokenizers take a moment to parse)."""
    tok = json.loads(Path(path).read_text())
    pieces = (tok.get("model") or {}).get("vocab")
    if isinstance(pieces, dict):  # BPE / WordPiece: piece -> id
        ids = list(pieces.values())
    else:  # Unigram: a list of [piece, score], ids are positions
        ids = [len(pieces) - 1] if isinstance(pieces, list) else []
    ids += [t.get("id", -1) for t in tok.get("added_tokens", [])]
    return max((i for i in ids if isinstance(i, int)), default=-1)


def check_local_model(folder: Path, opts: LoadOptions) -> None:
    """Refuse folders that are not loadable models, with a sentence saying why."""
    if not folder.exists():
        raise UserError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"model path {folder} is not a folder (pass a save_pretrained folder or a hub id)")
    if not (folder / "config.json").is_file():
        raise UserError(f"model folder {folder} has no config.json; is it a save_pretrained folder?")
    safe, pickled = weight_files(folder)
    if not safe and not pickled:
        raise UserError(f"model folder {folder} holds no weights (*.safetensors)")
    for f in safe:
        check_safetensors(f)
    check_vocab(folder)
    if not safe and not opts.allow_pickle:
        raise UserError(
            f"model folder {folder} only has pickle weights ({pickled[0].name}); loading pickle can run code. "
            "Convert to safetensors, or pass --allow-pickle if you trust the source"
        )


LOAD_DTYPES = (*DTYPES, "auto")  # what --dtype accepts wherever a model is loaded


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | str:
    """Map fp32/bf16/fp16/auto to what `from_pretrained` expects."""
    if name is None or name == "auto":
        return "auto"
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)} or auto")
    return DTYPES[name]


def resolve(model: str | Path | ModelSpec, opts: LoadOptions | None = None) -> ModelSpec:
    """The model argument classified (`ModelSpec.of`); a packaged model becomes its converted cache folder
    (converted on first use, atomically)."""
    spec = ModelSpec.of(model, opts)
    if spec.kind is not Kind.PACKAGE:
        return spec
    gguf = check_packaged(spec.name)
    folder = converted_folder(spec.name)
    if not (folder / "config.json").is_file():
        convert_gguf(gguf, folder, "fp32")
    return spec.with_name(folder)


def load_model(
    model: str | Path | ModelSpec,
    dtype: str | torch.dtype | None = "fp32",
    opts: LoadOptions | None = None,
    device: str | torch.device | None = None,
    **kwargs,
):
    """Load a causal LM for evaluation or training, safely (see module docstring)."""
    from transformers import AutoModelForCausalLM

    spec = resolve(model, opts)
    if spec.kind is Kind.ADAPTER and kwargs:  # loaders that quantize inside from_pretrained (bitsandbytes) need a folder
        folder = merged_folder(spec)
        loaded = load_model(spec.with_name(folder), dtype, None, device, **kwargs)
        loaded.merged_adapter = json.loads((folder / MERGE_RECORD).read_text())
        return loaded
    if spec.kind is Kind.ADAPTER:
        return load_merged_adapter(spec, dtype, device)
    if spec.kind is Kind.GGUF:
        loaded = load_gguf_model(spec.name, resolve_dtype(dtype), **kwargs)
        if device is not None:
            loaded.to(device)
        return loaded.eval()
    if spec.kind is Kind.FOLDER:
        check_local_model(spec.path, spec.opts)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            spec.name,
            dtype=resolve_dtype(dtype),
            use_safetensors=None if spec.opts.allow_pickle else True,
            trust_remote_code=spec.opts.trust_remote_code,
            **spec.hub_kwargs(),
            **kwargs,
        )
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model '{spec}': {first_line(exc)}") from None
    if not spec.opts.allow_nonfinite:
        check_finite(loaded, spec)
    if device is not None:
        loaded.to(device)
    loaded.eval()
    return loaded


def load_merged_adapter(spec: ModelSpec, dtype, device):
    """An adapter folder: its base (loaded as stored), the adapter merged at the merge precision, then run
    in `dtype` ('auto': the merge precision). The record is `model.merged_adapter`."""
    adapter = spec.adapter()
    model = load_model(spec.with_name(adapter.base), "auto")
    precision = merge_precision(adapter, spec.opts.merge_dtype, next(model.parameters()).dtype)
    record = merge_into(model, adapter, precision)
    if resolve_dtype(dtype) != "auto":
        model.to(resolve_dtype(dtype))
    if device is not None:
        model.to(device)
    model.merged_adapter = record
    return model.eval()


MERGE_RECORD = "merged_adapter.json"


def merged_folder(spec: ModelSpec) -> Path:
    """A saved copy of an adapter merged at its merge precision, cached by the adapter's fingerprint (with
    its base's) and the requested merge precision."""
    from ..utils.io import atomic_dir, atomic_write_json
    from ..utils.paths import cache_dir

    opts = spec.opts
    key = hashlib.sha256(f"{model_fingerprint(spec)}|{opts.adapter_base}|{opts.merge_dtype}".encode()).hexdigest()[:20]
    out = cache_dir() / "merged" / key
    if not (out / MERGE_RECORD).is_file():
        model = load_merged_adapter(spec, "auto", None)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(spec).save_pretrained(tmp)
            atomic_write_json(tmp / MERGE_RECORD, model.merged_adapter)
    return out


def merged_adapter(model) -> dict | None:
    """What adapter was merged into a loaded model, and in which precision (None: a plain model)."""
    return getattr(model, "merged_adapter", None)


def check_finite(model, spec) -> None:
    """Refuse weights holding NaN or inf (a diverged run saved anyway, a corrupt file): every metric of such a
    model is meaningless, however normal its numbers look. One pass over the weights."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"model '{spec}': weight {name} holds {bad} NaN/inf value(s); it cannot be evaluated "
                            "(pass --allow-nonfinite to load it anyway)")


def load_tokenizer(model: str | Path | ModelSpec, opts: LoadOptions | None = None):
    """Load a model's tokenizer (or `opts.tokenizer`, checked against the model's vocabulary) and make sure
    it can pad (unk, else eos, becomes the pad token, with a warning)."""
    from transformers import AutoTokenizer

    spec = resolve(model, opts)
    if spec.opts.tokenizer:
        tok = given_tokenizer(spec.opts)
        check_tokenizer_fits(tok, spec)
        return tok
    if spec.kind is Kind.GGUF:
        tok = load_gguf_tokenizer(spec.name)
        ensure_pad_token(tok)
        return tok
    if spec.kind is Kind.ADAPTER:  # our adapter folders carry the tokenizer; others use the base's
        own = any((spec.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if not own:
            return load_tokenizer(spec.base())
        tok = AutoTokenizer.from_pretrained(spec.name)
        ensure_pad_token(tok)
        return tok
    if spec.kind is Kind.FOLDER:  # tokenizers are read from model folders: say what is wrong with the folder first
        check_local_model(spec.path, spec.opts)
    try:
        tok = AutoTokenizer.from_pretrained(spec.name, trust_remote_code=spec.opts.trust_remote_code,
                                            **spec.hub_kwargs())
    except (OSError, ValueError) as exc:
        hint = " (a checkpoint shipped without one: pass --tokenizer)" if spec.local else ""
        raise UserError(f"could not load the tokenizer of '{spec}': {first_line(exc)}{hint}") from None
    ensure_pad_token(tok)
    return tok


def given_tokenizer(opts: LoadOptions):
    """The tokenizer named by --tokenizer: a folder holding tokenizer files, or a hub id."""
    from transformers import AutoTokenizer

    name = opts.tokenizer
    if is_local(name) and not Path(name).is_dir():
        raise UserError(f"--tokenizer {name}: no such folder")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=opts.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load --tokenizer {name}: {first_line(exc)}") from None
    ensure_pad_token(tok)
    return tok


def model_config(model: str | Path | ModelSpec, opts: LoadOptions | None = None):
    """The model's config, read without loading any weights (None for a .gguf file)."""
    from transformers import AutoConfig

    spec = resolve(model, opts)
    if spec.kind is Kind.GGUF:
        return None
    if spec.kind is Kind.ADAPTER:
        return model_config(spec.base())
    try:
        return AutoConfig.from_pretrained(spec.name, trust_remote_code=spec.opts.trust_remote_code, **spec.hub_kwargs())
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read the config of '{spec}': {first_line(exc)}") from None


def model_vocab_size(spec: ModelSpec) -> int | None:
    """The model's vocab_size from its config."""
    config = model_config(spec)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    return vocab if isinstance(vocab, int) else None


def check_tokenizer_fits(tok, spec: ModelSpec) -> None:
    """A tokenizer given for a model must not produce ids the model has no embedding for."""
    vocab = model_vocab_size(spec)
    largest = max(tok.get_vocab().values(), default=-1)
    if vocab is not None and largest >= vocab:
        raise UserError(f"--tokenizer {spec.opts.tokenizer} has token id {largest} but '{spec}' has vocab_size {vocab}: "
                        "it is another model's tokenizer")


def ensure_pad_token(tok) -> None:
    """Batched generation needs a pad token; reuse unk or eos as real Llama setups do."""
    if tok.pad_token is not None:
        return
    fallback = tok.unk_token or tok.eos_token
    if fallback is None:
        raise UserError("the tokenizer has no pad, unk or eos token; add a pad token to it before evaluating")
    log.warning("tokenizer has no pad token; using %r for padding", fallback)
    tok.pad_token = fallback


def model_fingerprint(model: str | Path | ModelSpec, revision: str | None = None) -> str:
    """Content hash of a local model (config + weights); hub ids hash their name and requested revision."""
    spec = resolve(model)
    path = spec.path
    if not path.exists():
        return hashlib.sha256((f"hub:{spec}" + (f"@{revision}" if revision else "")).encode()).hexdigest()
    h = hashlib.sha256()
    if spec.kind is Kind.ADAPTER:  # the adapter's files and its base's fingerprint (as named in its config)
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        h.update(model_fingerprint(base, revision).encode() if base else b"")
    if path.is_file():  # a GGUF file
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(2**24), b""):
                h.update(block)
        return h.hexdigest()
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in {".json", ".safetensors", ".bin"})
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if p.name in {"training.json", "train.json", "unlearn.json", "quality.json", "quantization.json"}:
            continue  # provenance files do not change the model
        h.update(p.name.encode() + b"\0")
        if total <= FULL_HASH_LIMIT or p.suffix == ".json":
            h.update(p.read_bytes())
        else:  # large model: size + safetensors header (names, dtypes, shapes, offsets) + first MiB
            with open(p, "rb") as fh:
                h.update(str(p.stat().st_size).encode())
                h.update(fh.read(2**20))
    return h.hexdigest()


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "fp32", opts: LoadOptions | None = None):
    """Write a GGUF file's model and tokenizer as a safetensors folder (atomic); returns the tokenizer."""
    from ..utils.io import atomic_dir

    tok = load_tokenizer(gguf, opts)
    model = load_model(gguf, dtype, opts)
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return tok


def describe_dtypes(model) -> dict[str, int]:
    """How many parameters the model holds in each dtype (for provenance)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def read_model_json(folder: str | Path, name: str) -> dict | None:
    """Read a provenance JSON (training.json, train.json, unlearn.json...) from a local model folder, if present."""
    p = Path(folder) / name
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
