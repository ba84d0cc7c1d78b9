"""ROUGE scoring and aggregation exactly as MUSE's `RougeEvalLogger` does it.

Per item: rouge-score's ROUGE-1 and ROUGE-L (no stemmer) of (ground truth, output): F1 and recall.
Aggregate over items: for every numeric key k, `max_k`, `mean_k` (= sum / n) and a 95% percentile
bootstrap interval `k_ci_lo`, `k_ci_hi`. MUSE's bootstrap is unseeded; ours is seeded, so intervals are
reproducible (they cannot match MUSE's to the digit, the means and maxima do).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np

ROUGE_KEYS = ("rougeL", "rougeL_recall", "rouge1", "rouge1_recall")


@functools.lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(rouge_types=["rouge1", "rougeL"], use_stemmer=False)


def rouge(gt: str, output: str) -> dict[str, float]:
    """ROUGE-L and ROUGE-1 F1 and recall of `output` against `gt` (MUSE's four logged scores)."""
    score = _scorer().score(gt, output)
    return {
        "rougeL": score["rougeL"].fmeasure,
        "rougeL_recall": score["rougeL"].recall,
        "rouge1": score["rouge1"].fmeasure,
        "rouge1_recall": score["rouge1"].recall,
    }


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (MUSE's choice of method)."""
    vals = np.asarray(values, dtype=float)
    if len(vals) < 2 or np.all(vals == vals[0]):
        return float(vals[0]), float(vals[0])
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap((vals,), np.mean, confidence_level=0.95, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """`max_k`, `mean_k`, `k_ci_lo`, `k_ci_hi` for each numeric key k of the rows, in MUSE's order."""
    if not rows:
        raise ValueError("aggregate() needs at least one row")
    agg: dict[str, float] = {}
    for key, value in rows[0].items():
        if isinstance(value, str) or value is None or isinstance(value, bool):
            continue
        vals = [row[key] for row in rows]
        agg[f"max_{key}"] = max(vals)
        agg[f"mean_{key}"] = sum(vals) / len(vals)
        agg[f"{key}_ci_lo"], agg[f"{key}_ci_hi"] = bootstrap_ci(vals)
    return agg
