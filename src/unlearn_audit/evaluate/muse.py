"""MUSE (Shi et al. 2024, muse-bench): VerbMem and KnowMem on the forget set, KnowMem on the retain set,
PrivLeak; the paper's benchmark and the toolkit's default.

Metrics on MUSE's x100 scale (formulas in verbmem.py, knowmem.py, privleak.py and docs/metrics.md);
forget knowledge = VerbMem_f and KnowMem_f; utility = KnowMem_r; the retrained model's reference is the
AUC that PrivLeak is relative to. Opt-in (asked for by name, never in the default list or its tables):
open-unlearning's six membership-inference attacks on the privleak forget vs holdout texts (mia.py), each
an AUC, with the retrained model's AUCs (and its losses, the Reference attack's reference) as control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError
from ..models.generation import token_logprobs
from ..utils.io import read_json
from . import mia
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


@dataclass
class MuseReference(AucRetrain):
    """AUC_retrain plus what the membership-inference attacks compare against: the retrained model's AUC of
    each attack asked for and, for mia_reference, its LOSS of every privleak forget and holdout text."""

    mia_control: dict[str, float] = field(default_factory=dict)
    mia_control_source: str = "measured on the retrained model"
    reference_loss: dict[str, list[float]] | None = None


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
        if name in mia.MIA_METRICS:
            check_mia_texts(corpus, name)
            continue
        for load in parts[name]:
            load()


def check_mia_texts(corpus, metric: str) -> None:
    """The membership-inference attacks compare the privleak forget texts with holdout texts; both must exist."""
    path = corpus.root / "privleak" / "holdout.json"
    if not path.is_file():
        raise UserError(f"{metric} compares the forget texts with holdout texts no model was trained on, but {path} "
                        "does not exist (MUSE's privleak holdout split); give a corpus that has it")
    for split in mia.SPLITS:
        corpus.privleak(split)


def mia_texts(corpus, limit: int | None) -> dict[str, list[str]]:
    """The texts the membership-inference attacks score: members (forget) and nonmembers (holdout)."""
    return {split: take(corpus.privleak(split), limit) for split in mia.SPLITS}


def run_mia(name: str, model, tokenizer, corpus, cfg, ref, show: bool):
    """One membership-inference attack on the privleak texts (`mia.run_attack`)."""
    return mia.run_attack(name, model, tokenizer, mia_texts(corpus, cfg.limit), cfg.batch_size, ref, show)


def mia_control(model, tokenizer, corpus, cfg, show: bool = True) -> dict:
    """The retrained model's side of the attacks asked for on the privleak texts (`mia.control_side`)."""
    return mia.control_side(model, tokenizer, mia_texts(corpus, cfg.limit), cfg.metrics, cfg.batch_size, show)


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
    """Compute one metric: (value on MUSE's x100 scale or, for an attack, its AUC; extra fields; files to write)."""
    if name in mia.MIA_METRICS:
        return run_mia(name, model, tokenizer, corpus, cfg, auc_ret, show)
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
             "knowmem_r": Metric("KnowMem_r", "keep"), "privleak": Metric("PrivLeak", "reference"),
             **{name: Metric(f"{label} AUC", "down", fraction=True, optional=True) for name, label in zip(
                 mia.MIA_METRICS, ("LOSS", "zlib", "Min-K%", "Min-K%++", "Reference", "GradNorm"))}}
    knowledge = ("verbmem_f", "knowmem_f")
    utility = "knowmem_r"
    reference_metric = "privleak"
    forget_items = {"verbmem_f": "verbmem/forget.json", "knowmem_f": "knowmem/forget_qa.json"}

    def present(self, corpus) -> bool:
        return any((corpus.root / d).is_dir() for d in ("knowmem", "verbmem", "privleak"))

    def check(self, corpus, metrics: list[str]) -> None:
        check_corpus(corpus, metrics)

    def check_setup(self, metrics, reference_model: bool, scheme: str) -> None:
        mia.check_request(metrics, reference_model, scheme)

    def check_model(self, model, metrics) -> None:
        mia.check_model(model, metrics)

    def wants_reference(self, metrics) -> bool:
        return "privleak" in metrics or any(m in mia.MIA_METRICS for m in metrics)

    def run_metric(self, name, model, tokenizer, corpus, cfg, ref, show):
        return run_metric(name, model, tokenizer, corpus, cfg, ref or default_auc_retrain(corpus), show)

    def retain_answers(self, eval_dir, tokenizer, cfg):
        path = Path(eval_dir) / "knowmem_r" / "log.json"
        if not path.is_file():
            return None
        return [{"prompt": r["prompt"], "answer": r["response"], "gold": r["gt"]} for r in read_json(path)]

    def reference(self, model, tokenizer, corpus, cfg, show):
        asked = "privleak" in cfg.metrics
        auc_ret = retrained_auc(model, tokenizer, corpus, cfg, show) if asked else default_auc_retrain(corpus)
        if not any(m in mia.MIA_METRICS for m in cfg.metrics):
            return auc_ret
        return MuseReference(auc_ret.value, auc_ret.source, **mia_control(model, tokenizer, corpus, cfg, show))

    def default_reference(self, corpus):
        return default_auc_retrain(corpus)

    def reference_from(self, details: dict):
        control = mia.control_aucs(details)
        if "privleak" in details:
            auc_ret = AucRetrain(details["privleak"]["auc"], "measured on the retrained model")
        elif control:
            auc_ret = AucRetrain(0.5, "no PrivLeak measured on the retrained model: the ideal AUC 0.5")
        else:
            return None
        return MuseReference(auc_ret.value, auc_ret.source, control, reference_loss=mia.reference_losses(details)) \
            if control else auc_ret

    def reference_value(self):
        return 0.0
