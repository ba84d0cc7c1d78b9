"""The llama.cpp runtime (`eval --runtime llama.cpp`): a model evaluated in llama.cpp itself, through
llama-cpp-python (the `[llamacpp]` extra, a source build), instead of in torch.

    model folder  -(write_gguf)->  F32 / F16 / BF16 GGUF  -(llama_model_quantize)->  Q4_K_M ...  ->  llama.cpp

- **Conversion** (`write_gguf`): a Llama-style Hugging Face folder (LlamaForCausalLM, MistralForCausalLM) is
  written as `convert_hf_to_gguf.py` writes it (llama.cpp commit 0c1e570, `conversion/llama.py` and
  `conversion/base.py`): the same tensor names, the q/k rows permuted back to llama.cpp's rotary layout
  (`LlamaModel.permute`), a tied head not written, 1-D tensors in F32, the 2-D ones in the chosen type
  (`auto`: bf16 checkpoints as BF16, others F16, the converter's default), the hyperparameters it writes for
  Llama. The vocabulary is written as a "gpt2" (byte-level BPE) vocabulary with the tokenizer's merges; the
  runtime is always given *our tokenizer's ids* (never its own tokenization), so every text is the same
  tokens in both paths and the vocabulary only serves llama.cpp's loader.
- **Quantization**: llama.cpp's own `llama_model_quantize` (llama-quantize's type mix and block code).
- **Evaluation** (`LlamaCppModel`): a torch-shaped front for the metrics' code: `model(input_ids,
  attention_mask).logits` evaluates each row's unpadded tokens in llama.cpp (all logits), `generate` decodes
  greedily (argmax of llama.cpp's logits, the first of ties, as torch's greedy search), one row at a time.
  llama.cpp's CPU matrix products quantize the activations (Q8 dot products), so even an F32 file differs
  from torch fp32 by construction: docs/quantization.md measures that floor.
"""

from __future__ import annotations

import copy
import ctypes
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import UserError
from ..utils.quiet import VERBOSE_ENV

EXTRA = ("pip install 'unlearn-audit[llamacpp]' (builds llama-cpp-python 0.3.36 and llama.cpp from source with "
         "cmake and a C++ compiler: 9 minutes on 2 cores here; docs/quantization.md)")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
# llama.h's enum llama_ftype
FTYPE_IDS = {"f32": 0, "f16": 1, "bf16": 32, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k_s": 14,
             "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}
OUTTYPES = ("f32", "f16", "bf16", "auto")
MAX_CONTEXT = 4096  # the logits of every position are kept (context x vocabulary floats)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4


def require():
    """llama_cpp, or one line naming the extra."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--runtime llama.cpp needs llama-cpp-python: {EXTRA}") from None
    return llama_cpp


def runtime_version() -> dict:
    """What evaluated: the binding's version, llama.cpp's commit and the CPU features it was built with."""
    llama_cpp = require()
    from .gguf import LLAMA_CPP_COMMIT

    return {"llama_cpp_python": llama_cpp.__version__, "llama_cpp_commit": LLAMA_CPP_COMMIT,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


# ----------------------------------------------------------------------------- conversion


def read_config(folder: Path) -> dict:
    """config.json of a Llama-style folder; anything else is one line naming the twin as the alternative."""
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"--runtime llama.cpp: {folder} has no config.json")
    config = json.loads(path.read_text())
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in LLAMA_ARCHITECTURES:
        raise UserError(f"--runtime llama.cpp converts {' and '.join(LLAMA_ARCHITECTURES)} models; {folder} is {arch}: "
                        "evaluate it with the torch twin instead (without --runtime; the gguf-* schemes reproduce "
                        "llama.cpp's quantization)")
    rope = config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or (config.get("rope_parameters") or {}).get("rope_type")
    if rope_type not in (None, "default"):
        raise UserError(f"--runtime llama.cpp: {folder} uses {rope_type} rope scaling, which this converter does not "
                        "write; evaluate it with the torch twin (without --runtime)")
    return config


def rope_theta(config: dict) -> float:
    """The rotary base: transformers 5 keeps it in rope_parameters, older configs at the top level."""
    return float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta") or 10000.0)


def permute(w: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """convert_hf_to_gguf's LlamaModel.permute: Hugging Face's rotary halves back to llama.cpp's pairs."""
    heads = n_head_kv if n_head_kv and n_head != n_head_kv else n_head
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def source_outtype(tensors: dict[str, torch.Tensor]) -> str:
    """`--outtype auto`: BF16 when the checkpoint's weights are bf16, F16 otherwise."""
    dtypes = {t.dtype for t in tensors.values() if t.dim() == 2}
    return "bf16" if dtypes == {torch.bfloat16} else "f16"


def gguf_tensors(folder: Path, config: dict) -> dict[str, torch.Tensor]:
    """{GGUF name: tensor} as the converter writes them (tied head skipped, q/k permuted)."""
    from safetensors.torch import load_file

    from ..models.files import weight_files
    from .ggml_mix import hf_to_gguf_name

    safe, _ = weight_files(folder)
    if not safe:
        raise UserError(f"--runtime llama.cpp: {folder} has no .safetensors weights")
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    out = {}
    for file in safe:
        for name, t in load_file(str(file)).items():
            if name == "lm_head.weight" and config.get("tie_word_embeddings"):
                continue
            gname = hf_to_gguf_name(name)
            if gname is None:
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                raise UserError(f"--runtime llama.cpp: no GGUF name for {name}; evaluate with the torch twin instead")
            if name.endswith("q_proj.weight"):
                t = permute(t, n_head, n_head)
            elif name.endswith("k_proj.weight"):
                t = permute(t, n_head, n_kv)
            out[gname] = t
    return out


def vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as the converter's gpt2 vocabulary: one token per id up to the model's
    vocab_size ("[PADi]" where the tokenizer has none), special tokens CONTROL, other added ones USER_DEFINED."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: a for i, a in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_USER_DEFINED)
            continue
        tokens.append(by_id[i])
        types.append(TOKEN_NORMAL if i not in added else TOKEN_CONTROL if added[i].special else TOKEN_USER_DEFINED)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(folder: str | Path, out: str | Path, outtype: str = "auto", ftype: str | None = None,
               imatrix: dict[str, np.ndarray] | None = None, imatrix_info: dict | None = None) -> dict:
    """Write the Llama-style model `folder` as a GGUF file `out`: unquantized in `outtype`, or, with `ftype`
    ('q4_k_m', 'q8_0', ...), what `convert_hf_to_gguf.py --outtype auto` + `llama-quantize` write, without
    llama.cpp: each tensor's type from ggml_mix.py, its blocks from the byte-exact port ggml_quants.py.
    `imatrix` ({Hugging Face weight name: per-column importance}) is what `llama-quantize --imatrix` reads:
    the type mix's imatrix rules, the weighted block search, and the `quantize.imatrix.*` keys it writes
    (`imatrix_info`: `file` or `dataset`, `chunks`). Returns what was written (`types`: {GGUF name: type})."""
    import gguf

    from ..models.loading import load_tokenizer
    from .ggml_mix import FTYPES, hf_to_gguf_name, tensor_types

    folder, out = Path(folder), Path(out)
    if outtype not in OUTTYPES:
        raise UserError(f"GGUF outtype must be one of {', '.join(OUTTYPES)}")
    if ftype is not None and ftype not in FTYPES:
        raise UserError(f"unknown GGUF file type {ftype}; choose one of {', '.join(FTYPES)}")
    config = read_config(folder)
    tensors = gguf_tensors(folder, config)
    kind = source_outtype(tensors) if outtype == "auto" or ftype is not None else outtype
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    if imatrix is not None and ftype is None:
        raise UserError("an importance matrix applies to a quantized file type (ftype)")
    qtypes = ({n: ("f32" if t.dim() < 2 else kind) for n, t in tensors.items()} if ftype is None else
              tensor_types(shapes, ftype, config["num_hidden_layers"], has_imatrix=imatrix is not None,
                           source_type=kind))
    importance = {hf_to_gguf_name(n): v for n, v in (imatrix or {}).items()}
    tok = load_tokenizer(folder)
    tokens, types, merges = vocabulary(tok, config["vocab_size"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(folder.name)
    w.add_file_type(FTYPE_IDS[ftype or kind])
    if ftype is not None:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if imatrix is not None:  # the keys llama-quantize adds with an imatrix (tools/quantize; integers as uint32)
        info = imatrix_info or {}
        for key in ("file", "dataset"):
            if info.get(key):
                w.add_string(f"quantize.imatrix.{key}", str(info[key]))
        w.add_uint32("quantize.imatrix.entries_count", len(importance))
        if info.get("chunks"):
            w.add_uint32("quantize.imatrix.chunks_count", int(info["chunks"]))
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    w.add_rope_freq_base(rope_theta(config))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if config.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(config["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")  # never used: the runtime is given our tokenizer's ids
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, value in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("pad", tok.pad_token_id)):
        if value is not None:
            getattr(w, f"add_{key}_token_id")(value)
    try:
        for name, t in tensors.items():
            array, kwargs = encoded(t, qtypes[name], kind, importance.get(name))
            w.add_tensor(name, array, **kwargs)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written stays behind
    return {"gguf": str(out), "outtype": kind, "ftype": ftype, "tensors": len(tensors), "types": qtypes}


def encoded(t: torch.Tensor, qtype: str, source: str = "f32", imatrix: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(array, GGUFWriter keyword arguments) for one tensor in ggml type `qtype` ('f32', 'f16', 'bf16' or a
    quantized type, whose blocks are computed from the weights rounded to the converted file's `source`
    type, as llama-quantize reads them, weighted by the tensor's importance matrix where given)."""
    import gguf

    from .ggml_quants import quantize_rows
    from .gguf import round_to_source

    x = t.float().contiguous()
    if qtype == "f32":
        return x.numpy(), {}
    if qtype == "f16":
        return x.numpy().astype(np.float16), {}
    if qtype == "bf16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), {"raw_dtype": gguf.GGMLQuantizationType.BF16}
    blocks = quantize_rows(round_to_source(x, source).numpy(), qtype, imatrix)
    return blocks.reshape(x.shape[0], -1), {"raw_dtype": gguf.GGMLQuantizationType[qtype.upper()]}


def quantize_gguf(src: str | Path, out: str | Path, ftype: str, threads: int | None = None) -> dict:
    """llama.cpp's own quantization of the GGUF `src` into `out` (`ftype`: 'q4_k_m', 'q8_0', ...)."""
    llama_cpp = require()
    out = Path(out)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE_IDS[ftype]
    params.nthread = threads or torch.get_num_threads()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with quiet_llama_cpp():
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0
    if failed:
        tmp.unlink(missing_ok=True)
        raise UserError(f"llama.cpp could not quantize {src} to {ftype}")
    os.replace(tmp, out)
    return {"gguf": str(out), "ftype": ftype, "types": file_types(out)}


@contextmanager
def quiet_llama_cpp() -> Iterator[None]:
    """llama.cpp's C log silent unless -v (its quantize warns once per tensor that falls back). The binding's
    callback maps ggml's log levels one step off (a warning reads as ERROR), so only CRITICAL silences it."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    if not os.environ.get(VERBOSE_ENV):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def file_types(path: str | Path) -> dict[str, str]:
    """{GGUF tensor name: its ggml type}, read from the file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name.lower() for t in reader.tensors}


# ----------------------------------------------------------------------------- evaluation


class LlamaCppModel(torch.nn.Module):
    """A GGUF file run by llama.cpp, behind the two calls the metrics make of a causal LM (module docstring).
    Shared KV caches and packed rows are refused (NotImplementedError), so the callers score each row alone."""

    def __init__(self, gguf_path: str | Path, config, generation_config, threads: int | None = None):
        super().__init__()
        from llama_cpp import Llama

        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # device for the callers
        context = min(int(getattr(config, "max_position_embeddings", 0) or MAX_CONTEXT), MAX_CONTEXT)
        self.config = copy.deepcopy(config)
        self.config.max_position_embeddings = context
        self.config._attn_implementation = "llama.cpp"  # no packed rows, no grouped-KV SDPA swap
        self.generation_config = generation_config
        threads = threads or torch.get_num_threads()
        self.llm = Llama(model_path=str(gguf_path), n_ctx=context, n_batch=min(context, 512), n_ubatch=min(context, 512),
                         n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False, seed=0)

    def row_logits(self, tokens: list[int]) -> np.ndarray:
        """llama.cpp's logits at every position of one sequence, evaluated from an empty cache."""
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, past_key_values=None, **kwargs):
        if use_cache or position_ids is not None or past_key_values is not None:
            raise NotImplementedError("the llama.cpp runtime scores each row alone (no shared caches or packed rows)")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        logits = torch.zeros(*input_ids.shape, self.llm.n_vocab(), dtype=torch.float32)
        for r in range(input_ids.shape[0]):
            where = mask[r].nonzero().flatten()
            logits[r, where] = torch.from_numpy(self.row_logits(input_ids[r, where].tolist()))
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask=None, stopping_criteria=None, max_new_tokens: int = 20,
                 eos_token_id=None, pad_token_id=None, past_key_values=None, **kwargs):
        """Greedy continuations, each row alone; rows are returned [prompt | new tokens | padding] as
        transformers returns them (a row stops at EOS, after max_new_tokens, or at a stop string)."""
        if past_key_values is not None:
            raise NotImplementedError("the llama.cpp runtime encodes each prompt alone")
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
        stops = [c for c in (stopping_criteria or []) if hasattr(c, "stops")]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        rows = [self.greedy(input_ids[r, mask[r].nonzero().flatten()].tolist(), max_new_tokens, eos, stops)
                for r in range(input_ids.shape[0])]
        width = max(map(len, rows), default=0)
        pad = pad_token_id if pad_token_id is not None else next(iter(eos), 0)
        new = torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=input_ids.dtype).reshape(len(rows), width)
        return torch.cat([input_ids, new], dim=1)

    def greedy(self, prompt: list[int], max_new_tokens: int, eos: set[int], stops: list) -> list[int]:
        logits = self.start(prompt)
        new: list[int] = []
        while len(new) < max_new_tokens:
            token = int(np.argmax(logits))
            new.append(token)
            if token in eos or any(stopped(c, new) for c in stops) or self.llm.n_tokens >= self.llm.n_ctx():
                break
            logits = self.step(token)
        return new

    def start(self, prompt: list[int]) -> np.ndarray:
        """Evaluate a prompt from an empty cache; the logits of its last position."""
        self.llm.reset()
        return self.append(prompt)

    def step(self, token: int) -> np.ndarray:
        """Append one token; the logits after it."""
        return self.append([token])

    def append(self, tokens: list[int]) -> np.ndarray:
        """Evaluate `tokens` after the cached ones; the logits of the last. Only that position's logits are
        computed (the output head over a 49k vocabulary at every prompt position would cost more than the
        rest of the model)."""
        import llama_cpp

        self.llm._logits_all = False
        try:
            self.llm.eval(tokens)
        finally:
            self.llm._logits_all = True
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),)).copy()


def stopped(criterion, new: list[int]) -> bool:
    """A StopOnStrings criterion's test on one row's new tokens (its window of the newest ones)."""
    text = criterion.tokenizer.decode(new[-criterion.window:], skip_special_tokens=True,
                                      clean_up_tokenization_spaces=True)
    return any(s in text for s in criterion.stops)


# ----------------------------------------------------------------------------- a model at a scheme


def write_scheme_file(src: Path, out: Path, scheme: str, ftype: str, source: str | None, texts: list[str] | None,
                      dataset: str | None = None) -> dict:
    """`write_gguf` of a gguf-* scheme, an -imatrix-* one with its matrix computed on the folder's own model in
    torch (on `texts`, the corpus part `source` names) or read from its file, as the twin computes it."""
    from ..models.loading import load_model, load_tokenizer
    from .imatrix import importance_of

    matrix, about = None, None
    if source is not None:
        matrix, computed = importance_of(load_model(src, "fp32"), scheme, source, load_tokenizer(src), texts)
        about = {"file": computed.get("file"), "chunks": computed.get("chunks"), "dataset": dataset if texts else None}
    return write_gguf(src, out, ftype=ftype, imatrix=matrix, imatrix_info=about)


def imatrix_file(src: Path, scheme: str, ftype: str, source: str, corpus, work: Path, key: str) -> tuple[Path, dict]:
    """(the GGUF file of an -imatrix-* scheme, what calibrated it), written once per model, scheme and
    calibration texts."""
    from ..utils.io import sha256_json
    from .backends import calibration_for

    texts = calibration_for(scheme, corpus)
    file = work / f"{key}-{ftype}-imatrix-{sha256_json([scheme, texts])[:12]}.gguf"
    if not file.is_file():
        write_scheme_file(src, file, scheme, ftype, source, texts, f"{source} texts")
    return file, {"source": source, "texts": len(texts) if texts else None}


def runs_scheme(scheme: str) -> bool:
    """Whether llama.cpp runs `scheme` itself: full precision and every gguf-* file type (other schemes, and
    the attacks, transform the weights in torch)."""
    from .gguf import parse

    return scheme == "full" or parse(scheme) is not None


def runtime_source(spec, scheme: str) -> Path:
    """The file or folder llama.cpp will run for the model argument `spec` at `scheme`, checked before any
    work: the extra installed, the scheme one llama.cpp applies, the model a GGUF file (a package's shipped
    file, run as it is) or a Llama-style local folder. One line (UserError) for anything else."""
    from ..models.packaged import check_packaged
    from ..models.spec import Kind, ModelSpec
    from .gguf import parse

    require()
    spec = ModelSpec.of(spec)
    parsed = parse(scheme) if scheme != "full" else None
    if not runs_scheme(scheme):
        raise UserError(f"--runtime llama.cpp evaluates full precision and the gguf-* schemes; {scheme} runs in torch "
                        "(without --runtime)")
    if spec.kind in (Kind.GGUF, Kind.PACKAGE):
        if parsed is not None:
            raise UserError(f"--runtime llama.cpp runs a GGUF file as it is; to quantize it to {scheme}, convert it "
                            "to a folder first (`unlearn-audit convert`)")
        return check_packaged(spec) if spec.kind is Kind.PACKAGE else spec.path
    if spec.kind is not Kind.FOLDER:
        raise UserError(f"--runtime llama.cpp runs local models (a folder or a .gguf file); {spec} is a {spec.kind.value} "
                        "argument: download or merge it into a folder first")
    read_config(spec.path)
    return spec.path


def gguf_file_source(spec, scheme: str, out: str | Path) -> tuple[Path, str, str | None]:
    """`quantize --format gguf`: (the Llama-style local folder, the ggml file type, the importance matrix's
    source or None) for writing `out`, checked before any work (one line for a scheme, output path or model
    the writer does not take)."""
    from ..models.spec import Kind, ModelSpec
    from .gguf import parse

    parsed = parse(scheme) if scheme != "full" else None
    if parsed is None:
        raise UserError(f"--format gguf writes the gguf-* schemes; {scheme} is written as a dequantized model folder "
                        "(without --format)")
    if Path(out).suffix != ".gguf":
        raise UserError(f"--format gguf writes one file: give --out a path ending in .gguf, not {out}")
    spec = ModelSpec.of(spec)
    if spec.kind is not Kind.FOLDER:
        raise UserError(f"--format gguf converts a local model folder; {spec} is a {spec.kind.value} argument")
    read_config(spec.path)
    return spec.path, parsed[0], parsed[1]


def runtime_model(spec, scheme: str, work: str | Path, threads: int | None = None,
                  fingerprint: str | None = None, corpus=None) -> LlamaCppModel:
    """The model `spec` evaluated in llama.cpp (`runtime_source`): a GGUF file as it is, a folder converted
    (F32 for full precision, `--outtype auto` for a gguf-* scheme) and quantized by llama.cpp. An -imatrix-*
    scheme's file is written by the port (`write_gguf` with the matrix computed on `corpus`'s part, as
    `quantize --format gguf` writes it): llama.cpp's quantize takes no importance matrix through the
    binding, and the port's weighted blocks are llama.cpp's bit for bit. The files are kept in `work` under
    the model's fingerprint (computed here unless the caller has it), so a resumed evaluation reuses them."""
    from transformers import AutoConfig, GenerationConfig

    from ..models.loading import model_fingerprint
    from .gguf import parse

    src = runtime_source(spec, scheme)
    ftype, source = parse(scheme) if scheme != "full" else (None, None)
    if src.suffix == ".gguf":
        config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
        file, record = src, {"gguf": str(src), "as_given": True}
    else:
        config = AutoConfig.from_pretrained(src)
        key = (fingerprint or model_fingerprint(src))[:16]
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        record = {"converted_from": str(src), "outtype": "f32" if ftype is None else "auto"}
        if source is not None:
            file, record["imatrix"] = imatrix_file(src, scheme, ftype, source, corpus, work, key)
            record.update(ftype=ftype, quantized_by="unlearn-audit's port of ggml-quants.c (the importance matrix)")
        else:
            file = work / f"{key}-{'f32' if ftype is None else 'auto'}.gguf"
            if not file.is_file():
                write_gguf(src, file, "f32" if ftype is None else "auto")
            if ftype is not None:
                base, file = file, work / f"{key}-{ftype}.gguf"
                if not file.is_file():
                    quantize_gguf(base, file, ftype, threads)
                record["ftype"] = ftype
        record["gguf"] = str(file)
    try:
        generation = GenerationConfig.from_pretrained(src if src.is_dir() else src.parent)
    except OSError:
        generation = GenerationConfig()
    model = LlamaCppModel(file, config, generation, threads)
    # a GGUF file's fingerprint is the sha256 of its bytes
    model.runtime_record = {"runtime": "llama.cpp", **record, "sha256": model_fingerprint(file), "types": file_types(file),
                            **runtime_version()}
    return model
