"""Checks on model files that every loader shares (a leaf: it imports nothing else of the package's models)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def is_local(spec: str | Path) -> bool:
    """True when `spec` names an existing path, or can only be a path (absolute, relative with ./ or ../,
    home-relative, or more than one '/'): hub ids are 'name' or 'owner/name'."""
    text = str(spec)
    if Path(text).exists():
        return True
    return text.startswith(("/", "./", "../", "~", ".\\")) or text.count("/") > 1 or text.endswith("/")


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header is unreadable or whose data is cut short (a partial
    download or copy), before any library reads it."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or 8 + n > size:
                raise ValueError("no readable header")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        raise UserError(f"{path} is not a readable safetensors file (corrupt or not safetensors); "
                        "re-save or re-download it") from None
    if 8 + n + end > size:
        raise UserError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}; "
                        "re-save or re-download it")


def weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle files) of a local model folder."""
    safe = sorted(folder.glob("*.safetensors"))
    pickled = sorted(list(folder.glob("pytorch_model*.bin")) + list(folder.glob("*.pt")))
    return safe, pickled


def first_line(exc: BaseException) -> str:
    """The first line of an exception message, so the CLI can print one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
