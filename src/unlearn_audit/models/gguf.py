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


def gguf_fields(path: Path) -> dict:
    """The file's metadata fields, parsed once per file version (a 262k-token vocabulary takes seconds to
    parse, and loading a tokenizer reads the fields up to four times)."""
    path = Path(path)
    stat = path.stat()
    return _gguf_fields(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _gguf_fields(path: str, mtime_ns: int, size: int) -> dict:
    from gguf import GGUFReader

    return GGUFReader(path).fields


def gguf_special_ids(path: Path) -> dict[str, int]:
    """eos/bos/pad/unk token ids recorded in the file's metadata."""
    fields = gguf_fields(path)
    out = {}
    for role, key in SPECIAL.items():
        field = fields.get(key)
        if field is not None and field.data:
            out[role] = int(field.parts[field.data[0]][0])
    return out


def load_gguf_tokenizer(spec):
    """The tokenizer of a GGUF file with its special tokens as the file's metadata names them; a
    SentencePiece-BPE vocabulary that transformers would read as Unigram is rebuilt as BPE (`spm_bpe`)."""
    from transformers import AutoTokenizer

    path = check_gguf(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"could not read the tokenizer of GGUF file {path}: {str(exc).strip().splitlines()[0]}") from None
    if needs_spm_bpe(tok, path):
        tok = spm_bpe_tokenizer(path)
    for role, token_id in gguf_special_ids(path).items():
        if 0 <= token_id < len(tok):
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(token_id))
    return tok


# ------------------------------------------------------------------------------------------- SentencePiece BPE
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # GGUF token types (gguf.TokenType)


def needs_spm_bpe(tok, path: Path) -> bool:
    """transformers (5.17) reads a GGUF SentencePiece vocabulary ("llama" tokenizer model) of the Gemma
    family as a Unigram model scored by the file's scores, but those scores are BPE merge ranks (-rank):
    Unigram then prefers many early short pieces ("▁c", "ap", "it", "al" for "▁capital"). Measured on
    Gemma-3-270M: 91 tokens and 540 nats for a 45-token paragraph the model scores at 79 nats when
    tokenized as BPE. llama.cpp reads every "llama" vocabulary as BPE with these scores as priorities."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "Unigram":
        return False
    return gguf_string(path, "tokenizer.ggml.model") == "llama"


def gguf_string(path: Path, key: str) -> str | None:
    field = gguf_fields(path).get(key)
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None and field.data else None


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece-BPE vocabulary: every split of a normal piece into two normal pieces,
    ranked by the merged piece's score (higher first), as SentencePiece's BPE merges the adjacent pair
    whose concatenation scores highest (and as transformers' SentencePieceExtractor does for .model files)."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    merges = []
    for piece, i in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def spm_bpe_tokenizer(path: Path):
    """The GGUF file's SentencePiece vocabulary as a fast BPE tokenizer: byte fallback, spaces as "▁",
    control tokens special, user-defined tokens (Gemma's whitespace runs) matched on the raw text, BOS
    prepended when the file says so."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = gguf_fields(path)

    def column(key: str, text: bool):
        field = fields[key]
        return [bytes(field.parts[i]).decode("utf-8") if text else field.parts[i].tolist()[0] for i in field.data]

    tokens, scores, types = column("tokenizer.ggml.tokens", True), column("tokenizer.ggml.scores", False), \
        column("tokenizer.ggml.token_type", False)
    ids = gguf_special_ids(path)
    unk = tokens[ids["unk"]] if "unk" in ids else None
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=spm_merges(tokens, scores, types),
                                   unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                                if ty == CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                        if ty == USER_DEFINED])
    field = fields.get("tokenizer.ggml.add_bos_token")
    if "bos" in ids and field is not None and bool(field.parts[field.data[0]][0]):
        bos = tokens[ids["bos"]]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids["bos"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend)
