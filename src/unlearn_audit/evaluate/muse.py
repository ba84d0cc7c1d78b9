"""MUSE (Shi et al. 2024, muse-bench): VerbMem and KnowMem on the forget set, KnowMem on the retain set,
PrivLeak; the paper's benchmark and the toolkit's default.

Metrics on MUSE's x100 scale (formulas in verbmem.py, knowmem.py, privleak.py and docs/metrics.md);
forget knowledge = VerbMem_f and KnowMem_f; utility = KnowMem_r; the retrained model's reference is the
AUC that PrivLeak is relative to.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..models.generation import token_logprobs
from .benchmark import Benchmark, Metric, register_benchmark
from .knowmem import evaluate_knowmem
from .privleak import SPLITS, auc_table, key_needs, privleak, published_auc_retrain, text_scores
from .verbmem import evaluate_verbmem

METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")


@dataclass
class AucRetrain:
    """The retrained model's AUC that PrivLeak is relative to, and where it came from."""

    value: float
    source: str


def take(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def check_corpus(corpus, metrics: list[str]) -> None:
    """Parse every corpus part the metrics will read, so a malformed file is reported before any model
    work (each part's loader names the file, item and field)."""
    parts = {
        "verbmem_f": [corpus.verbmem],
        "knowmem_f": [lambda: corpus.knowmem("forget"), lambda: corpus.knowmem_icl("forget")],
        "knowmem_r": [lambda: corpus.knowmem("retain"), lambda: corpus.knowmem_icl("retain")],
        "privleak": [lambda s=split: corpus.privleak(s) for split in ("forget", "retain", "holdout")],
    }
    for name in metrics:
        for load in parts[name]:
            load()


def privleak_scores(model, tokenizer, corpus, cfg, show: bool = True) -> tuple[dict, int]:
    """Per-text membership scores of the forget, retain and holdout privleak texts (MUSE's log).

    All texts (and their lowercased copies) are scored in one batched pass (sorted by length); with
    `privleak_scope` metric only the splits and scores the PrivLeak key needs."""
    splits, lower = (list(SPLITS), True) if cfg.privleak_scope == "muse" else key_needs(cfg.privleak_key)
    texts = {s: take(corpus.privleak(s), cfg.limit) for s in splits}
    flat = [t for s in splits for t in texts[s]]
    scored = flat + [t.lower() for t in flat] if lower else flat
    with tqdm(total=len(scored), desc="privleak", disable=not show, leave=False) as bar:
        lps, truncated = token_logprobs(model, tokenizer, scored, cfg.batch_size, bar.update)
    logs: dict[str, list[dict]] = {}
    start = 0
    for split in splits:
        items = texts[split]
        logs[split] = [{"text": t, **text_scores(t, lps[start + i], lps[len(flat) + start + i] if lower else None)}
                       for i, t in enumerate(items)]
        start += len(items)
    return logs, truncated


def retrained_auc(model, tokenizer, corpus, cfg, show: bool = True) -> AucRetrain:
    """Measure AUC_retrain on the retrained model itself (preferred over published constants)."""
    logs, _ = privleak_scores(model, tokenizer, corpus, cfg, show)
    return AucRetrain(auc_table(logs)[cfg.privleak_key], "measured on the retrained model")


def default_auc_retrain(corpus) -> AucRetrain:
    """Without a retrained model: MUSE's published constant for NEWS/BOOKS, else the ideal 0.5."""
    published = published_auc_retrain(corpus.name)
    if published:
        return AucRetrain(*published)
    return AucRetrain(0.5, "no --retrained given: the ideal AUC 0.5 of a model that never saw the forget set")


def run_metric(name: str, model, tokenizer, corpus, cfg, auc_ret: AucRetrain, show: bool):
    """Compute one metric: (value on MUSE's x100 scale, extra fields, files to write)."""
    if name == "privleak":
        logs, truncated = privleak_scores(model, tokenizer, corpus, cfg, show)
        table = auc_table(logs)
        auc = table[cfg.privleak_key]
        extra = {"auc": auc, "auc_retrain": auc_ret.value, "auc_retrain_source": auc_ret.source,
                 "truncated": truncated}
        return privleak(auc, auc_ret.value), extra, {"log.json": logs, "auc.json": table}
    if name == "verbmem_f":
        items = take(corpus.verbmem(), cfg.limit)
        with tqdm(total=len(items), desc=name, disable=not show, leave=False) as bar:
            agg, rows, truncated = evaluate_verbmem(model, tokenizer, items, cfg.batch_size, bar.update,
                                                    heal_space=cfg.heals(corpus),
                                                    reference_length=cfg.verbmem_length == "reference")
    else:
        split = "forget" if name == "knowmem_f" else "retain"
        qa = take(corpus.knowmem(split), cfg.limit)
        icl = corpus.knowmem_icl(split)
        with tqdm(total=len(qa), desc=name, disable=not show, leave=False) as bar:
            agg, rows, truncated = evaluate_knowmem(model, tokenizer, qa, icl, cfg.batch_size, bar.update,
                                                    heal_space=cfg.heals(corpus))
    return agg[cfg.agg_key] * 100, {"truncated": truncated}, {"log.json": rows, "agg.json": agg}


@register_benchmark
class Muse(Benchmark):
    name = "muse"
    title = "MUSE"
    source = "Shi et al. 2024, MUSE: Machine Unlearning Six-Way Evaluation (muse-bench)"
    parts = ""
    specs = {"verbmem_f": Metric("VerbMem_f", "down"), "knowmem_f": Metric("KnowMem_f", "down"),
             "knowmem_r": Metric("KnowMem_r", "keep"), "privleak": Metric("PrivLeak", "reference")}
    knowledge = ("verbmem_f", "knowmem_f")
    utility = "knowmem_r"
    reference_metric = "privleak"

    def present(self, corpus) -> bool:
        return any((corpus.root / d).is_dir() for d in ("knowmem", "verbmem", "privleak"))

    def check(self, corpus, metrics: list[str]) -> None:
        check_corpus(corpus, metrics)

    def run_metric(self, name, model, tokenizer, corpus, cfg, ref, show):
        return run_metric(name, model, tokenizer, corpus, cfg, ref or default_auc_retrain(corpus), show)

    def reference(self, model, tokenizer, corpus, cfg, show):
        return retrained_auc(model, tokenizer, corpus, cfg, show)

    def default_reference(self, corpus):
        return default_auc_retrain(corpus)

    def reference_from(self, details: dict):
        if "privleak" not in details:
            return None
        return AucRetrain(details["privleak"]["auc"], "measured on the retrained model")

    def reference_value(self):
        return 0.0
