"""Atomic file output and content hashing.

Every output of the toolkit is written through these helpers so that an interrupted run never leaves a
half-written file behind: data goes to a temporary sibling first and is renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError


def current_umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and straight back (not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) the mode an ordinary one would get under the umask,
    so outputs are as readable by a team as any file the user writes."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temporary file and rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        ordinary_mode(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def as_json(obj: Any) -> str:
    """Paths and model specs (os.PathLike) are written as the path or name they stand for."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps_json(obj: Any) -> str:
    """Serialize deterministically (sorted keys are NOT used: key order is meaningful in our logs)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=as_json) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (see `atomic_write_text`)."""
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike, what: str | None = None) -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line `UserError`."""
    path = Path(path)
    label = f"{what} ({path})" if what else str(path)
    if not path.is_file():
        raise UserError(f"missing file: {label}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON in {label}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise UserError(f"{label} is not UTF-8 text") from None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces `final` only if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def ordinary_modes(root: Path) -> None:
    """Give a finished output tree the modes ordinary files get under the umask (libraries such as
    safetensors write through private temporary files)."""
    ordinary_mode(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            ordinary_mode(Path(dirpath) / name, directory=True)
        for name in filenames:
            ordinary_mode(Path(dirpath) / name)


def replace_dir(src: Path, final: Path) -> None:
    """Move directory `src` to `final`, replacing any previous `final` with one rename each way."""
    ordinary_modes(src)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(src, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of raw bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Content hash of a JSON-serialisable object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=as_json).encode("utf-8"))


def sha256_files(paths: Iterable[Path], root: Path) -> str:
    """Hash of several files' relative names and bytes; identical trees give identical hashes."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode("utf-8") + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (a temporary file renamed into place) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    ordinary_mode(path)
    return path
