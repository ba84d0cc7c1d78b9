"""MUSE, TOFU and WMDP from the Hugging Face hub (optional extra `hub`), materialised once into our
corpus layout (corpus.py) in the user cache.

Only used when the user names a hub alias such as `muse-news`, `tofu-forget10` or `wmdp`; the embedded
default never needs it.
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


TOFU_REPO = "locuslab/TOFU"
TOFU_FORGET = {"tofu-forget01": ("forget01", "retain99"), "tofu-forget05": ("forget05", "retain95"),
               "tofu-forget10": ("forget10", "retain90")}
WMDP_SUBSETS = {"bio": "wmdp-bio", "cyber": "wmdp-cyber", "chem": "wmdp-chem"}


def materialise(alias: str, repo_id: str, write) -> Path:
    """Run `write(datasets, folder)` once into the cache folder of `alias` (atomically), return the folder."""
    target = cache_dir() / "corpora" / alias
    if (target / "corpus.json").is_file():
        return target
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"--corpus {alias} loads {repo_id} from the hub and needs the optional extra: pip install 'unlearn-audit[hub]'"
        ) from None
    try:
        with atomic_dir(target) as tmp:
            write(datasets, tmp)
            atomic_write_json(tmp / "corpus.json", {"name": alias, "source": repo_id})
    except UserError:
        raise
    except Exception as exc:  # network errors come in many types; the user needs one line
        raise UserError(f"could not download {repo_id} from the hub ({type(exc).__name__}: {exc}); "
                        f"pass a local folder in the same layout instead (docs/benchmarks.md)") from None
    return target


def download_muse(alias: str, repo_id: str) -> Path:
    """Download a MUSE corpus once into the cache and return its folder."""
    def write(datasets, tmp: Path) -> None:
        for (subset, split), rel in MUSE_FILES.items():
            ds = datasets.load_dataset(repo_id, subset, split=split)
            atomic_write_json(tmp / rel, [r["text"] if set(r) == {"text"} else dict(r) for r in ds])

    return materialise(alias, repo_id, write)


def download_tofu(alias: str) -> Path:
    """TOFU's evaluation sets (the *_perturbed configs) as tofu/*.json, its holdout questions of the same size
    as the forget set (holdout01/05/10, question and answer) as tofu/holdout.json, and its forget/retain QA as the raw
    training texts ("Question: ...\nAnswer: ...") that relearning attacks and fine-tuning read."""
    forget, retain = TOFU_FORGET[alias]

    def rows(datasets, config: str) -> list[dict]:
        return [dict(r) for r in datasets.load_dataset(TOFU_REPO, config, split="train")]

    def write(datasets, tmp: Path) -> None:
        for name, config in (("forget", f"{forget}_perturbed"), ("retain", "retain_perturbed"),
                             ("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed")):
            atomic_write_json(tmp / "tofu" / f"{name}.json", rows(datasets, config))
        holdout = [{"question": r["question"], "answer": r["answer"]}  # authors no TOFU model trained on (MIAs)
                   for r in rows(datasets, forget.replace("forget", "holdout"))]
        atomic_write_json(tmp / "tofu" / "holdout.json", holdout)
        for name, config in (("forget", forget), ("retain", retain)):
            atomic_write_json(tmp / "raw" / f"{name}.json",
                              [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows(datasets, config)])

    return materialise(alias, TOFU_REPO, write)


def download_wmdp(alias: str) -> Path:
    """WMDP's bio, cyber and chem sets as wmdp/forget/*.json and MMLU's test set, one file per subject, as
    wmdp/utility/*.json."""
    def write(datasets, tmp: Path) -> None:
        for name, subset in WMDP_SUBSETS.items():
            ds = datasets.load_dataset("cais/wmdp", subset, split="test")
            atomic_write_json(tmp / "wmdp" / "forget" / f"{name}.json",
                              [{"question": r["question"], "choices": r["choices"], "answer": r["answer"]} for r in ds])
        by_subject: dict[str, list] = {}
        for r in datasets.load_dataset("cais/mmlu", "all", split="test"):
            by_subject.setdefault(r["subject"], []).append(
                {"question": r["question"], "choices": r["choices"], "answer": r["answer"]})
        for subject, items in by_subject.items():
            atomic_write_json(tmp / "wmdp" / "utility" / f"{subject}.json", items)

    return materialise(alias, "cais/wmdp", write)
