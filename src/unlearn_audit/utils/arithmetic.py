"""Portable CPU arithmetic for the built-in world: the same tiny models and numbers on any x86-64 CPU with AVX2.

Why: a tiny model's weights, and the quick demo's numbers, depend on the order in which the CPU kernels sum,
and two libraries choose that order by the processor. MKL (torch's fp32 matrix products) dispatches by
vendor and instruction set: on an Intel Xeon `MKL_CBWR=AVX2` changes a product, on an AMD EPYC it does not,
because MKL honours branches other than AUTO and COMPATIBLE only on Intel processors (Intel MKL developer
guide, "Specifying Code Branches"); ATen's vectorized kernels (reductions, softmax, AdamW's updates) run
AVX2 or AVX-512 code by what the CPU has. The quick demo's seed-0 GA run, the same code and lock, brought
back 53% of its forgetting under int4 on an Intel Xeon and 0% and 20% on two AMD EPYCs (docs/findings.md
section 21). MKL's COMPATIBLE branch (SSE2 without approximate reciprocals: "the same results on Intel and
Intel compatible processors") and ATen's AVX2 kernels fix both orders; the built-in world's processes run
one thread each (MKL's reproducibility holds for a fixed thread count, and ATen splits parallel reductions
by it). The price: fp32 products at SSE2 speed, about 2x slower tiny training.

Both libraries read their setting once, at a process's first kernel (importing transformers' trainer runs one),
so the command line asks for it before it imports anything heavy (`cli.computes_in_the_built_in_world`), and the
grid's spawned workers inherit it; a process that has already computed keeps its CPU's own arithmetic
(reported, never mixed with portable workers).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

PORTABLE = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2"}
MARK = "UNLEARN_AUDIT_ARITHMETIC"  # "portable" in a process (and its workers) that asked for it
MKL_CBWR_BRANCH = 1  # mkl_service.h: query the branch
MKL_CBWR_COMPATIBLE = 3
PORTABLE_THREADS = 1


@functools.cache
def _mkl():
    """torch's statically linked MKL service functions, or None (a build without MKL: ARM, macOS)."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        lib.mkl_serv_cbwr_get.restype = ctypes.c_int
        return lib
    except (OSError, AttributeError):
        return None


def mkl_branch() -> int | None:
    """MKL's code branch in this process (3 = COMPATIBLE; 1 = off: dispatch by CPU), None without MKL."""
    lib = _mkl()
    return None if lib is None else int(lib.mkl_serv_cbwr_get(MKL_CBWR_BRANCH))


def portable_in_effect() -> bool:
    """Whether this process computes with the portable arithmetic. Reading ATen's capability and MKL's branch
    fixes them, so ATen is read first: where it was fixed already (importing transformers' trainer runs a
    kernel), MKL is left untouched for the process's own branch."""
    import torch

    return (os.environ.get(MARK) == "portable" and torch.backends.cpu.get_cpu_capability() == "AVX2"
            and mkl_branch() == MKL_CBWR_COMPATIBLE)


def portable_available() -> bool:
    """An x86-64 CPU with AVX2 under a torch build with MKL: where the portable arithmetic exists (cpuinfo's
    answer, which does not fix ATen's capability as reading it would)."""
    import torch

    return torch.cpu._is_avx2_supported() and _mkl() is not None


def use_portable_arithmetic() -> bool:
    """Ask for the portable arithmetic in this process and the workers it spawns; True if it is in effect.
    Where it cannot be (no AVX2/MKL, or this process already computed with torch) nothing is changed, so a
    grid never mixes a native main process with portable workers."""
    if os.environ.get(MARK) == "portable":
        return portable_in_effect()
    if not portable_available():
        return False
    before = {k: os.environ.get(k) for k in (*PORTABLE, MARK)}
    os.environ.update(PORTABLE, **{MARK: "portable"})
    if portable_in_effect():
        return True
    for key, value in before.items():  # too late in this process: leave it as it was
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return False


def grid_threads(workers: int) -> int:
    """Threads for each of a grid's processes: one under the portable arithmetic, else the cores shared out."""
    from .threads import default_threads

    if os.environ.get(MARK) == "portable":
        return PORTABLE_THREADS
    return max(1, default_threads() // max(1, workers))


def arithmetic() -> str:
    """'portable' or 'native' (this CPU's own kernels): recorded with every run and in model cache keys."""
    return "portable" if portable_in_effect() else "native"


def describe_arithmetic(portable: bool) -> str:
    """The line `demo` prints about it."""
    if portable:
        return ("arithmetic: portable (MKL's COMPATIBLE branch, ATen's AVX2 kernels, one thread per process): "
                "the same tiny models and numbers on any x86-64 CPU with AVX2 (docs/reproducibility.md)")
    return ("arithmetic: this CPU's own kernels (the portable arithmetic needs an x86-64 CPU with AVX2 and a "
            "process that has not computed yet, e.g. the command line): numbers may differ on another CPU")
