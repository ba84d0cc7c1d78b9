"""One fused pass of the RTN bin statistics over a chunk of (target, unlearned) rows, compiled by numba.

The torch path in `bins.tally_groups` needs ~30 passes over memory per chunk (quantize both models,
masks, masked sums), which made `bins` 5x slower than reading the weights. Here every weight is read
once: per group the scale of both models, then per weight its codes, dequantized values and the
counters, all in float32 like the torch path (sums accumulate in float64). Rows run in parallel.
`bins` falls back to the torch path when numba is not installed; a test checks both agree.
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


def _block_stats(xt, xu, c0, c1, st, su, zt, zu, safe_t, safe_u, half, qmin, qmax, cap, counts, sums):
    """Counters and sums of weights c0:c1 of one group, without per-weight branches."""
    same_code = same_value = zero_bin = erased = changed = movable = 0
    mass = erased_mass = dot = sq = np.float32(0.0)
    for c in range(c0, c1):
        t, u = xt[c], xu[c]
        ct = min(max(np.float32(np.rint(t / safe_t)) + zt, qmin), qmax)
        cu = min(max(np.float32(np.rint(u / safe_u)) + zu, qmin), qmax)
        qt = (ct - zt) * st
        qu = (cu - zu) * su
        d = u - t
        dw = abs(d)
        at = abs(t)
        ch = d != 0
        sv = qt == qu
        same_code += ct == cu
        same_value += sv
        changed += ch
        zero_bin += ch & (at < half)
        erased += ch & sv
        movable += at < cap
        mass += dw
        erased_mass += dw if sv else np.float32(0.0)
        dot += (qu - qt) * d
        sq += d * d
    counts[1] += changed
    counts[2] += same_code
    counts[3] += same_value
    counts[4] += zero_bin
    counts[5] += erased
    counts[6] += movable
    sums[0] += mass
    sums[1] += erased_mass
    sums[2] += dot
    sums[3] += sq


def _rtn_stats(wt, wu, group, symmetric, divisor, bits, qmin, qmax, cap, steps):
    """Per-row counters (rows, 8) and sums (rows, 4); writes each group's step of the target into `steps`."""
    rows, cols = wt.shape
    counts = np.zeros((rows, 8), dtype=np.int64)
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
                             fcap, counts[r], sums[r])
        counts[r, 0] = cols
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
    _block_stats = _compile(_block_stats, inline="always", fastmath={"reassoc", "nsz"})
    _rtn_stats = _compile(_rtn_stats, parallel=True, nogil=True)  # the next chunk is read meanwhile


def rtn_chunk_stats(wt: np.ndarray, wu: np.ndarray, group: int, symmetric: bool, divisor: float, bits: int,
                    qmin: int, qmax: int, cap: float | None) -> tuple[dict, np.ndarray]:
    """Counters and sums of one chunk (rows, cols) of float32 values or bf16 bit patterns (uint16), with
    groups of `group` columns (the last one of a row may be shorter and gets its own scale), and the
    target's step per (row, group)."""
    rows, cols = wt.shape
    steps = np.empty((rows, (cols + group - 1) // group), dtype=np.float32)
    counts, sums = _rtn_stats(np.ascontiguousarray(wt), np.ascontiguousarray(wu), group, symmetric, divisor,
                              bits, qmin, qmax, -1.0 if cap is None else float(cap), steps)
    totals = dict(zip(COUNTS, (int(v) for v in counts.sum(axis=0))))
    totals.update(zip(SUMS, (float(v) for v in sums.sum(axis=0))))
    return totals, steps
