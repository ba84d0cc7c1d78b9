"""GGUF files as model arguments: dequantized through transformers (which reads GGUF with the `gguf`
package), made serializable again, with the tokenizer's special tokens taken from the file's metadata.

Two repairs a user would otherwise do by hand (measured on SmolLM2-135M-Instruct Q4_1): transformers
marks a GGUF-loaded model as quantized and refuses `save_pretrained`, although its weights are plain
dequantized tensors; and the GGUF tokenizer comes out with eos '<|im_start|>' (id 1) and no pad token,
where the file says eos 2 and pad 2.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

SPECIAL = {"eos": "tokenizer.ggml.eos_token_id", "bos": "tokenizer.ggml.bos_token_id",
           "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}


def is_gguf(spec) -> bool:
    return str(spec).lower().endswith(".gguf")


def check_gguf(spec) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading .gguf files needs the 'gguf' package: pip install 'unlearn-audit[gguf]'")
    return path


@contextlib.contextmanager
def quiet_conversion() -> Iterator[None]:
    """transformers draws its GGUF conversion bar with tqdm directly (its progress-bar switch does not
    reach it): hidden unless the user asked for library output (-v)."""
    from ..utils.quiet import verbose

    try:
        import transformers.modeling_gguf_pytorch_utils as conversion
    except ImportError:
        yield
        return
    bar = getattr(conversion, "tqdm", None)
    if verbose() or bar is None:
        yield
        return
    conversion.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        conversion.tqdm = bar


def load_gguf_model(spec, dtype, **kwargs):
    """The model of a GGUF file, dequantized to `dtype`, as a plain (saveable) transformers model."""
    from transformers import AutoModelForCausalLM

    path = check_gguf(spec)
    try:
        with quiet_conversion():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"could not read GGUF file {path}: {str(exc).strip().splitlines()[0]}") from None
    model.hf_quantizer = None  # the weights are dequantized tensors; nothing GGUF-specific remains
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model


def gguf_special_ids(path: Path) -> dict[str, int]:
    """eos/bos/pad/unk token ids recorded in the file's metadata."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    out = {}
    for role, key in SPECIAL.items():
        field = fields.get(key)
        if field is not None and field.data:
            out[role] = int(field.parts[field.data[0]][0])
    return out


def load_gguf_tokenizer(spec):
    """The tokenizer of a GGUF file with its special tokens as the file's metadata names them."""
    from transformers import AutoTokenizer

    path = check_gguf(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"could not read the tokenizer of GGUF file {path}: {str(exc).strip().splitlines()[0]}") from None
    for role, token_id in gguf_special_ids(path).items():
        if 0 <= token_id < len(tok):
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(token_id))
    return tok


def convert_gguf(spec, out, dtype: str = "fp32", opts=None) -> tuple:
    """Write a GGUF file's model and tokenizer as a safetensors folder (atomic); returns the tokenizer."""
    from ..utils.io import atomic_dir
    from .loading import load_model, load_tokenizer

    tok = load_tokenizer(spec, opts)
    model = load_model(spec, dtype, opts)
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return tok
