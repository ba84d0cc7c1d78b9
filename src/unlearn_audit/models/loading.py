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
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .adapters import is_adapter, merge_into, merge_precision, read_adapter
from .gguf import is_gguf, load_gguf_model, load_gguf_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FULL_HASH_LIMIT = 512 * 2**20  # hash every byte of models smaller than this; fingerprint larger ones


@dataclass(frozen=True)
class LoadOptions:
    """How models are loaded; mirrors the CLI flags --allow-pickle, --trust-remote-code, --allow-nonfinite,
    --tokenizer (for checkpoints shipped without one: MUSE's muse-bench models use Llama-2-7b's) and
    --revision (a hub commit, branch or tag, pinned for every hub id and recorded in the outputs);
    --adapter-base and --merge-dtype for LoRA adapter folders (models/adapters.py)."""

    allow_pickle: bool = False
    trust_remote_code: bool = False
    allow_nonfinite: bool = False
    tokenizer: str | None = None
    revision: str | None = None
    adapter_base: str | None = None
    merge_dtype: str = "auto"

    def hub_kwargs(self, spec) -> dict:
        return {"revision": self.revision} if self.revision and not is_local(spec) else {}


def is_local(spec: str | Path) -> bool:
    """True when `spec` names an existing path, or can only be a path (absolute, relative with ./ or ../,
    home-relative, or more than one '/'): hub ids are 'name' or 'owner/name'."""
    text = str(spec)
    if Path(text).exists():
        return True
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or text.endswith("/")


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


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is unreadable or whose data is cut short (a partial
    download or copy), before any library reads it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise ValueError("no readable header")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        raise UserError(f"{path} is not a readable safetensors file (corrupt or not safetensors); "
                        "re-save or re-download it") from None
    if 8 + n + end > size:
        raise UserError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}; "
                        "re-save or re-download it")


def weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle files) of a local model folder."""
    safe = sorted(folder.glob("*.safetensors"))
    pickled = sorted(list(folder.glob("pytorch_model*.bin")) + list(folder.glob("*.pt")))
    return safe, pickled


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


def resolve_spec(spec: str | Path) -> str | Path:
    """A packaged model (`package:smollm2`) becomes its converted cache folder; other specs stay."""
    from .packaged import is_packaged, resolve_packaged

    return resolve_packaged(spec) if is_packaged(spec) else spec


def load_model(
    spec: str | Path,
    dtype: str | torch.dtype | None = "fp32",
    opts: LoadOptions | None = None,
    device: str | torch.device | None = None,
    **kwargs,
):
    """Load a causal LM for evaluation or training, safely (see module docstring)."""
    from transformers import AutoModelForCausalLM

    opts = opts or LoadOptions()
    spec = resolve_spec(spec)
    if is_adapter(spec) and kwargs:  # loaders that quantize inside from_pretrained (bitsandbytes) need a folder
        folder = merged_folder(spec, opts)
        model = load_model(folder, dtype, opts, device, **kwargs)
        model.merged_adapter = json.loads((folder / MERGE_RECORD).read_text())
        return model
    if is_adapter(spec):
        return load_merged_adapter(spec, dtype, opts, device)
    if is_gguf(spec):
        model = load_gguf_model(spec, resolve_dtype(dtype), **kwargs)
        if device is not None:
            model.to(device)
        return model.eval()
    if is_local(spec):
        check_local_model(Path(spec), opts)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(spec),
            dtype=resolve_dtype(dtype),
            use_safetensors=None if opts.allow_pickle else True,
            trust_remote_code=opts.trust_remote_code,
            **opts.hub_kwargs(spec),
            **kwargs,
        )
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model '{spec}': {first_line(exc)}") from None
    if not opts.allow_nonfinite:
        check_finite(model, spec)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_merged_adapter(spec, dtype, opts: LoadOptions, device):
    """An adapter folder: its base (loaded as stored), the adapter merged at the merge precision, then run
    in `dtype` ('auto': the merge precision). The record is `model.merged_adapter`."""
    adapter = read_adapter(spec, opts.adapter_base)
    model = load_model(adapter.base, "auto", opts)
    precision = merge_precision(adapter, opts.merge_dtype, next(model.parameters()).dtype)
    record = merge_into(model, adapter, precision)
    if resolve_dtype(dtype) != "auto":
        model.to(resolve_dtype(dtype))
    if device is not None:
        model.to(device)
    model.merged_adapter = record
    return model.eval()


MERGE_RECORD = "merged_adapter.json"


def merged_folder(spec, opts: LoadOptions) -> Path:
    """A saved copy of an adapter merged at its merge precision, cached by the adapter's fingerprint (with
    its base's) and the requested merge precision."""
    from ..utils.io import atomic_dir, atomic_write_json
    from ..utils.paths import cache_dir

    key = hashlib.sha256(f"{model_fingerprint(spec)}|{opts.adapter_base}|{opts.merge_dtype}".encode()).hexdigest()[:20]
    out = cache_dir() / "merged" / key
    if not (out / MERGE_RECORD).is_file():
        model = load_merged_adapter(spec, "auto", opts, None)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(spec, opts).save_pretrained(tmp)
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


def load_tokenizer(spec: str | Path, opts: LoadOptions | None = None):
    """Load a model's tokenizer (or `opts.tokenizer`, checked against the model's vocabulary) and make sure
    it can pad (unk, else eos, becomes the pad token, with a warning)."""
    from transformers import AutoTokenizer

    opts = opts or LoadOptions()
    spec = resolve_spec(spec)
    if opts.tokenizer:
        tok = given_tokenizer(opts)
        check_tokenizer_fits(tok, spec, opts)
        return tok
    if is_gguf(spec):
        tok = load_gguf_tokenizer(spec)
        ensure_pad_token(tok)
        return tok
    if is_adapter(spec):  # our adapter folders carry the tokenizer; others use the base's
        own = any((Path(spec) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if not own:
            return load_tokenizer(read_adapter(spec, opts.adapter_base).base, opts)
        tok = AutoTokenizer.from_pretrained(str(spec))
        ensure_pad_token(tok)
        return tok
    if is_local(spec):  # tokenizers are read from model folders: say what is wrong with the folder first
        check_local_model(Path(spec), opts)
    try:
        tok = AutoTokenizer.from_pretrained(str(spec), trust_remote_code=opts.trust_remote_code, **opts.hub_kwargs(spec))
    except (OSError, ValueError) as exc:
        hint = " (a checkpoint shipped without one: pass --tokenizer)" if is_local(spec) else ""
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


def model_config(spec: str | Path, opts: LoadOptions | None = None):
    """The model's config, read without loading any weights (None for a .gguf file)."""
    from transformers import AutoConfig

    opts = opts or LoadOptions()
    spec = resolve_spec(spec)
    if is_gguf(spec):
        return None
    if is_adapter(spec):
        return model_config(read_adapter(spec, opts.adapter_base).base, opts)
    try:
        return AutoConfig.from_pretrained(str(spec), trust_remote_code=opts.trust_remote_code, **opts.hub_kwargs(spec))
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read the config of '{spec}': {first_line(exc)}") from None


def model_vocab_size(spec: str | Path, opts: LoadOptions) -> int | None:
    """The model's vocab_size from its config."""
    config = model_config(spec, opts)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    return vocab if isinstance(vocab, int) else None


def check_tokenizer_fits(tok, spec: str | Path, opts: LoadOptions) -> None:
    """A tokenizer given for a model must not produce ids the model has no embedding for."""
    vocab = model_vocab_size(spec, opts)
    largest = max(tok.get_vocab().values(), default=-1)
    if vocab is not None and largest >= vocab:
        raise UserError(f"--tokenizer {opts.tokenizer} has token id {largest} but '{spec}' has vocab_size {vocab}: "
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


def model_fingerprint(spec: str | Path, revision: str | None = None) -> str:
    """Content hash of a local model (config + weights); hub ids hash their name and requested revision."""
    path = Path(resolve_spec(spec))
    if not path.exists():
        return hashlib.sha256((f"hub:{spec}" + (f"@{revision}" if revision else "")).encode()).hexdigest()
    h = hashlib.sha256()
    if is_adapter(path):  # the adapter's files and its base's fingerprint (as named in its config)
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


def describe_dtypes(model) -> dict[str, int]:
    """How many parameters the model holds in each dtype (for provenance)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def first_line(exc: BaseException) -> str:
    """The first line of an exception message, so the CLI can print one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_model_json(folder: str | Path, name: str) -> dict | None:
    """Read a provenance JSON (training.json, train.json, unlearn.json...) from a local model folder, if present."""
    p = Path(folder) / name
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
