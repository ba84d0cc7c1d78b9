"""A numpy port of llama.cpp's quantizers (ggml/src/ggml-quants.c at llama.cpp commit 0c1e570, as vendored by
llama-cpp-python 0.3.36), producing the GGUF block bytes `llama-quantize` writes.

`quantize_rows(x, qtype)` follows `ggml_quantize_chunk`: without an importance matrix every type takes its
`quantize_row_*_ref` path (what `llama-quantize` runs without `--imatrix`); with one (per-column weights,
length `cols`) q4_0/q4_1/q5_0/q5_1 take `quantize_row_*_impl`, the k-quants `quantize_row_q*_K_impl`, and
q8_0 ignores it, as in C.

Arithmetic is float32 in C's order of operations: the C loops' running sums are sequential float32 sums
(`np.cumsum`, never numpy's pairwise `sum`), `nearest_int` is the 12582912 trick (round half to even),
`roundf` rounds half away from zero, scales go through fp16 (round to nearest even, like
`GGML_FP32_TO_FP16`). This matches a build without fused multiply-add contraction (x86-64 gcc/clang without
`-march`/`-mfma`, ggml-base's default there); a build that contracts `a*b + c` into FMA (e.g. clang on
arm64) can differ in the last bit of an intermediate and so, rarely, in a chosen scale or code.
Everything is vectorised across blocks; loops run only over candidate scales or a block's few scales.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F32 = np.float32

#: qtype -> (values per block, bytes per block), as in ggml-common.h
BLOCK = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34),
    "q4_k": (QK_K, 144), "q5_k": (QK_K, 176), "q6_k": (QK_K, 210),
}
QTYPES = tuple(BLOCK)
GROUP_MAX_EPS = F32(1e-15)


def _gguf_type(qtype: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[_check_qtype(qtype).upper()]


def _check_qtype(qtype: str) -> str:
    q = str(qtype).lower()
    if q not in BLOCK:
        raise ValueError(f"unknown ggml quant type {qtype!r}; choose from {', '.join(QTYPES)}")
    return q


# ----------------------------------------------------------------------------- scalar helpers


def nearest_int(fval: np.ndarray) -> np.ndarray:
    """C `nearest_int`: float32 add of 12582912 (round half to even), low mantissa bits as an int32."""
    val = np.asarray(fval, dtype=F32) + F32(12582912.0)
    i = val.astype(F32).view(np.int32)
    return (i & 0x007FFFFF) - 0x00400000


def _roundf(v: np.ndarray) -> np.ndarray:
    """C `roundf` (half away from zero) on float32, without the `floor(x + 0.5)` double-rounding trap."""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + np.floor(F32(2) * (a - f)), v).astype(F32)


def _trunc_int(v: np.ndarray) -> np.ndarray:
    """C float -> integer conversion (truncation toward zero)."""
    return np.trunc(v).astype(np.int64)


def fp32_to_fp16_bits(d: np.ndarray) -> np.ndarray:
    """`GGML_FP32_TO_FP16`: float32 -> fp16 bits, round to nearest even."""
    return np.asarray(d, dtype=F32).astype(np.float16).view(np.uint16)


def fp16_bits_to_fp32(b: np.ndarray) -> np.ndarray:
    """`GGML_FP16_TO_FP32` (exact)."""
    return np.asarray(b, dtype=np.uint16).view(np.float16).astype(F32)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """`s = 0; for i: s += a[i]` over the last axis in float32, in C's order (numpy's sum is pairwise)."""
    return np.cumsum(a, axis=-1, dtype=F32)[..., -1]


def _first(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]


def _u16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.astype("<u2")).view(np.uint8).reshape(*v.shape, 2)


# ----------------------------------------------------------------------------- the search helpers


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None):
    """C `make_qx_quants` for rmse_type 1 (the only one the types here use), on every row of x (N, n).

    Returns (scale (N,), L (N, n) int64 in [0, 2*nmax)); an all-zero row gives scale 0 and L 0."""
    if rmse_type != 1:
        raise NotImplementedError("only rmse_type=1 is used by q4_0/q5_0 impl and q6_K")
    x = np.asarray(x, dtype=F32)
    ax = np.abs(x)
    amax = ax.max(axis=-1)
    mx = _first(x, np.argmax(ax, axis=-1))  # first |x| maximum, as `if (ax > amax)`
    zero = amax < GROUP_MAX_EPS
    w = qw if qw is not None else x * x
    wx = w * x
    fn = F32(nmax)

    def trial(iscale):
        lq = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lq.astype(F32)
        return lq, _seqsum(wx * lf), _seqsum((w * lf) * lf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / mx
        lq, sumlx, suml2 = trial(iscale)
        L = lq + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            c = -(fn + F32(F32(0.1) * F32(step)))
            lq, sumlx, suml2 = trial(c / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], lq + nmax, L)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero[:, None], 0, L)
    return scale, L


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad=False, strict_le=False):
    """C `make_qkx2_quants` (and, with strict_le=True, `make_qkx3_quants` with weights) on rows of x (N, n).

    Returns (scale (N,), the_min (N,) = -min, L (N, n) int64 in [0, nmax])."""
    x = np.asarray(x, dtype=F32)
    w = np.asarray(weights, dtype=F32)
    mn = _first(x, np.argmin(x, axis=-1))  # first occurrence, as the C `if (x[i] < min)` scan
    mx = _first(x, np.argmax(x, axis=-1))
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    mn = np.where(mn > 0, F32(0), mn).astype(F32)
    flat = (mx <= mn) if strict_le else (mx == mn)
    fn = F32(nmax)

    def err(scale, m, lf):
        diff = (scale[:, None] * lf + m[:, None]) - x
        diff = np.abs(diff) if use_mad else diff * diff
        return _seqsum(w * diff)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / (mx - mn)
        scale = (F32(1) / iscale).astype(F32)
        L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        best = err(scale, mn, L.astype(F32))
        for step in range(nstep + 1):
            c = F32(F32(F32(rmin) + F32(F32(rdelta) * F32(step))) + fn)
            iscale = c / (mx - mn)  # uses the min found so far, as in C
            laux = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
            lf = laux.astype(F32)
            wl = w * lf
            sum_l = _seqsum(wl)
            sum_l2 = _seqsum(wl * lf)
            sum_xl = _seqsum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F32(0), this_min).astype(F32)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
            cur = err(this_scale, this_min, lf)
            better = (D > 0) & (cur < best) & ~flat
            L = np.where(better[:, None], laux, L)
            best = np.where(better, cur, best).astype(F32)
            scale = np.where(better, this_scale, scale).astype(F32)
            mn = np.where(better, this_min, mn).astype(F32)
    scale = np.where(flat, F32(0), scale).astype(F32)
    L = np.where(flat[:, None], 0, L)
    return scale, (-mn).astype(F32), L


def make_qkx3_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad=False):
    """C `make_qkx3_quants` with explicit weights (the only way the impl paths call it)."""
    return make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad, strict_le=True)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """C `make_qp_quants` on rows of x (N, n): non-negative scales -> codes <= nmax. Returns (scale, L)."""
    x = np.asarray(x, dtype=F32)
    qw = np.asarray(qw, dtype=F32)
    n = x.shape[1]
    mx = np.maximum(x.max(axis=-1), F32(0))
    zero = mx < GROUP_MAX_EPS
    fn = F32(nmax)
    wx = qw * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fn / mx
        L = nearest_int(iscale[:, None] * x)
        scale = F32(1) / iscale
        diff = x - scale[:, None] * L.astype(F32)
        best = _seqsum((qw * diff) * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = F32(F32(F32(0.1) * F32(step)) + fn) / mx
            scale_is = F32(1) / iscale_is
            lq = np.minimum(nmax, nearest_int(iscale_is[:, None] * x))
            diff = x - scale_is[:, None] * lq.astype(F32)
            mse = _seqsum((qw * diff) * diff)
            better = mse < best
            best = np.where(better, mse, best).astype(F32)
            iscale = np.where(better, iscale_is, iscale).astype(F32)
        L = np.minimum(nmax, nearest_int(iscale[:, None] * x))
        lf = L.astype(F32)
        sumlx = _seqsum(wx * lf)
        suml2 = _seqsum((qw * lf) * lf)
        for _ in range(5):  # a pass that changes nothing leaves the state as it was: no early exit needed
            for i in range(n):
                li = L[:, i].astype(F32)
                slx = sumlx - wx[:, i] * li
                sl2 = suml2 - (qw[:, i] * li) * li
                ok = (slx > 0) & (sl2 > 0)
                new_l = np.minimum(nmax, nearest_int((x[:, i] * sl2) / slx))
                ok &= new_l != L[:, i]
                nf = new_l.astype(F32)
                slx = slx + wx[:, i] * nf
                sl2 = sl2 + (qw[:, i] * nf) * nf
                ok &= (slx * slx) * suml2 > (sumlx * sumlx) * sl2
                L[:, i] = np.where(ok, new_l, L[:, i])
                sumlx = np.where(ok, slx, sumlx).astype(F32)
                suml2 = np.where(ok, sl2, suml2).astype(F32)
        out = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    out = np.where(zero, F32(0), out).astype(F32)
    L = np.where(zero[:, None], 0, L)
    return out, L


# ----------------------------------------------------------------------------- 32-value block types


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """qs[j] = q[j] | q[j+16] << 4 for a 32-value block (legacy types)."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _qh_bits(q: np.ndarray) -> np.ndarray:
    """The 5th bits of a 32-value block as a little-endian uint32 (bit j for value j)."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    qh = np.bitwise_or.reduce(bits, axis=-1).astype("<u4")
    return np.ascontiguousarray(qh).view(np.uint8).reshape(-1, 4)


def _absmax_signed(x):
    """The first value of largest |x| (C `if (amax < fabsf(v))`, +0.0 for an all-zero block)."""
    ax = np.abs(x)
    amax = ax.max(axis=-1)
    mx = _first(x, np.argmax(ax, axis=-1))
    return np.where(amax > 0, mx, F32(0)).astype(F32)


def _inverse(d: np.ndarray) -> np.ndarray:
    """C `id = d ? 1.0f/d : 0.0f` in float32."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _symmetric_codes(x: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(d, codes) of q4_0 (half 8) and q5_0 (half 16): d = max / -half, q = min(2 half - 1, (int)(x/d + half + 0.5))."""
    d = (_absmax_signed(x) / F32(-half)).astype(F32)
    q = np.minimum(2 * half - 1, _trunc_int(x * _inverse(d)[:, None] + F32(half + 0.5))) & 0xFF
    return d, q


def _affine_codes(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d, min, unclipped codes) of q4_1 (levels 15) and q5_1 (31): d = (max - min) / levels."""
    mn = _first(x, np.argmin(x, axis=-1))
    mx = _first(x, np.argmax(x, axis=-1))
    d = ((mx - mn) / F32(levels)).astype(F32)
    return d, mn, _trunc_int((x - mn[:, None]) * _inverse(d)[:, None] + F32(0.5))


def quantize_row_q4_0_ref(x: np.ndarray) -> np.ndarray:
    """C `quantize_row_q4_0_ref` on blocks x (nb, 32)."""
    d, q = _symmetric_codes(x, 8)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _pack_nibbles(q)], axis=1)


def quantize_row_q4_1_ref(x: np.ndarray) -> np.ndarray:
    """C `quantize_row_q4_1_ref` on blocks x (nb, 32)."""
    d, mn, codes = _affine_codes(x, 15)
    q = np.minimum(15, codes) & 0xFF
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _u16_bytes(fp32_to_fp16_bits(mn)),
                           _pack_nibbles(q)], axis=1)


def quantize_row_q5_0_ref(x: np.ndarray) -> np.ndarray:
    """C `quantize_row_q5_0_ref` on blocks x (nb, 32)."""
    d, q = _symmetric_codes(x, 16)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _qh_bits(q), _pack_nibbles(q)], axis=1)


def quantize_row_q5_1_ref(x: np.ndarray) -> np.ndarray:
    """C `quantize_row_q5_1_ref` on blocks x (nb, 32)."""
    d, mn, codes = _affine_codes(x, 31)
    q = codes & 0xFF  # (uint8_t), no MIN in C
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _u16_bytes(fp32_to_fp16_bits(mn)),
                           _qh_bits(q), _pack_nibbles(q)], axis=1)


def quantize_row_q8_0_ref(x: np.ndarray) -> np.ndarray:
    """C `quantize_row_q8_0_ref` on blocks x (nb, 32)."""
    amax = np.abs(x).max(axis=-1)
    d = (amax / F32(127)).astype(F32)
    q = _roundf(x * _inverse(d)[:, None]).astype(np.int64).astype(np.int8).view(np.uint8)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), q], axis=1)


def _row_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """`weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])`, sigma2 = sum(x^2)/n_per_row over the whole row."""
    sigma2 = _seqsum(x * x) / F32(x.shape[1])
    return (qw[None, :] * np.sqrt(sigma2[:, None] + x * x)).astype(F32)


def quantize_q4_0_impl(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """C `quantize_row_q4_0_impl` (imatrix path) on rows x (rows, cols)."""
    w = _row_weights(x, qw).reshape(-1, 32)
    d, L = make_qx_quants(x.reshape(-1, 32), 8, 1, w)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _pack_nibbles(L)], axis=1)


def quantize_q5_0_impl(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """C `quantize_row_q5_0_impl` (imatrix path) on rows x (rows, cols)."""
    w = _row_weights(x, qw).reshape(-1, 32)
    d, L = make_qx_quants(x.reshape(-1, 32), 16, 1, w)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _qh_bits(L), _pack_nibbles(L)], axis=1)


def quantize_q4_1_impl(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """C `quantize_row_q4_1_impl` (imatrix path) on rows x (rows, cols)."""
    w = _row_weights(x, qw).reshape(-1, 32)
    d, the_min, L = make_qkx3_quants(x.reshape(-1, 32), w, 15, -0.9, 0.05, 36)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _u16_bytes(fp32_to_fp16_bits(-the_min)),
                           _pack_nibbles(L)], axis=1)


def quantize_q5_1_impl(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """C `quantize_row_q5_1_impl` (imatrix path) on rows x (rows, cols)."""
    w = _row_weights(x, qw).reshape(-1, 32)
    d, the_min, L = make_qkx3_quants(x.reshape(-1, 32), w, 31, -0.9, 0.05, 36)
    return np.concatenate([_u16_bytes(fp32_to_fp16_bits(d)), _u16_bytes(fp32_to_fp16_bits(-the_min)),
                           _qh_bits(L), _pack_nibbles(L)], axis=1)


# ----------------------------------------------------------------------------- k-quants


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 bytes of 6-bit scales and mins of q4_K/q5_K (the inverse of C `get_scale_min_k4`)."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    s = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return s


def get_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C `get_scale_min_k4` for j = 0..7 at once: (sc, m), each (nb, 8) uint8."""
    q = scales.astype(np.uint8)
    sc = np.concatenate([q[:, 0:4] & 63, (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([q[:, 4:8] & 63, (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def _k4_final(xs, scales_bytes, d16, dmin16, L, nmax):
    """The final requantisation of q4_K/q5_K against the stored fp16 d/dmin and 6-bit scales; a sub-block
    whose d is 0 keeps the codes of the search (`if (!d) continue;`)."""
    sc, m = get_scale_min_k4(scales_bytes)
    d = fp16_bits_to_fp32(d16)[:, None] * sc.astype(F32)  # (nb, 8)
    dm = fp16_bits_to_fp32(dmin16)[:, None] * m.astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        lq = np.clip(nearest_int((xs + dm[..., None]) / d[..., None]), 0, nmax)
    return np.where((d != 0)[..., None], lq, L.reshape(xs.shape))


def _k4_scales_ref(scales, mins):
    """q4_K/q5_K ref: the 6-bit scale/min codes from the per-sub-block (scale, min) and d/dmin."""
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
    d16 = fp32_to_fp16_bits(max_scale / F32(63))
    dmin16 = fp32_to_fp16_bits(max_min / F32(63))
    return ls, lm, d16, dmin16


def _per_block(qw: np.ndarray, n_blocks: int, size: int) -> np.ndarray:
    """The per-column weights cut like the rows: row r's block b gets qw[b*size:(b+1)*size]."""
    per_row = qw.reshape(-1, size)
    tiled = np.broadcast_to(per_row[None], (n_blocks // per_row.shape[0],) + per_row.shape)
    return tiled.reshape(n_blocks, size)


def _k_search(x: np.ndarray, nmax: int, qw: np.ndarray | None):
    """Per-32-value search of q4_K/q5_K: ref (make_qkx2_quants) or impl (make_qkx3 + make_qp_quants).
    x is (nb, 256); returns (ls, lm, d16, dmin16, L)."""
    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32)
    if qw is None:
        av_x = np.sqrt(_seqsum(xs * xs) / F32(32))
        w = (av_x[:, None] + np.abs(xs)).astype(F32)
        rmin, rdelta, nstep = (-1.0, 0.1, 20) if nmax == 15 else (-0.5, 0.1, 15)
        scales, mins, L = make_qkx2_quants(xs, w, nmax, rmin, rdelta, nstep)
        ls, lm, d16, dmin16 = _k4_scales_ref(scales.reshape(nb, 8), mins.reshape(nb, 8))
        return ls, lm, d16, dmin16, L
    sigma2 = (F32(2) * _seqsum(x * x)) / F32(QK_K)
    w = (_per_block(qw, nb, QK_K) * np.sqrt(sigma2[:, None] + x * x)).astype(F32).reshape(nb * 8, 32)
    sw = _seqsum(w).reshape(nb, 8)
    scales, mins, L = make_qkx3_quants(xs, w, nmax, -0.9, 0.05, 36)
    d_block, Ls = make_qp_quants(scales.reshape(nb, 8), 63, sw)
    m_block, Lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
    ls, lm = Ls & 0xFF, Lm & 0xFF  # uint8_t
    if nmax == 31:  # q5_K impl clamps, q4_K impl does not
        ls, lm = np.minimum(63, ls), np.minimum(63, lm)
    return ls, lm, fp32_to_fp16_bits(d_block), fp32_to_fp16_bits(m_block), L


def quantize_q4_K(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """C `quantize_row_q4_K_ref` (qw None) or `quantize_row_q4_K_impl` on blocks x (nb, 256)."""
    nb = x.shape[0]
    ls, lm, d16, dmin16, L = _k_search(x, 15, qw)
    sbytes = _pack_scales_k4(ls, lm)
    L = _k4_final(x.reshape(nb, 8, 32), sbytes, d16, dmin16, L, 15).astype(np.uint8)
    L = L.reshape(nb, 4, 2, 32)  # 64-value chunks: low nibble = first 32, high nibble = next 32
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([_u16_bytes(d16), _u16_bytes(dmin16), sbytes, qs], axis=1)


def quantize_q5_K(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """C `quantize_row_q5_K_ref` (qw None) or `quantize_row_q5_K_impl` on blocks x (nb, 256)."""
    nb = x.shape[0]
    ls, lm, d16, dmin16, L = _k_search(x, 31, qw)
    sbytes = _pack_scales_k4(ls, lm)
    L = _k4_final(x.reshape(nb, 8, 32), sbytes, d16, dmin16, L, 31).astype(np.uint8)
    L = L.reshape(nb, 4, 2, 32)
    lo, hi = L[:, :, 0], L[:, :, 1]
    qs = ((lo & 0xF) | ((hi & 0xF) << 4)).reshape(nb, 128)
    shift = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    qh = np.bitwise_or.reduce((((lo >> 4) & 1) << shift) | (((hi >> 4) & 1) << (shift + 1)), axis=1)
    return np.concatenate([_u16_bytes(d16), _u16_bytes(dmin16), sbytes, qh.astype(np.uint8), qs], axis=1)


def quantize_q6_K(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """C `quantize_row_q6_K_ref` (qw None) or `quantize_row_q6_K_impl` on blocks x (nb, 256)."""
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    w = None if qw is None else _per_block(qw, nb * 16, 16)
    scales, L = make_qx_quants(xs, 32, 1, w)
    scales = scales.reshape(nb, 16)
    max_scale = _first(scales, np.argmax(np.abs(scales), axis=-1))
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = (F32(-128) / max_scale).astype(F32)
        d16 = fp32_to_fp16_bits(F32(1) / iscale)
        sc = (np.minimum(127, nearest_int(iscale[:, None] * scales)) & 0xFF).astype(np.uint8).view(np.int8)
        d = fp16_bits_to_fp32(d16)[:, None] * sc.astype(F32)  # (nb, 16)
        lq = np.clip(nearest_int(x.reshape(nb, 16, 16) / d[..., None]), -32, 31) + 32
    L = np.where((d != 0)[..., None], lq, L.reshape(nb, 16, 16)).astype(np.uint8).reshape(nb, 2, 4, 32)
    # per 128 values: ql[l] = L[l] | L[l+64] << 4, ql[l+32] = L[l+32] | L[l+96] << 4
    ql = np.concatenate([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                         (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _u16_bytes(d16)], axis=1)
    out[zero] = 0  # memset(&y[i], 0, sizeof(block_q6_K)); d = fp16(0.f)
    return out


# ----------------------------------------------------------------------------- public API

_REF = {"q4_0": quantize_row_q4_0_ref, "q4_1": quantize_row_q4_1_ref, "q5_0": quantize_row_q5_0_ref,
        "q5_1": quantize_row_q5_1_ref, "q8_0": quantize_row_q8_0_ref}
_IMPL = {"q4_0": quantize_q4_0_impl, "q4_1": quantize_q4_1_impl, "q5_0": quantize_q5_0_impl,
         "q5_1": quantize_q5_1_impl}
_K = {"q4_k": quantize_q4_K, "q5_k": quantize_q5_K, "q6_k": quantize_q6_K}
_CHUNK_VALUES = 1 << 20  # values per vectorised batch (bounds the temporaries to a few tens of MB)


def quantize_rows(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """C `ggml_quantize_chunk(type, x, ..., nrows, n_per_row, imatrix)`: x (rows, cols) -> GGUF block bytes
    (rows, cols / block * type_size) uint8, the layout gguf-py's `dequantize` reads.

    imatrix: per-column importance (length cols) or None (the `_ref` path; q8_0 always ignores it)."""
    q = _check_qtype(qtype)
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, cols), got shape {x.shape}")
    rows, cols = x.shape
    bs, ts = BLOCK[q]
    if cols % bs:
        raise ValueError(f"{q}: row width {cols} is not a multiple of the block size {bs}")
    qw = None
    if imatrix is not None and q != "q8_0":
        qw = np.asarray(imatrix, dtype=F32).reshape(-1)
        if qw.size != cols:
            raise ValueError(f"imatrix has {qw.size} values, expected one per column ({cols})")
    out = np.empty((rows, cols // bs * ts), dtype=np.uint8)
    step = max(1, _CHUNK_VALUES // cols)
    for r0 in range(0, rows, step):
        xr = np.ascontiguousarray(x[r0:r0 + step])
        n = xr.shape[0]
        if q in _K:
            blocks = _K[q](xr.reshape(-1, bs), qw)
        elif qw is not None:
            blocks = _IMPL[q](xr, qw)
        else:
            blocks = _REF[q](xr.reshape(-1, bs))
        out[r0:r0 + n] = blocks.reshape(n, -1)
    return out


def dequantize_rows(blocks: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """GGUF block bytes -> float32 (rows, cols), by gguf-py's `dequantize` (the C `dequantize_row_*`)."""
    from gguf.quants import dequantize

    q = _check_qtype(qtype)
    bs, ts = BLOCK[q]
    b = np.asarray(blocks, dtype=np.uint8).reshape(-1, cols // bs * ts)
    return np.asarray(dequantize(b, _gguf_type(q)), dtype=F32).reshape(-1, cols)


def fake_quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """dequantize(quantize(x)) in float32, same shape as x (rows along the last axis)."""
    x = np.asarray(x, dtype=F32)
    cols = x.shape[-1]
    out = dequantize_rows(quantize_rows(x.reshape(-1, cols), qtype, imatrix), qtype, cols)
    return out.reshape(x.shape)
