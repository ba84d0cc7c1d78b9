"""One fused pass of the bin statistics over a chunk of (target, unlearned) weights, compiled by numba: RTN
by rows, bitsandbytes' FP4/NF4 codebooks by blocks of 64.

The torch path in `bins.tally_groups` needs ~30 passes over memory per chunk (quantize both models,
masks, masked sums), which made `bins` 5x slower than reading the weights. Here every weight is read
once: per group the scale of both models, then per weight its codes, dequantized values and the
counters, all in float32 like the torch path (sums accumulate in float64), and the histograms at the
sampled positions `bins.sample_positions` picks. Rows (or segments of blocks) run in parallel. `bins`
falls back to the torch path when numba is not installed; a test checks both agree.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
    from numba.extending import overload
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None

# counters returned per chunk (int64) and sums (float64), in this order
COUNTS = ("n", "changed", "same_code", "same_value", "zero_bin", "erased", "movable", "cap_inside")
SUMS = ("mass", "erased_mass", "dot", "sq")


def available() -> bool:
    return numba is not None


def _to_f32(x):
    """A row as float32; bf16 rows arrive as their uint16 bit patterns (no conversion pass in torch)."""
    return x


if numba is not None:
    @overload(_to_f32)
    def _to_f32_impl(x):
        if x.dtype == numba.types.uint16:
            return lambda x: (x.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return lambda x: x


def _group_scale(x, lo_col, hi_col, symmetric, divisor, bits):
    """(scale, zero point) of x[lo_col:hi_col] in float32, as `schemes.quantize_groups` computes them."""
    if symmetric:
        amax = np.float32(0.0)
        for c in range(lo_col, hi_col):
            v = abs(x[c])
            if v > amax:
                amax = v
        return amax / divisor, np.float32(0.0)
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    for c in range(lo_col, hi_col):
        if x[c] < lo:
            lo = x[c]
        if x[c] > hi:
            hi = x[c]
    scale = (hi - lo) / np.float32(2**bits - 1)
    safe = scale if scale > 0 else np.float32(1.0)
    return scale, np.float32(np.rint(-lo / safe))


BLOCK = 128  # weights whose float32 partial sums are added to the float64 row sums


def _codebook_codes(x, c0, c1, safe, scale, table, codes, values):
    """Codebook codes and dequantized values of x[c0:c1]: the entry nearest to x / safe, the first code on a
    tie (torch's argmin). `table` (2, k) holds the codebook's distinct values ascending and the code of each
    (the first index where a value repeats). The nearest entry is the last one at
    or below x / safe or the next, so the entries below are counted first and only those two distances are
    compared (float32, as torch computes all of them: farther entries are farther after rounding too)."""
    n, k = c1 - c0, table.shape[1]
    for i in range(n):
        values[i] = x[c0 + i] / safe
        codes[i] = 0
    for j in range(1, k - 1):
        v = table[0, j]
        for i in range(n):
            codes[i] += np.float32(1.0) if v <= values[i] else np.float32(0.0)
    for i in range(n):
        scaled, lo = values[i], int(codes[i])
        d_lo, d_hi = abs(scaled - table[0, lo]), abs(scaled - table[0, lo + 1])
        e = lo + 1 if d_hi < d_lo or (d_hi == d_lo and table[1, lo + 1] < table[1, lo]) else lo
        codes[i], values[i] = table[1, e], table[0, e] * scale


def _block_stats(xt, xu, c0, c1, st, su, zt, zu, safe_t, safe_u, half, qmin, qmax, cap, coded, counts, sums):
    """Counters and sums of weights c0:c1 of one group, without per-weight branches. RTN codes each weight
    here (`coded` None: numba compiles that case without the other branch); codebook schemes pass the
    block's codes and dequantized values (rows: target codes, values, unlearned codes, values). The
    counters are float32 within a block (exact: at most BLOCK each) so that the loop is one type and
    vectorizes."""
    one, nil = np.float32(1.0), np.float32(0.0)
    same_code = same_value = zero_bin = erased = changed = movable = nil
    mass = erased_mass = dot = sq = nil
    for c in range(c0, c1):
        t, u = xt[c], xu[c]
        if coded is None:
            ct = min(max(np.float32(np.rint(t / safe_t)) + zt, qmin), qmax)
            cu = min(max(np.float32(np.rint(u / safe_u)) + zu, qmin), qmax)
            qt, qu = (ct - zt) * st, (cu - zu) * su
        else:
            ct, qt, cu, qu = coded[0, c - c0], coded[1, c - c0], coded[2, c - c0], coded[3, c - c0]
        d = u - t
        dw = abs(d)
        at = abs(t)
        ch = one if d != 0 else nil
        sv = one if qt == qu else nil
        same_code += one if ct == cu else nil
        same_value += sv
        changed += ch
        zero_bin += ch if at < half else nil
        erased += ch * sv
        movable += one if at < cap else nil
        mass += dw
        erased_mass += dw * sv
        dot += (qu - qt) * d
        sq += d * d
    counts[1] += int(changed)
    counts[2] += int(same_code)
    counts[3] += int(same_value)
    counts[4] += int(zero_bin)
    counts[5] += int(erased)
    counts[6] += int(movable)
    sums[0] += mass
    sums[1] += erased_mass
    sums[2] += dot
    sums[3] += sq


def _bin_of(edges, x):
    """The histogram bin of x as np.histogram counts it (left-closed bins, the last one closed; -1 outside)."""
    v = np.float64(x)
    last = len(edges) - 1
    if v < edges[0] or v > edges[last]:
        return -1
    if v == edges[last]:
        return last - 1
    lo, hi = 0, last
    while hi - lo > 1:  # edges[lo] <= v < edges[hi]
        mid = (lo + hi) // 2
        if edges[mid] <= v:
            lo = mid
        else:
            hi = mid
    return lo


def _sampled_histograms(xt, xu, lo, hi, flat_start, units, group, stride, edges, hist_dw, hist_w):
    """Histograms of |dw| / Delta and |w_t| / Delta over the changed weights of xt[lo:hi] at the chunk's
    sampling stride (flat positions flat_start + c with (flat_start + c) % stride == 0), Delta being
    units[(c - lo) // group]; returns how many were taken."""
    taken = 0
    for c in range(lo + (stride - (flat_start + lo) % stride) % stride, hi, stride):
        d = xu[c] - xt[c]
        if d != 0:
            unit = units[(c - lo) // group]
            unit = unit if unit > 0 else np.float32(1.0)
            b = _bin_of(edges, abs(d) / unit)
            if b >= 0:
                hist_dw[b] += 1
            b = _bin_of(edges, abs(xt[c]) / unit)
            if b >= 0:
                hist_w[b] += 1
            taken += 1
    return taken


def _rtn_stats(wt, wu, group, symmetric, divisor, bits, qmin, qmax, cap, steps, stride, edges, hist_dw, hist_w):
    """Per-row counters (rows, 9: the last one the weights the histograms took) and sums (rows, 4); writes
    each group's step of the target into `steps` and each row's sampled histograms into `hist_dw`, `hist_w`."""
    rows, cols = wt.shape
    counts = np.zeros((rows, 9), dtype=np.int64)
    sums = np.zeros((rows, 4), dtype=np.float64)
    n_groups = (cols + group - 1) // group
    fdiv = np.float32(divisor)
    fqmin, fqmax = np.float32(qmin), np.float32(qmax)
    fcap = np.float32(cap)  # -1: no cap given (no weight counts as movable)
    for r in numba.prange(rows):
        xt, xu = _to_f32(wt[r]), _to_f32(wu[r])
        for gi in range(n_groups):
            c0 = gi * group
            c1 = min(c0 + group, cols)
            st, zt = _group_scale(xt, c0, c1, symmetric, fdiv, bits)
            su, zu = _group_scale(xu, c0, c1, symmetric, fdiv, bits)
            steps[r, gi] = st
            safe_t = st if st > 0 else np.float32(1.0)
            safe_u = su if su > 0 else np.float32(1.0)
            half = st / np.float32(2.0)
            if fcap >= 0 and half > fcap:
                counts[r, 7] += c1 - c0
            for b0 in range(c0, c1, BLOCK):
                _block_stats(xt, xu, b0, min(b0 + BLOCK, c1), st, su, zt, zu, safe_t, safe_u, half, fqmin, fqmax,
                             fcap, None, counts[r], sums[r])
        counts[r, 0] = cols
        counts[r, 8] = _sampled_histograms(xt, xu, 0, cols, r * cols, steps[r], group, stride, edges, hist_dw[r],
                                           hist_w[r])
    return counts, sums


CODEBOOK_BLOCK = 64  # bitsandbytes' FP4/NF4 blocks, over the flattened row-major tensor


def _codebook_stats(wt, wu, table, halfwidth, cap, segments, stride, edges, hist_dw, hist_w):
    """Counters (segments, 9) and sums (segments, 4) of flat weights in whole blocks of 64, each scaled by
    its absmax and coded to the nearest codebook entry; the zero bin's half-width is absmax * `halfwidth`
    and Delta (the histograms' unit) twice that. Segments of blocks run in parallel."""
    n_blocks = len(wt) // CODEBOOK_BLOCK
    per = (n_blocks + segments - 1) // segments
    counts = np.zeros((segments, 9), dtype=np.int64)
    sums = np.zeros((segments, 4), dtype=np.float64)
    fcap, hw = np.float32(cap), np.float32(halfwidth)
    nil = np.float32(0.0)
    for s in numba.prange(segments):
        b_lo, b_hi = s * per, min((s + 1) * per, n_blocks)
        if b_lo >= b_hi:
            continue
        base = b_lo * CODEBOOK_BLOCK
        xt = _to_f32(wt[base:b_hi * CODEBOOK_BLOCK])
        xu = _to_f32(wu[base:b_hi * CODEBOOK_BLOCK])
        coded = np.empty((4, CODEBOOK_BLOCK), dtype=np.float32)
        unit = np.empty(1, dtype=np.float32)
        for b in range(b_hi - b_lo):
            c0, c1 = b * CODEBOOK_BLOCK, (b + 1) * CODEBOOK_BLOCK
            at_max = _group_scale(xt, c0, c1, True, np.float32(1.0), 4)[0]  # absmax
            au_max = _group_scale(xu, c0, c1, True, np.float32(1.0), 4)[0]
            safe_t = at_max if at_max > 0 else np.float32(1.0)
            safe_u = au_max if au_max > 0 else np.float32(1.0)
            half = at_max * hw
            if fcap >= 0 and half > fcap:
                counts[s, 7] += CODEBOOK_BLOCK
            _codebook_codes(xt, c0, c1, safe_t, at_max, table, coded[0], coded[1])
            _codebook_codes(xu, c0, c1, safe_u, au_max, table, coded[2], coded[3])
            _block_stats(xt, xu, c0, c1, at_max, au_max, nil, nil, safe_t, safe_u, half, nil, nil, fcap, coded,
                         counts[s], sums[s])
            unit[0] = np.float32(2.0) * half  # Delta: the zero bin's width
            counts[s, 8] += _sampled_histograms(xt, xu, c0, c1, base, unit, CODEBOOK_BLOCK, stride, edges,
                                                hist_dw[s], hist_w[s])
        counts[s, 0] = len(xt)
    return counts, sums


def _compile(fn, **options):
    """numba.njit with its on-disk cache (compiling takes seconds); without one where no cache folder is
    writable (numba refuses to cache there), so that `bins` still runs."""
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:
        return numba.njit(**options)(fn)


if numba is not None:
    _group_scale = _compile(_group_scale, inline="always")
    # reassociation only (the block sums may be reordered); no reciprocal division or contraction, so the
    # codes and dequantized values equal torch's
    _block_stats = _compile(_block_stats, fastmath={"reassoc", "nsz"})  # not inlined: numba drops an
    # inlined function's fastmath flags, and without reassociation the block loop does not vectorize
    _codebook_codes = _compile(_codebook_codes)
    _bin_of = _compile(_bin_of)
    _sampled_histograms = _compile(_sampled_histograms)
    _codebook_stats = _compile(_codebook_stats, parallel=True, nogil=True)
    _rtn_stats = _compile(_rtn_stats, parallel=True, nogil=True)  # the next chunk is read meanwhile


def rtn_chunk_stats(wt: np.ndarray, wu: np.ndarray, group: int, symmetric: bool, divisor: float, bits: int,
                    qmin: int, qmax: int, cap: float | None, stride: int = 1 << 30,
                    edges: np.ndarray | None = None) -> tuple[dict, np.ndarray, tuple]:
    """Counters and sums of one chunk (rows, cols) of float32 values or bf16 bit patterns (uint16), with
    groups of `group` columns (the last one of a row may be shorter and gets its own scale), the target's
    step per (row, group), and (dw histogram, w histogram, weights taken) over the changed weights at every
    `stride`-th flat position of the chunk (in units of the step, with `edges` as np.histogram's bins)."""
    rows, cols = wt.shape
    edges = np.array([0.0, 1.0]) if edges is None else np.ascontiguousarray(edges, dtype=np.float64)
    steps = np.empty((rows, (cols + group - 1) // group), dtype=np.float32)
    hist_dw = np.zeros((rows, len(edges) - 1), dtype=np.int64)
    hist_w = np.zeros_like(hist_dw)
    counts, sums = _rtn_stats(np.ascontiguousarray(wt), np.ascontiguousarray(wu), group, symmetric, divisor,
                              bits, qmin, qmax, -1.0 if cap is None else float(cap), steps, stride, edges,
                              hist_dw, hist_w)
    totals, taken = totals_of(counts, sums)
    return totals, steps, (hist_dw.sum(axis=0), hist_w.sum(axis=0), taken)


def totals_of(counts: np.ndarray, sums: np.ndarray) -> tuple[dict, int]:
    """The chunk's named counters and sums, and how many weights its histograms took."""
    counts = counts.sum(axis=0)
    totals = dict(zip(COUNTS, (int(v) for v in counts[:len(COUNTS)])))
    totals.update(zip(SUMS, (float(v) for v in sums.sum(axis=0))))
    return totals, int(counts[len(COUNTS)])


def search_table(table: np.ndarray) -> np.ndarray:
    """A codebook indexed by code as `_codebook_codes` searches it: (distinct values ascending, the first code
    of each), float32."""
    table = np.asarray(table, dtype=np.float32)
    first = {}
    for code, v in enumerate(table.tolist()):
        first.setdefault(v, code)
    values = sorted(first)
    return np.array([values, [first[v] for v in values]], dtype=np.float32)


def codebook_chunk_stats(wt: np.ndarray, wu: np.ndarray, table: np.ndarray, halfwidth: float, cap: float | None,
                         stride: int, edges: np.ndarray, segments: int = 64) -> tuple[dict, tuple]:
    """Counters and sums of flat weights (float32 values or bf16 bit patterns; a whole number of blocks of 64)
    under a bitsandbytes codebook, and (dw histogram, w histogram, weights taken) at every `stride`-th
    position, in units of the zero bin's width."""
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    hist_dw = np.zeros((segments, len(edges) - 1), dtype=np.int64)
    hist_w = np.zeros_like(hist_dw)
    counts, sums = _codebook_stats(np.ascontiguousarray(wt), np.ascontiguousarray(wu), search_table(table),
                                   float(halfwidth),
                                   -1.0 if cap is None else float(cap), segments, stride, edges, hist_dw, hist_w)
    totals, taken = totals_of(counts, sums)
    return totals, (hist_dw.sum(axis=0), hist_w.sum(axis=0), taken)
