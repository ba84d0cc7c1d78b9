"""The importance matrix of llama.cpp's `llama-imatrix` (tools/imatrix/imatrix.cpp at commit 0c1e570), which
`llama-quantize --imatrix` passes to the quantizers as per-column weights.

As the tool computes it: the calibration text is tokenized once (with BOS where the tokenizer adds one),
cut into chunks of n_ctx tokens (the remainder dropped; each chunk's first token replaced by BOS), every
chunk run as its own sequence, and for every matrix multiplication with a weight of a block (`blk.*`:
attention and MLP projections, not the token embedding or the output head) the squares of its input
activations are summed per column over all tokens, in float32 and token order, and counted; llama-quantize
divides each sum by its count:

    imatrix[W][j] = (1/T) * sum_t x_t[j]^2     over the T calibration tokens, x_t the input of W at token t

Here the activations are those of the torch model being quantized (float32 if it is loaded so), where
llama-imatrix runs the converted GGUF in llama.cpp's kernels: the same definition, not the same bits.
The calibration text is the corpus part's texts joined by blank lines; n_ctx is llama-imatrix's default 512,
halved until the text gives at least two chunks (the tool's minimum) for short corpus parts.

A FILE source reads a matrix llama-imatrix wrote: GGUF (`<name>.in_sum2` / `<name>.counts`, with the
imatrix.* metadata llama-quantize requires) or the legacy .dat format, normalised as llama-quantize
normalises them.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .ggml_mix import hf_to_gguf_name

N_CTX = 512
MIN_CHUNK = 16  # the collector ignores multiplications over fewer than 16 tokens


def chunk_tokens(ids: list[int], n_ctx: int, bos: int | None) -> tuple[torch.Tensor, int]:
    """The text's tokens as (chunks, n_ctx) with BOS first, and the n_ctx used (halved from `n_ctx` until
    two chunks fit)."""
    while n_ctx > MIN_CHUNK and len(ids) < 2 * n_ctx:
        n_ctx //= 2
    if len(ids) < 2 * n_ctx:
        raise UserError(f"the calibration texts give {len(ids)} tokens; the importance matrix needs at least "
                        f"{2 * MIN_CHUNK} (two chunks of {MIN_CHUNK})")
    n_chunk = len(ids) // n_ctx
    chunks = torch.tensor(ids[:n_chunk * n_ctx]).reshape(n_chunk, n_ctx)
    if bos is not None:
        chunks[:, 0] = bos
    return chunks, n_ctx


def collected_modules(model) -> dict[str, torch.nn.Linear]:
    """{weight name: Linear} of the block weights llama-imatrix collects (GGUF names starting 'blk.')."""
    out = {}
    for name, mod in model.named_modules():
        g = hf_to_gguf_name(f"{name}.weight")
        if isinstance(mod, torch.nn.Linear) and g is not None and g.startswith("blk."):
            out[f"{name}.weight"] = mod
    return out


@torch.no_grad()
def compute_imatrix(model, tokenizer, texts: list[str], n_ctx: int = N_CTX,
                    batch_size: int = 4) -> tuple[dict[str, np.ndarray], dict]:
    """({weight name: imatrix (in_features,) float32}, what it was computed on) for `model` on `texts`."""
    if not texts:
        raise UserError("the importance matrix needs calibration texts; the corpus part is empty")
    ids = tokenizer("\n\n".join(texts)).input_ids
    bos = tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None
    limit = getattr(model.config, "max_position_embeddings", None)
    chunks, n_ctx = chunk_tokens(ids, min(n_ctx, limit or n_ctx), bos)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def collect(name):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1]).cpu().numpy()
            acc = sums.get(name, np.zeros(x.shape[1], dtype=np.float32))
            # acc[j] += x[j] * x[j], token after token, in float32 (cumsum adds in order; sum() is pairwise)
            sums[name] = np.cumsum(np.vstack([acc[None], x * x]), axis=0, dtype=np.float32)[-1]
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    handles = [m.register_forward_pre_hook(collect(n)) for n, m in collected_modules(model).items()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, len(chunks), batch_size):
            model(input_ids=chunks[i:i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    matrix = {n: (s / np.float32(counts[n])).astype(np.float32) for n, s in sums.items()}
    info = {"texts": len(texts), "tokens": len(ids), "n_ctx": n_ctx, "chunks": len(chunks),
            "entries": len(matrix)}
    return matrix, info


def importance_of(model, scheme: str, source: str | None, tokenizer, texts: list[str] | None) -> tuple[dict | None, dict]:
    """The importance matrix a gguf scheme names, for the loaded (unquantized) model: computed on the
    calibration texts (the corpus part `source` names) or read from its file; (None, {}) without one."""
    if source is None:
        return None, {}
    if source not in ("retain", "forget"):
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        return imatrix_for_model(source, shapes), {"file": str(source)}
    if tokenizer is None or not texts:
        raise UserError(f"{scheme} computes its importance matrix on the corpus's {source} texts: pass a corpus")
    return compute_imatrix(model, tokenizer, texts)


# ----------------------------------------------------------------------------- files llama-imatrix wrote


def read_imatrix_file(path: str | Path) -> dict[str, np.ndarray]:
    """{GGUF tensor name: imatrix} from a llama-imatrix file, normalised as llama-quantize's load_imatrix does
    (GGUF: sums / count, 1 where a count is 0; legacy .dat: values / ncall)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        return read_gguf_imatrix(path) if magic == b"GGUF" else read_legacy_imatrix(path)
    except (struct.error, ValueError, IndexError) as exc:
        raise UserError(f"{path}: not a llama.cpp imatrix file ({exc})") from None


def read_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    """A GGUF imatrix (llama-imatrix's default format): e = in_sum2 / counts per matrix."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    keys = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
    if any(reader.get_field(k) is None for k in keys):
        raise UserError(f"{path}: missing imatrix metadata ({', '.join(keys)}); llama-quantize refuses such a file")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    out = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        if f"{base}.counts" not in tensors:
            raise UserError(f"{path}: {base} has sums but no counts")
        counts = np.round(tensors[f"{base}.counts"]).astype(np.float32)
        per = sums.reshape(len(counts), -1)
        safe = np.where(counts > 0, counts, np.float32(1))[:, None]
        out[base] = np.where(counts[:, None] > 0, per / safe, np.float32(1)).astype(np.float32).reshape(-1)
    return out


def read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    """A legacy .dat imatrix: per entry its name, ncall and values (sum / count) * ncall; e = values / ncall."""
    data = path.read_bytes()
    (n_entries,), pos = struct.unpack_from("<i", data, 0), 4
    if n_entries < 1:
        raise UserError(f"{path}: no imatrix entries")
    out = {}
    for _ in range(n_entries):
        (length,) = struct.unpack_from("<i", data, pos)
        name = data[pos + 4:pos + 4 + length].decode()
        ncall, nval = struct.unpack_from("<ii", data, pos + 4 + length)
        pos += 12 + length
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = (values / np.float32(ncall)).astype(np.float32) if ncall > 0 else values
    return out


def imatrix_for_model(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A file's entries keyed by the model's Hugging Face names; an entry whose size is not the tensor's
    width is refused (llama-quantize throws there too), a tensor without one is quantized without."""
    entries = read_imatrix_file(path)
    out = {}
    for name, shape in shapes.items():
        values = entries.get(hf_to_gguf_name(name) or "")
        if values is None:
            continue
        if values.size != shape[-1]:
            raise UserError(f"{path}: the imatrix of {name} has {values.size} values, the tensor is {shape[-1]} wide; "
                            "it was computed for another model")
        out[name] = values
    if not out:
        raise UserError(f"{path}: no imatrix entry matches a tensor of this model (is it another model's?)")
    return out
