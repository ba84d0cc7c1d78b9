"""Weight-bin analysis: will the unlearning update survive quantization? Answered from weights alone.

For every quantized weight tensor of a (target, unlearned) pair, streamed row-chunk by row-chunk from
the safetensors shards (a 7B pair needs a few chunk buffers, not whole models):
  changed_share     share of weights with w_u != w_t
  same_code_share   share whose N-bit code under the scheme equals the target's (each model quantized
                    with its own scales, as a deployment would)
  zero_bin_share    share of the changed weights whose target value lies in the bin that rounds to 0
  erased_share      share of the changed weights whose quantized value equals the target's
  erased_mass_share the same, weighted by |w_u - w_t| (the verdict uses it)
  projected_survival <Q(w_u) - Q(w_t), w_u - w_t> / |w_u - w_t|^2: how much of the update is still there,
                    along its own direction, after both models are quantized (1: all of it, 0: none;
                    unlike the erased mass it also sees group scales that drift when every weight moves);
                    over every tensor the pair holds, those the quantizer keeps in full precision (embeddings,
                    a tied head, norms) counting as surviving whole; `projected_survival_quantized` is the same
                    over the quantized tensors alone, `not_quantized_sq_share` the kept tensors' share of it
  histograms of |dw| / Delta and |w_t| / Delta over the changed weights (Delta: the target's step)
With `lr`, the bf16 cap: an AdamW step of size lr only survives bf16 rounding for |w| below
2^ceil(log2(lr) + 8); when that cap lies inside the zero bin, the bf16 update cannot leave it.

Which tensors and how follow the scheme (`select_tensors`, `TensorSchemes`): RTN, bitsandbytes and the
float formats quantize the Linear weights (embeddings and the head on request); a gguf scheme every tensor
llama-quantize changes, each with its own ggml type (embeddings and the head included); fp8-e4m3-tensor and
nvfp4 first read each tensor's absmax (nvfp4: over q/k/v and gate/up together), since their scale is
tensor-wide. For gguf and the float formats Delta is the step of the code a weight lands on (block and
sub-block scale for gguf, the floating-point spacing times the scale for FP8 / FP4), and gguf codes are the
dequantized values.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..scoring import percent
from ..utils.io import atomic_write_json, atomic_write_text, save_figure
from . import bins_kernel
from .codebook import TABLES, zero_bin_halfwidth
from .schemes import Scheme, group_views, parse_scheme, precision_label, quantize_groups

HIST_EDGES = np.concatenate([[0.0], np.logspace(-6, 3, 181)])  # in units of Delta
CHUNK_ELEMENTS = 1 << 19  # per chunk and model: a few MiB of float32 temporaries


@dataclass(frozen=True)
class BinsOptions:
    include_embeddings: bool = False
    include_lm_head: bool = False
    chunk_elements: int = CHUNK_ELEMENTS


def bf16_cap(lr: float) -> float:
    """Largest |w| a bf16 weight can still be moved by an update of size `lr` (round to nearest)."""
    return 2.0 ** math.ceil(math.log2(lr) + 8)


# ------------------------------------------------------------------------------------------- files
class ShardedWeights:
    """Lazy access to the tensors of a safetensors model folder (single file or sharded)."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"model folder not found: {self.folder} (bins reads local safetensors folders)")
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{self.folder} holds no *.safetensors weights; bins needs safetensors")
        from ..models.files import check_safetensors

        for f in files:
            check_safetensors(f)
        self.handles = {f: safe_open(str(f), framework="pt") for f in files}
        self.where = {name: f for f, h in self.handles.items() for name in h.keys()}

    def names(self) -> list[str]:
        return list(self.where)

    def slice(self, name: str):
        return self.handles[self.where[name]].get_slice(name)

    def shape(self, name: str) -> list[int]:
        return list(self.slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self.slice(name).get_dtype())

    def tensor(self, name: str) -> torch.Tensor:
        return self.handles[self.where[name]].get_tensor(name)

    def block(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as stored (read from the file alone)."""
        return self.slice(name)[start:stop]

    def rows(self, name: str, start: int, stop: int, as_dtype: torch.dtype | None = None,
             keep_bf16: bool = False) -> torch.Tensor:
        """Rows [start, stop) as float32, first rounded to `as_dtype` when given (bf16 kept as is on request)."""
        x = self.block(name, start, stop)
        x = x.to(as_dtype) if as_dtype is not None else x
        return x if keep_bf16 and x.dtype == torch.bfloat16 else x.float()


class MergedWeights(ShardedWeights):
    """The tensors of base + LoRA adapter, merged tensor by tensor with the loader's own `merged_weight`
    (every tensor in the merge precision, as the loaded model holds it)."""

    def __init__(self, base: ShardedWeights, adapter, precision: torch.dtype):
        from ..models.adapters import lora_pairs

        self.folder, self.handles, self.where = base.folder, base.handles, base.where
        self.adapter, self.precision, self.pairs = adapter, precision, lora_pairs(adapter)
        self._cache: tuple[str, torch.Tensor] | None = None

    def dtype(self, name: str) -> str:
        return {torch.bfloat16: "BF16", torch.float32: "F32"}[self.precision]

    def tensor(self, name: str) -> torch.Tensor:
        from ..models.adapters import merged_weight

        if self._cache and self._cache[0] == name:
            return self._cache[1]
        w = super().tensor(name)
        if name in self.pairs:  # merged_weight rounds the base to the merge precision first
            a, b = self.pairs[name]
            w = merged_weight(w, a, b, self.adapter.scaling(a.shape[0]), self.precision)
        else:
            w = w.to(self.precision)
        self._cache = (name, w)
        return w

    def block(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensor(name)[start:stop]


def stored_dtype(spec, load=None):
    """The dtype the checkpoint at `spec` stores its weights in (what convert_hf_to_gguf reads): from the
    safetensors headers of a local folder (its first weight matrix), else the config's dtype."""
    from pathlib import Path

    from ..models.loading import model_config, resolve
    from ..models.spec import Kind

    resolved = resolve(spec, load)
    if resolved.kind is Kind.GGUF:
        return "gguf"  # llama-quantize --allow-requantize dequantizes to f32
    if resolved.kind in (Kind.FOLDER, Kind.ADAPTER) and Path(resolved.name).is_dir():
        weights = open_weights(resolved.name)
        matrices = [n for n in weights.names() if len(weights.shape(n)) >= 2]
        if matrices:
            return weights.dtype(matrices[0])
    config = model_config(resolved)
    return getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)


def open_weights(folder: str | Path, merge_dtype: str = "auto"):
    """A model folder's tensors; a LoRA adapter folder's are its base's with the adapter merged exactly as
    loading merges it (models/adapters.py), so the forecast reads the weights evaluation runs."""
    from ..models.adapters import is_adapter, merge_precision, read_adapter

    if not is_adapter(folder):
        return ShardedWeights(folder)
    adapter = read_adapter(folder)
    base = ShardedWeights(adapter.base)
    stored = torch.bfloat16 if any(base.dtype(n) == "BF16" for n in base.names()) else torch.float32
    return MergedWeights(base, adapter, merge_precision(adapter, merge_dtype, stored))


def quantized_by(name: str, shape, opts: BinsOptions) -> bool:
    """Whether RTN and bitsandbytes quantize this tensor: 2-D weights, but embeddings and the output head
    unless the options include them."""
    if len(shape) != 2 or not name.endswith("weight"):
        return False
    if "embed" in name and not opts.include_embeddings:
        return False
    return "lm_head" not in name or opts.include_lm_head


def config_tied(folder: Path) -> bool:
    """Whether a model folder's config ties the output head to the token embedding."""
    config = Path(folder) / "config.json"
    return config.is_file() and bool(__import__("json").loads(config.read_text()).get("tie_word_embeddings"))


def first_matrix_dtype(w: ShardedWeights) -> str | None:
    """The stored dtype of a model's first weight matrix (what convert_hf_to_gguf decides its output type by)."""
    return next((w.dtype(n) for n in w.names() if len(w.shape(n)) >= 2), None)


def gguf_types(s: Scheme, w: ShardedWeights) -> dict[str, str]:
    """{tensor: ggml type} a gguf scheme gives the tensors of model folder `w`."""
    from .gguf import types_for

    shapes = {n: tuple(w.shape(n)) for n in w.names()}
    return types_for(shapes, s.kind, config_tied(w.folder), s.imatrix is not None)


def select_tensors(a: ShardedWeights, b: ShardedWeights, opts: BinsOptions, scheme: Scheme | None = None) -> list[str]:
    """2-D weights present in both models that the scheme quantizes (Linear layers by default; for a gguf
    scheme every tensor llama-quantize changes)."""
    common = [n for n in a.names() if n in b.where]
    if not common:
        raise UserError("the two models share no tensor names; are they the same architecture?")
    mismatched = [n for n in common if a.shape(n) != b.shape(n)]
    if mismatched:
        n = mismatched[0]
        raise UserError(f"{len(mismatched)} tensor(s) differ in shape between the two models (first: {n}, "
                        f"{a.shape(n)} vs {b.shape(n)}); compare an unlearned model with its own target")
    if scheme is not None and scheme.family == "gguf":
        types = gguf_types(scheme, a)
        picked = [n for n in common if types.get(n, "f32") != "f32"]
    else:
        picked = [n for n in common if quantized_by(n, a.shape(n), opts)]
    if not picked:
        raise UserError("no quantizable 2-D weights found in both models")
    return picked


def skip_reason(name: str, shape: list[int], opts: BinsOptions) -> str:
    """Why a tensor both models hold is left out of the analysis (quantizers keep it in full precision)."""
    if len(shape) != 2 or not name.endswith("weight"):
        return "not a weight matrix (norms, biases): never quantized"
    if "embed" in name:
        return "embedding: the quantizers keep it in full precision (--quantize-embeddings analyses it)"
    return "output head: the quantizers keep it in full precision (--quantize-lm-head analyses it)"


def update_mass(a: ShardedWeights, b: ShardedWeights, name: str, budget: int) -> tuple[int, int, float, float]:
    """(weights, changed weights, sum |w_u - w_t|, sum (w_u - w_t)^2) of one tensor, streamed by rows."""
    shape = a.shape(name)
    rounding = comparison_dtype(a.dtype(name), b.dtype(name))  # as for the analysed tensors
    if len(shape) < 2:  # small: read whole
        ta = a.tensor(name)
        d = (b.tensor(name).float() - (ta.to(rounding) if rounding is not None else ta).float()).abs()
        return d.numel(), int((d > 0).sum()), float(d.sum(dtype=torch.float64)), float(d.double().square().sum())
    per = max(1, budget // max(math.prod(shape[1:]), 1))
    n = changed = 0
    mass = sq = 0.0
    for r0 in range(0, shape[0], per):
        d = (b.rows(name, r0, r0 + per) - a.rows(name, r0, r0 + per, rounding)).abs()
        n, changed, mass = n + d.numel(), changed + int((d > 0).sum()), mass + float(d.sum(dtype=torch.float64))
        sq += float(d.double().square().sum())
    return n, changed, mass, sq


def coverage(a: ShardedWeights, b: ShardedWeights, picked: list[str], analysed_mass: float,
             opts: BinsOptions, scheme: Scheme | None = None) -> dict:
    """What the analysis leaves out and how much of the update that is: every other tensor of the pair,
    with its share of the total update mass (sum |w_u - w_t|), and tied output heads stored only once."""
    left = []
    for name in (n for n in a.names() if n in b.where and n not in picked):
        n, changed, mass, sq = update_mass(a, b, name, opts.chunk_elements)
        left.append({"tensor": name, "weights": n, "changed_share": changed / max(n, 1), "update_mass": mass,
                     "update_sq": sq, "reason": skip_reason(name, a.shape(name), opts)})
    total = analysed_mass + sum(x["update_mass"] for x in left)
    for x in left:
        x["update_mass_share"] = x.pop("update_mass") / total if total > 0 else 0.0
    heads = [n for n in a.names() if "lm_head" in n]
    note = None
    if config_tied(a.folder) and not heads:
        embed = next((n for n in a.names() if "embed_tokens" in n or "wte" in n), "the input embedding")
        kept = ("llama.cpp quantizes that tensor as the head, analysed above" if scheme is not None
                and scheme.family == "gguf" else "quantizers keep it in full precision")
        note = f"the output head is tied to {embed} (stored once): its update is that embedding's, reported above, and {kept}"
    return {"analysed_update_mass_share": analysed_mass / total if total > 0 else 1.0,
            "not_analysed": left, "not_analysed_sq": sum(x["update_sq"] for x in left), "tied_output_head": note}


def whole_model_survival(total: Tally, cover: dict, scheme: Scheme) -> tuple[float, float]:
    """(survival over every tensor the pair holds, the not-quantized tensors' share of |u - t|^2).

    A tensor the quantizer leaves in full precision (embeddings and a tied head under RTN and bitsandbytes,
    norms, biases) keeps its whole update: <Q(u) - Q(t), u - t> = |u - t|^2 there. Summed with the quantized
    tensors', s = (dot_q + sq_left) / (sq_q + sq_left): the forecast then sees forgetting that lives where
    quantization does not reach. A cast changes every tensor alike, so for casts only the analysed ones count."""
    left = 0.0 if scheme.family == "cast" else cover["not_analysed_sq"]
    whole = total.sq + left
    if whole <= 0:
        return 0.0, 0.0
    return (total.dot + left) / whole, left / whole


PRECISION_BITS = {"F64": 53, "F32": 24, "BF16": 8, "F16": 11}
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def comparison_dtype(target_dtype: str, unlearned_dtype: str) -> torch.dtype | None:
    """When the unlearned model is stored more coarsely (fp32 target, bf16 unlearned), round the target the
    same way first, so that `changed` measures the unlearning update and not the storage rounding."""
    t, u = PRECISION_BITS.get(target_dtype), PRECISION_BITS.get(unlearned_dtype)
    if t is not None and u is not None and u < t:
        return TORCH_DTYPES[unlearned_dtype]
    return None


def chunk_rows(shape: list[int], scheme: Scheme, budget: int) -> int:
    """Rows per chunk: within the element budget, and whole bitsandbytes blocks for codebook schemes."""
    rows, cols = shape
    step = 1
    if scheme.family == "bnb" and scheme.kind in ("fp4", "nf4"):
        step = 64 // math.gcd(cols, 64)
    n = max(step, (budget // max(cols, 1)) // step * step)
    return min(rows, n)


# ------------------------------------------------------------------------------------------- stats
class Tally:
    """Counters and histograms accumulated over chunks."""

    def __init__(self):
        self.n = self.changed = self.same_code = self.same_value = self.zero_bin = self.erased = 0
        self.mass = self.erased_mass = self.dot = self.sq = 0.0
        self.movable = self.cap_inside = 0
        self.dw_hist = np.zeros(len(HIST_EDGES) - 1)
        self.w_hist = np.zeros(len(HIST_EDGES) - 1)

    def add(self, other: Tally) -> None:
        for k in ("n", "changed", "same_code", "same_value", "zero_bin", "erased", "mass", "erased_mass",
                  "dot", "sq", "movable", "cap_inside"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.dw_hist += other.dw_hist
        self.w_hist += other.w_hist

    def summary(self, with_cap: bool) -> dict:
        ch = max(self.changed, 1)
        out = {
            "weights": int(self.n),
            "changed_share": self.changed / max(self.n, 1),
            "same_code_share": self.same_code / max(self.n, 1),
            "same_value_share": self.same_value / max(self.n, 1),
            "zero_bin_share": self.zero_bin / ch if self.changed else 0.0,
            "erased_share": self.erased / ch if self.changed else 0.0,
            "erased_mass_share": self.erased_mass / self.mass if self.mass > 0 else 0.0,
            "projected_survival": self.dot / self.sq if self.sq > 0 else 0.0,
            "dw_over_delta": percentiles(self.dw_hist),
            "w_over_delta": percentiles(self.w_hist),
        }
        if with_cap:
            out["bf16_movable_share"] = self.movable / max(self.n, 1)
            out["cap_inside_zero_bin_share"] = self.cap_inside / max(self.n, 1)
        return out


def percentiles(hist: np.ndarray, qs=(50, 90, 99)) -> dict[str, float | None]:
    """Approximate percentiles from a log-binned histogram (upper bin edge)."""
    total = hist.sum()
    if total == 0:
        return {f"p{q}": None for q in qs}
    cdf = np.cumsum(hist) / total
    return {f"p{q}": float(HIST_EDGES[1:][np.searchsorted(cdf, q / 100)]) for q in qs}


HIST_SAMPLE = 1 << 14  # changed weights per chunk that enter the histograms (percentiles are approximate)


def codebook_kind(scheme: Scheme) -> str | None:
    """"fp4" or "nf4" for bitsandbytes' 4-bit codebooks, else None."""
    return scheme.kind if scheme.family == "bnb" and scheme.kind in TABLES else None


def fused(scheme: Scheme) -> bool:
    """Whether a compiled one-pass kernel analyses this scheme (RTN, bitsandbytes FP4/NF4; numba installed)."""
    return (scheme.family == "rtn" or codebook_kind(scheme) is not None) and bins_kernel.available()


def tally_chunk(wt: torch.Tensor, wu: torch.Tensor, scheme: Scheme, cap: float | None,
                scheme_u: Scheme | None = None) -> Tally:
    """Statistics of one chunk of rows (target and unlearned, float32, or both bf16 for the fused kernel);
    `scheme_u`: the unlearned model's own resolution of the scheme where it differs (tensor-wide scales)."""
    if fused(scheme) and wt.dtype == wu.dtype:
        return tally_rtn_fused(wt, wu, scheme, cap) if scheme.family == "rtn" else tally_codebook_fused(wt, wu, scheme, cap)
    wt, wu = wt.float(), wu.float()
    t = Tally()
    for xt, xu in zip(group_views(wt, scheme), group_views(wu, scheme)):
        tally_groups(t, xt, xu, scheme, cap, scheme_u)
    return t


def count(mask: torch.Tensor) -> int:
    """Number of True entries (count_nonzero reads the mask without converting it to integers)."""
    return int(torch.count_nonzero(mask))


def sample_positions(numel: int, is_changed) -> torch.Tensor:
    """Positions for the histograms: a fixed stride (independent of the values), the changed ones kept;
    when the stride misses every change, all changed positions. `is_changed(positions)` -> bool mask."""
    sel = torch.arange(0, numel, sample_stride(numel))
    sel = sel[is_changed(sel)]
    return sel if len(sel) else is_changed(torch.arange(numel)).nonzero().squeeze(1)


def add_histograms(t: Tally, dw: torch.Tensor, aw: torch.Tensor, unit: torch.Tensor, n_changed: int) -> None:
    """Histograms of |dw| / Delta and |w| / Delta from sampled changed weights, re-weighted to the chunk's count."""
    unit = torch.where(unit > 0, unit, torch.ones_like(unit))
    weight = n_changed / len(dw)
    t.dw_hist += np.histogram((dw / unit).numpy(), HIST_EDGES)[0] * weight
    t.w_hist += np.histogram((aw / unit).numpy(), HIST_EDGES)[0] * weight


def kernel_array(x: torch.Tensor) -> np.ndarray:
    """float32 as is; bf16 as its uint16 bit patterns (numpy has no bf16)."""
    return x.view(torch.int16).numpy().view(np.uint16) if x.dtype == torch.bfloat16 else x.numpy()


def tally_rtn_fused(wt: torch.Tensor, wu: torch.Tensor, scheme: Scheme, cap: float | None) -> Tally:
    """RTN statistics of a chunk in one compiled pass (`bins_kernel`), the histograms' sampled positions
    included (those `sample_positions` picks; the whole chunk only when its stride misses every change)."""
    rtn = scheme.rtn
    cols = wt.shape[1]
    group = cols if rtn.granularity == "channel" else rtn.group_size
    totals, steps, hists = bins_kernel.rtn_chunk_stats(
        kernel_array(wt), kernel_array(wu), group, rtn.symmetric, rtn.divisor, rtn.bits, rtn.qmin, rtn.qmax, cap,
        sample_stride(wt.numel()), HIST_EDGES)
    t = kernel_tally(totals, hists)
    if t.changed and not hists[2]:
        ft, fu = wt.reshape(-1), wu.reshape(-1)
        sel = sample_positions(ft.numel(), lambda i: fu[i] != ft[i])
        unit = torch.from_numpy(steps)[sel // cols, (sel % cols) // group]
        st, su = ft[sel].float(), fu[sel].float()
        add_histograms(t, (su - st).abs(), st.abs(), unit, t.changed)
    return t


def tally_codebook_fused(wt: torch.Tensor, wu: torch.Tensor, scheme: Scheme, cap: float | None) -> Tally:
    """bitsandbytes FP4/NF4 statistics of a chunk's whole blocks of 64 in one compiled pass, as `tally_groups`
    counts them view by view (a tensor's last partial block goes through `tally_groups`)."""
    kind = codebook_kind(scheme)
    ft, fu = wt.reshape(-1), wu.reshape(-1)
    full = (ft.numel() // 64) * 64
    totals, hists = bins_kernel.codebook_chunk_stats(
        kernel_array(ft[:full]), kernel_array(fu[:full]), TABLES[kind].numpy(), zero_bin_halfwidth(kind), cap,
        sample_stride(full), HIST_EDGES)
    t = kernel_tally(totals, hists)
    if t.changed and not hists[2]:  # the stride missed every change: the torch path's histograms of all of them
        whole = Tally()
        tally_groups(whole, ft[:full].float().reshape(-1, 64), fu[:full].float().reshape(-1, 64), scheme, cap)
        t.dw_hist, t.w_hist = whole.dw_hist, whole.w_hist
    if full < ft.numel():
        tally_groups(t, ft[full:].float().reshape(1, -1), fu[full:].float().reshape(1, -1), scheme, cap)
    return t


def sample_stride(numel: int) -> int:
    """The histograms' stride over a view of `numel` weights (`sample_positions`)."""
    return max(1, numel // (4 * HIST_SAMPLE))


def kernel_tally(totals: dict, hists: tuple) -> Tally:
    """A Tally from a kernel's counters and sampled histograms, re-weighted to the chunk's changed count."""
    t = Tally()
    for k, v in totals.items():
        setattr(t, k, v)
    dw_hist, w_hist, taken = hists
    if t.changed and taken:
        t.dw_hist += dw_hist * (t.changed / taken)
        t.w_hist += w_hist * (t.changed / taken)
    return t


def tally_groups(t: Tally, xt: torch.Tensor, xu: torch.Tensor, scheme: Scheme, cap: float | None,
                 scheme_u: Scheme | None = None) -> None:
    """Add the statistics of groups (n, g) of target / unlearned weights to `t`.

    Few passes over the chunk: sums of masked values are dot products (BLAS, no gathered copies),
    and weights that did not change contribute zeros to every update sum without a mask."""
    ct, qt, step, half = quantize_groups(xt, scheme)
    cu, qu, _, _ = quantize_groups(xu, scheme_u or scheme)
    delta = (xu - xt).reshape(-1)
    changed = delta != 0
    same_value = (qt == qu).reshape(-1)
    at = xt.abs()
    n_changed = count(changed)
    t.n += xt.numel()
    t.changed += n_changed
    t.same_code += count(ct == cu)
    t.same_value += count(same_value)
    if n_changed:
        dw = delta.abs()
        t.zero_bin += count(changed & (at < half).reshape(-1))
        t.erased += count(changed & same_value)
        t.mass += float(dw.sum())  # float32 chunk sums (pairwise, accurate); the totals accumulate in Python floats
        t.erased_mass += float(torch.where(same_value, dw, 0.0).sum())
        t.dot += float(torch.dot((qu - qt).reshape(-1), delta))
        t.sq += float(torch.dot(delta, delta))
        unit = step if scheme.family == "rtn" else 2 * half  # Delta; for codebooks the zero-bin width
        sel = sample_positions(delta.numel(), lambda i: changed[i])
        g = xt.shape[1]
        add_histograms(t, dw[sel], at.reshape(-1)[sel], unit.expand_as(xt)[sel // g, sel % g], n_changed)
    if cap is not None:
        t.movable += count(at < cap)
        t.cap_inside += count(half.expand_as(xt) > cap)


# ------------------------------------------------------------------------------------------- main
def chunk_pairs(a: ShardedWeights, b: ShardedWeights, name: str, per: int, rounding, raw: bool):
    """(target, unlearned) row chunks of one tensor; the next pair is read while the current one is analysed
    (the compiled kernel releases the GIL), so reading and counting overlap."""
    def read(r0: int):
        return a.rows(name, r0, r0 + per, rounding, keep_bf16=raw), b.rows(name, r0, r0 + per, keep_bf16=raw)

    starts = list(range(0, a.shape(name)[0], per))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, starts[0])
        for nxt in starts[1:] + [None]:
            pair = pending.result()
            if nxt is not None:
                pending = pool.submit(read, nxt)
            yield pair


def analyse(target: str | Path, unlearned: str | Path, scheme: str, lr: float | None = None,
            opts: BinsOptions | None = None, progress=None) -> dict:
    """The bin analysis of a model pair under `scheme` (see module docstring)."""
    opts = opts or BinsOptions()
    s = parse_scheme(scheme)
    if not s.analysable:
        why = "it quantizes activations at run time" if s.kind == "dynamic" else "it depends on calibration data"
        raise UserError(f"bins cannot analyse {s.name}: {why}; use an rtn-*, bnb-*, gguf-* (without imatrix), "
                        "fp8-e4m3, mxfp4 or nvfp4 scheme")
    if s.family == "rtn" and s.rtn.granularity == "tensor":
        raise UserError("bins streams row chunks; per-tensor RTN needs whole tensors: use -channel or -gN")
    if lr is not None and lr <= 0:
        raise UserError("--lr must be positive")
    a, b = open_weights(target), open_weights(unlearned)
    names = select_tensors(a, b, opts, s)
    resolve = TensorSchemes(s, a, b, opts)
    # a merged adapter's update was not made of capped bf16 steps on the weights: no cap applies
    cap = bf16_cap(lr) if lr and s.family != "cast" and not isinstance(b, MergedWeights) else None
    total, layers = Tally(), {}
    dtypes = {"target": sorted({a.dtype(n) for n in names}), "unlearned": sorted({b.dtype(n) for n in names})}
    for name in names:
        shape = a.shape(name)
        per = chunk_rows(shape, s, opts.chunk_elements)
        tensor = Tally()
        rounding = comparison_dtype(a.dtype(name), b.dtype(name))
        st, su = resolve.target(name, rounding), resolve.unlearned(name)
        for wt, wu in chunk_pairs(a, b, name, per, rounding, raw=fused(s)):  # the kernel reads bf16 directly
            tensor.add(tally_chunk(wt, wu, st, cap, su))
        layers[name] = tensor.summary(cap is not None)
        total.add(tensor)
        if progress:
            progress(1)
    overall = total.summary(cap is not None)
    cover = coverage(a, b, names, total.mass, opts, s)
    overall["projected_survival_quantized"] = overall["projected_survival"]
    overall["projected_survival"], overall["not_quantized_sq_share"] = whole_model_survival(total, cover, s)
    result = {
        "scheme": s.name,
        "bits": s.bits,
        "target": str(target),
        "unlearned": str(unlearned),
        "dtypes": dtypes,
        **overall,
        "verdict": verdict(overall, s),
        "lr": lr,
        "bf16_cap": cap,
        "histograms": {"edges": HIST_EDGES.tolist(), "dw_over_delta": total.dw_hist.tolist(),
                       "w_over_delta": total.w_hist.tolist()},
        "layers": layers,
        "coverage": cover,
        "partial_last_group": {n: a.shape(n)[1] for n in names
                               if s.family == "rtn" and s.rtn.granularity == "group" and a.shape(n)[1] % s.group_size},
    }
    if s.family == "gguf":
        from .gguf import applied_label

        result["gguf_types"] = gguf_types(s, a)
        result["applied"] = applied_label(s.name, result["gguf_types"])
    return result


class TensorSchemes:
    """The scheme resolved for each tensor of the target and of the unlearned model: a gguf tensor's type and
    the converted file's type (each model's own, from its stored dtype), a tensor-wide absmax (each model's
    own; for nvfp4 over its fused q/k/v or gate/up group) where the scale is tensor-wide."""

    def __init__(self, scheme: Scheme, a: ShardedWeights, b: ShardedWeights, opts: BinsOptions):
        from .floats import fused_groups

        self.scheme, self.a, self.b, self.budget = scheme, a, b, opts.chunk_elements
        self.types = gguf_types(scheme, a) if scheme.family == "gguf" else {}
        self.groups = fused_groups(a.names()) if scheme.kind == "nvfp4" else {}
        self.amax: dict = {}

    def resolved(self, w: ShardedWeights, name: str, rounding: torch.dtype | None) -> Scheme:
        from dataclasses import replace

        from .gguf import source_type

        s = self.scheme
        if s.family == "gguf":
            return replace(s, qtype=self.types[name], source=source_type(rounding or first_matrix_dtype(w)))
        if not s.whole_tensor:
            return s
        top = max(self.absmax(w, n, rounding) for n in self.groups.get(name, [name]))
        return replace(s, tensor_amax=top)

    def absmax(self, w: ShardedWeights, name: str, rounding: torch.dtype | None) -> float:
        """max |w| of one tensor as the analysis reads it (rounded like its rows), streamed by rows."""
        key = (id(w), name, rounding)
        if key not in self.amax:
            rows, cols = w.shape(name)
            per = max(1, self.budget // max(cols, 1))
            self.amax[key] = max(float(w.rows(name, r, r + per, rounding).abs().max()) for r in range(0, rows, per))
        return self.amax[key]

    def target(self, name: str, rounding: torch.dtype | None) -> Scheme:
        """The target's tensor, read rounded to `rounding` when the unlearned model is stored more coarsely."""
        return self.resolved(self.a, name, rounding)

    def unlearned(self, name: str) -> Scheme:
        """The unlearned model's tensor, as stored."""
        return self.resolved(self.b, name, None)


def verdict(summary: dict, scheme: Scheme) -> str:
    """One line: does the update survive N-bit quantization? Decided by the survival along the update
    (it predicted the demo's measured recovery better than the erased mass: docs/findings.md)."""
    how = f"casting to {scheme.kind}" if scheme.family == "cast" else f"{scheme.bits}-bit quantization"
    if scheme.family in ("gguf", "fp8", "mxfp4", "nvfp4"):
        how = f"{precision_label(scheme.name)} quantization"
    if summary["changed_share"] == 0:
        return "no weight changed: the models are identical"
    share, survival = summary["erased_mass_share"], summary["projected_survival"]
    kept = summary.get("not_quantized_sq_share") or 0.0
    where = (f"; {percent(kept)} of |update|^2 lies in tensors the quantizer keeps (embeddings, norms)"
             if kept >= 0.005 else "")
    if summary["same_value_share"] == 1.0 and not where:
        return f"quantized unlearned model equals the quantized target: update is erased by {how} in 100% of its mass"
    if survival < 0.5:
        return (f"update is erased by {how}: {percent(survival)} of it survives along its direction "
                f"({percent(share)} of the quantized tensors' mass erased{where})")
    return (f"update survives {how} ({percent(survival)} along its direction; {percent(share)} of the quantized tensors' "
            f"mass erased{where})")


def table(result: dict) -> str:
    """A readable per-tensor table plus the overall line and the verdict."""
    head = "| tensor | changed | same code | zero bin (of changed) | erased mass | median dw/Delta |"
    lines = [head, "|---|---|---|---|---|---|"]
    rows = list(result["layers"].items()) + [("OVERALL", result)]
    for name, r in rows:
        med = r["dw_over_delta"]["p50"]
        lines.append(f"| {name} | {percent(r['changed_share'], 1)} | {percent(r['same_code_share'], 1)} | "
                     f"{percent(r['zero_bin_share'], 1)} | {percent(r['erased_mass_share'], 1)} | "
                     f"{'-' if med is None else f'{med:.3g}'} |")
    lines.append("")
    lines.append(f"verdict ({result['scheme']}): {result['verdict']}")
    lines.append(f"forecast by the update's size: {percent(1 - result['projected_survival'])} back")
    if result.get("first_order"):
        lines.append(f"forecast by the forget loss's gradient: {describe_first_order(result['first_order'])}")
    cov = result.get("coverage")
    if cov:
        left = sorted(cov["not_analysed"], key=lambda x: -x["update_mass_share"])
        lines.append(f"analysed: {percent(cov['analysed_update_mass_share'], 1)} of the update mass; not analysed: "
                     + (", ".join(f"{x['tensor']} {percent(x['update_mass_share'], 1)} ({x['reason'].split(':')[0]})"
                                  for x in left[:4] if x["update_mass_share"] > 0) or "nothing that changed")
                     + (f" and {len(left) - 4} more" if len(left) > 4 else ""))
        if cov["tied_output_head"]:
            lines.append(cov["tied_output_head"])
    if result.get("partial_last_group"):
        name, width = next(iter(result["partial_last_group"].items()))
        lines.append(f"{len(result['partial_last_group'])} tensor(s) have a width the group size does not divide "
                     f"(first: {name}, {width}): their last group has its own step, as RTN quantizes it")
    if result.get("bf16_cap"):
        lines.append(f"bf16 cap at lr {result['lr']:g}: |w| < {result['bf16_cap']:.4g}; movable share "
                     f"{percent(result['bf16_movable_share'], 1)}; weights whose zero bin contains the cap "
                     f"{percent(result['cap_inside_zero_bin_share'], 1)}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Histogram of |dw|/Delta and |w_target|/Delta over the changed weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.array(result["histograms"]["edges"])
    centers = np.sqrt(np.maximum(edges[1:], 1e-7) * np.maximum(edges[:-1], 1e-7))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("dw_over_delta", "|w_unlearned - w_target| / Delta"), ("w_over_delta", "|w_target| / Delta")):
        h = np.array(result["histograms"][key])
        if h.sum():
            ax.step(centers, h / h.sum(), where="mid", label=label)
    ax.axvline(0.5, color="k", ls="--", lw=1, label="half a bin (0.5 Delta)")
    ax.set_xscale("log")
    ax.set_xlabel("size in units of the quantization step Delta")
    ax.set_ylabel("share of changed weights")
    ax.set_title(f"{result['scheme']}: {result['verdict']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    """bins.json, bins.md (the table) and bins.png under `out`, each written atomically."""
    out = Path(out)
    files = {"json": atomic_write_json(out / "bins.json", result),
             "table": atomic_write_text(out / "bins.md", table(result) + "\n"),
             "plot": plot(result, out / "bins.png")}
    return files


def describe_first_order(result: dict) -> str:
    """The first-order forecast (quantize/forecast.py) in one line for tables and the terminal."""
    s = result.get("first_order_survival")
    if s is None:
        return "first-order forecast: -"
    return (f"{result['scheme']}: {percent(1 - s)} back by the forget loss's gradient ({percent(s)} of the forgetting's "
            f"first-order loss change survives; gradient at the target {fmt_share(result, 'target')}, at the "
            f"unlearned model {fmt_share(result, 'unlearned')})")


def fmt_share(result: dict, where: str) -> str:
    v = result.get(f"survival_gradient_at_{where}")
    return "-" if v is None else f"{percent(1 - v)} back"
