"""MUSE from the Hugging Face hub (optional extra `hub`), materialised once into the MUSE layout.

Only used when the user names a hub alias such as `muse-news`; the embedded default never needs it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..utils.io import atomic_dir, atomic_write_json
from ..utils.paths import cache_dir

# (hub subset, hub split) -> file in our layout
MUSE_FILES = {
    ("raw", "forget"): "raw/forget.json",
    ("raw", "retain1"): "raw/retain.json",
    ("raw", "holdout"): "raw/holdout.json",
    ("verbmem", "forget"): "verbmem/forget.json",
    ("knowmem", "forget_qa"): "knowmem/forget_qa.json",
    ("knowmem", "retain_qa"): "knowmem/retain_qa.json",
    ("knowmem", "forget_qa_icl"): "knowmem/forget_qa_icl.json",
    ("knowmem", "retain_qa_icl"): "knowmem/retain_qa_icl.json",
    ("privleak", "forget"): "privleak/forget.json",
    ("privleak", "retain"): "privleak/retain.json",
    ("privleak", "holdout"): "privleak/holdout.json",
}


def download_muse(alias: str, repo_id: str) -> Path:
    """Download a MUSE corpus once into the cache and return its folder."""
    target = cache_dir() / "corpora" / alias
    if (target / "corpus.json").is_file():
        return target
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"--corpus {alias} loads MUSE from the hub and needs the optional extra: pip install 'unlearn-audit[hub]'"
        ) from None
    try:
        with atomic_dir(target) as tmp:
            for (subset, split), rel in MUSE_FILES.items():
                ds = datasets.load_dataset(repo_id, subset, split=split)
                rows = [r["text"] if set(r) == {"text"} else dict(r) for r in ds]
                atomic_write_json(tmp / rel, rows)
            atomic_write_json(tmp / "corpus.json", {"name": alias, "source": repo_id})
    except UserError:
        raise
    except Exception as exc:  # network errors come in many types; the user needs one line
        raise UserError(f"could not download {repo_id} from the hub ({type(exc).__name__}: {exc}); "
                        f"pass a local MUSE folder instead") from None
    return target
