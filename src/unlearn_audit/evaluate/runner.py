"""Run the four MUSE metrics on one model and write MUSE-style logs.

Output folder layout (MUSE's, so existing tooling can re-score it)::

    verbmem_f/{log.json,agg.json}  knowmem_f/{log.json,agg.json}  knowmem_r/{log.json,agg.json}
    privleak/{log.json,auc.json}   metrics.json (written last, by the caller)

A finished metric is recorded in `progress.json` with the model/corpus/config it was computed for, so
an interrupted evaluation resumes without redoing finished metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..data.corpus import Corpus
from ..data.synthetic import WORLD_NAME
from ..errors import UserError
from ..models.generation import token_logprobs
from ..utils.io import atomic_write_json, read_json, sha256_json
from .knowmem import evaluate_knowmem
from .privleak import (
    DEFAULT_AUC_KEY,
    PRIVLEAK_SCOPES,
    SPLITS,
    auc_table,
    key_needs,
    privleak,
    published_auc_retrain,
    text_scores,
)
from .verbmem import evaluate_verbmem

log = logging.getLogger(__name__)

METRICS = ("verbmem_f", "knowmem_f", "knowmem_r", "privleak")


PROMPT_SPACE = ("auto", "keep", "heal")
VERBMEM_LENGTHS = ("muse", "reference")


def heals_prompt_space(corpus: Corpus, choice: str = "auto") -> bool:
    """Whether generation drops a prompt's trailing whitespace token (see `greedy_generate`): MUSE's
    corpora keep their exact prompts (parity with the paper); the built-in world heals by default."""
    return choice == "heal" or (choice == "auto" and corpus.name == WORLD_NAME)


@dataclass
class EvalConfig:
    """What to evaluate and how (shared by `eval`, `audit` and the experiment grid)."""

    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    limit: int | None = None
    batch_size: int | None = None
    privleak_key: str = DEFAULT_AUC_KEY
    agg_key: str = "mean_rougeL"
    prompt_space: str = field(default="auto", metadata={
        "help": "a prompt's trailing space: keep (MUSE's exact prompts), heal (the model writes it, joined to "
                "the next word as in training: right for byte-level BPE tokenizers), auto (heal on the built-in "
                "world, keep elsewhere)", "choices": list(PROMPT_SPACE)})
    verbmem_length: str = field(default="muse", metadata={
        "help": "VerbMem continuation length: muse (128 new tokens) or reference (as many tokens as a ground "
                "truth shorter than 128 has, the parity MUSE has on its own corpora; faster)",
        "choices": list(VERBMEM_LENGTHS)})
    privleak_scope: str = field(default="muse", metadata={
        "help": "texts PrivLeak scores: muse (MUSE's whole log: forget, retain and holdout texts and their "
                "lowercased copies, every AUC of auc.json) or metric (only what the PrivLeak key compares; same "
                "PrivLeak, a third of the work)", "choices": list(PRIVLEAK_SCOPES)})

    def validate(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
        if self.limit is not None and self.limit < 1:
            raise UserError("--limit must be at least 1")
        if self.prompt_space not in PROMPT_SPACE:
            raise UserError(f"--prompt-space must be one of {', '.join(PROMPT_SPACE)}")
        if self.verbmem_length not in VERBMEM_LENGTHS:
            raise UserError(f"--verbmem-length must be one of {', '.join(VERBMEM_LENGTHS)}")
        if self.privleak_scope not in PRIVLEAK_SCOPES:
            raise UserError(f"--privleak-scope must be one of {', '.join(PRIVLEAK_SCOPES)}")
        try:
            key_needs(self.privleak_key)
        except ValueError:
            raise UserError(f"privleak key {self.privleak_key!r} is not an AUC key such as {DEFAULT_AUC_KEY} "
                            f"(split_split_score; splits {', '.join(SPLITS)})") from None

    def heals(self, corpus: Corpus) -> bool:
        return heals_prompt_space(corpus, self.prompt_space)


def check_corpus(corpus: Corpus, metrics: list[str]) -> None:
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


@dataclass
class AucRetrain:
    """The retrained model's AUC that PrivLeak is relative to, and where it came from."""

    value: float
    source: str


def take(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def privleak_scores(model, tokenizer, corpus: Corpus, cfg: EvalConfig, show: bool = True) -> tuple[dict, int]:
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


def retrained_auc(model, tokenizer, corpus: Corpus, cfg: EvalConfig, show: bool = True) -> AucRetrain:
    """Measure AUC_retrain on the retrained model itself (preferred over published constants)."""
    logs, _ = privleak_scores(model, tokenizer, corpus, cfg, show)
    return AucRetrain(auc_table(logs)[cfg.privleak_key], "measured on the retrained model")


def default_auc_retrain(corpus: Corpus) -> AucRetrain:
    """Without a retrained model: MUSE's published constant for NEWS/BOOKS, else the ideal 0.5."""
    published = published_auc_retrain(corpus.name)
    if published:
        return AucRetrain(*published)
    return AucRetrain(0.5, "no --retrained given: the ideal AUC 0.5 of a model that never saw the forget set")


def run_metric(name: str, model, tokenizer, corpus: Corpus, cfg: EvalConfig, auc_ret: AucRetrain, show: bool):
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


def evaluate_model(
    model,
    tokenizer,
    corpus: Corpus,
    cfg: EvalConfig,
    auc_ret: AucRetrain | None = None,
    out_dir: str | Path | None = None,
    identity: dict | None = None,
    show: bool = True,
) -> dict:
    """Evaluate `cfg.metrics`; with `out_dir`, write logs and resume finished metrics from it."""
    cfg.validate()
    check_corpus(corpus, cfg.metrics)
    auc_ret = auc_ret or default_auc_retrain(corpus)
    progress = load_progress(out_dir, progress_key(corpus, cfg, auc_ret, identity))
    results: dict = {"metrics": {}, "details": {}, "seconds": {}}
    for name in cfg.metrics:
        if name in progress["done"]:
            done = progress["done"][name]
            log.info("%s already computed in %s; reusing it", name, out_dir)
        else:
            started = time.time()
            value, extra, files = run_metric(name, model, tokenizer, corpus, cfg, auc_ret, show)
            done = {"value": value, "extra": extra, "seconds": round(time.time() - started, 3)}
            if out_dir is not None:
                for fname, content in files.items():
                    atomic_write_json(Path(out_dir) / name / fname, content)
                progress["done"][name] = done
                atomic_write_json(Path(out_dir) / "progress.json", progress)
        results["metrics"][name] = done["value"]
        results["details"][name] = done["extra"]
        results["seconds"][name] = done["seconds"]
    return results


def progress_key(corpus: Corpus, cfg: EvalConfig, auc_ret: AucRetrain, identity: dict | None) -> str:
    """What a stored evaluation must match to be reused: model identity, corpus, settings, AUC reference."""
    return sha256_json({"identity": identity or {}, "corpus": corpus.content_hash, "config": asdict(cfg),
                        "auc_retrain": asdict(auc_ret)})


def finished_results(corpus: Corpus, cfg: EvalConfig, auc_ret: AucRetrain, out_dir: str | Path | None,
                     identity: dict | None) -> dict | None:
    """The results `evaluate_model` would return when every metric is already stored in `out_dir` (so a
    resumed audit need not even load, quantize or retrain the model), else None."""
    progress = load_progress(out_dir, progress_key(corpus, cfg, auc_ret, identity))
    if out_dir is None or any(m not in progress["done"] for m in cfg.metrics):
        return None
    done = progress["done"]
    return {"metrics": {m: done[m]["value"] for m in cfg.metrics}, "details": {m: done[m]["extra"] for m in cfg.metrics},
            "seconds": {m: done[m]["seconds"] for m in cfg.metrics}}


def load_progress(out_dir: str | Path | None, key: str) -> dict:
    """Finished metrics of an earlier run with the same model, corpus and config (else none)."""
    fresh = {"key": key, "done": {}}
    if out_dir is None:
        return fresh
    path = Path(out_dir) / "progress.json"
    if not path.is_file():
        return fresh
    try:
        stored = read_json(path)
    except UserError:
        return fresh
    return stored if isinstance(stored, dict) and stored.get("key") == key else fresh


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """'verbmem_f,knowmem_f' -> ['verbmem_f', 'knowmem_f'] (also accepts a list)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [m.strip() for m in items if m.strip()]


def knowmem_evaluator(corpus, tokenizer, limit: int | None = None):
    """Per-epoch KnowMem (forget and retain, x100) for the unlearning stopping rule."""
    import copy

    import torch

    def evaluate(model) -> dict[str, float]:
        was_training = model.training
        net = model
        if next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype != torch.float32:
            net = copy.deepcopy(model).float()  # exact upcast: CPU evaluation in fp32 like `eval`
        net.eval()
        out = {}
        for split, key in (("forget", "knowmem_f"), ("retain", "knowmem_r")):
            qa = corpus.knowmem(split)[:limit] if limit else corpus.knowmem(split)
            agg, _, _ = evaluate_knowmem(net, tokenizer, qa, corpus.knowmem_icl(split),
                                         heal_space=heals_prompt_space(corpus))
            out[key] = agg["mean_rougeL"] * 100
        if was_training:
            model.train()
        return out

    return evaluate


def utility_floor_from(retrained: str, corpus, opts, device: str, limit: int | None = None) -> float:
    """KnowMem_r of the retrained model: MUSE's utility floor for the stopping rule."""
    from ..models.loading import load_model, load_tokenizer

    model = load_model(retrained, "fp32", opts, device)
    return knowmem_evaluator(corpus, load_tokenizer(retrained, opts), limit)(model)["knowmem_r"]


def evaluate_to_folder(model_path, corpus: Corpus, cfg: EvalConfig, out: str | Path, scheme: str, dtype: str,
                       device: str, opts, qopts, retrained: str | None = None, show: bool = True) -> dict:
    """`eval`: the model at `model_path` (quantized with `scheme`) on `corpus`, per-item logs under `out`
    and metrics.json beside them (PrivLeak against the retrained model's AUC when one is given)."""
    from .. import __version__
    from ..models.loading import load_model, load_tokenizer, model_fingerprint
    from ..quantize import model_at

    cfg.validate()
    check_corpus(corpus, cfg.metrics)  # before any model is loaded
    out = Path(out)
    started = time.time()
    auc_ret = None
    if retrained and "privleak" in cfg.metrics:
        ret = load_model(retrained, dtype, opts, device)
        auc_ret = retrained_auc(ret, load_tokenizer(retrained, opts), corpus, cfg)
        del ret
    tok = load_tokenizer(model_path, opts)
    model = model_at(model_path, scheme, opts, qopts, dtype, device, tok, corpus)
    identity = {"model": model_fingerprint(model_path), "scheme": scheme, "dtype": dtype}
    res = evaluate_model(model, tok, corpus, cfg, auc_ret, out, identity=identity, show=show)
    record = {"model": str(model_path), "scheme": scheme, "corpus": corpus.name, **res["metrics"],
              "details": res["details"], "model_hash": identity["model"], "corpus_hash": corpus.content_hash,
              "retrained": str(retrained) if retrained else None,
              "seconds": {**res["seconds"], "total": round(time.time() - started, 3)},
              "unlearn_audit_version": __version__}
    atomic_write_json(out / "metrics.json", record)
    return record
