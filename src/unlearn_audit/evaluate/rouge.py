"""ROUGE scoring and aggregation exactly as MUSE's `RougeEvalLogger` does it.

Per item: rouge-score's ROUGE-1 and ROUGE-L (no stemmer) of (ground truth, output): F1 and recall.
Aggregate over items: for every numeric key k, `max_k`, `mean_k` (= sum / n) and a 95% percentile
bootstrap interval `k_ci_lo`, `k_ci_hi`. MUSE's bootstrap is unseeded; ours is seeded, so intervals are
reproducible (they cannot match MUSE's to the digit, the means and maxima do).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(rouge_types=["rouge1", "rougeL"], use_stemmer=False)


@functools.lru_cache(maxsize=1)
def _stemming_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(rouge_types=["rougeL"], use_stemmer=True)


def rouge_l_recall_stemmed(gt: str, output: str) -> float:
    """ROUGE-L recall with the Porter stemmer: TOFU's ROUGE (open-unlearning and the TOFU repository)."""
    return _stemming_scorer().score(gt, output)["rougeL"].recall


def rouge(gt: str, output: str) -> dict[str, float]:
    """ROUGE-L and ROUGE-1 F1 and recall of `output` against `gt` (MUSE's four logged scores)."""
    score = _scorer().score(gt, output)
    return {
        "rougeL": score["rougeL"].fmeasure,
        "rougeL_recall": score["rougeL"].recall,
        "rouge1": score["rouge1"].fmeasure,
        "rouge1_recall": score["rouge1"].recall,
    }


def bootstrap_cis(columns: dict[str, Sequence[float]], seed: int = 0, resamples: int = 9999) -> dict:
    """Percentile-bootstrap intervals of several columns of the same items, sharing the resamples."""
    out, idx = {}, None
    for key, values in columns.items():
        vals = np.asarray(values, dtype=float)
        if len(vals) < 2 or np.all(vals == vals[0]):
            out[key] = (float(vals[0]), float(vals[0]))
            continue
        if idx is None:
            idx = np.random.default_rng(seed).integers(0, len(vals), size=(resamples, len(vals)))
        lo, hi = np.percentile(vals[idx].mean(axis=1), [2.5, 97.5])
        out[key] = (float(lo), float(hi))
    return out


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """`max_k`, `mean_k`, `k_ci_lo`, `k_ci_hi` for each numeric key k of the rows, in MUSE's order."""
    if not rows:
        raise ValueError("aggregate() needs at least one row")
    keys = [k for k, v in rows[0].items() if not (isinstance(v, (str, bool)) or v is None)]
    columns = {k: [row[k] for row in rows] for k in keys}
    cis = bootstrap_cis(columns)
    agg: dict[str, float] = {}
    for key in keys:
        vals = columns[key]
        agg[f"max_{key}"] = max(vals)
        agg[f"mean_{key}"] = sum(vals) / len(vals)
        agg[f"{key}_ci_lo"], agg[f"{key}_ci_hi"] = cis[key]
    return agg
