"""Where cached artefacts (tiny models, hub corpora) live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache dir: $UNLEARN_AUDIT_CACHE, else $XDG_CACHE_HOME/unlearn-audit, else ~/.cache/unlearn-audit."""
    explicit = os.environ.get("UNLEARN_AUDIT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unlearn-audit"
