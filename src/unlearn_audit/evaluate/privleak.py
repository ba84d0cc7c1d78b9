"""PrivLeak: membership inference with Min-K% Prob, exactly as MUSE computes it.

Per text (token log-probs lp_1..lp_{n-1} under the model, BOS included in the input):
  "PPL"       = mean NLL = -mean(lp)            (MUSE stores the loss under this name)
  "PPL/lower" = NLL(text) / NLL(text.lower())
  "PPL/zlib"  = NLL(text) / len(zlib.compress(text))
  "Min-k%"    = -mean of the int(n_lp * k) lowest lp, for k in 5,10,20,30,40,50,60 %
AUC(split0, split1, key): roc_auc of scores with split0 as label 0 ("nonmember") and split1 as label 1,
on -score (sklearn roc_curve + auc, MUSE's `sweep`). The metric:
  PrivLeak = (AUC - AUC_retrain) / AUC_retrain * 100, key forget_holdout_Min-40% by default.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

MIN_K_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
SCORE_KEYS = ("PPL", "PPL/lower", "PPL/zlib") + tuple(f"Min-{int(r * 100)}%" for r in MIN_K_RATIOS)
SPLITS = ("forget", "retain", "holdout")
DEFAULT_AUC_KEY = "forget_holdout_Min-40%"
PRIVLEAK_SCOPES = ("muse", "metric")  # score every split and score (MUSE's log) or what the key needs
# MUSE's published AUC of the retrained models (Llama-2-7B NEWS, ICLM-7B BOOKS) for the default key.
PUBLISHED_AUC_RETRAIN = {"news": 0.4772, "books": 0.5393}


def min_k_score(token_logprobs: Sequence[float], k: float) -> float:
    """Min-K% Prob score: minus the mean of the lowest int(n * k) token log-probs (at least one)."""
    lp = np.asarray(token_logprobs, dtype=float)
    if lp.size == 0:
        return float("nan")
    k_length = max(1, int(len(lp) * k))
    return float(-np.mean(np.sort(lp)[:k_length]))


def text_scores(text: str, lp: np.ndarray, lp_lower: np.ndarray | None) -> dict[str, float]:
    """MUSE's membership scores for one text (see module docstring); "PPL/lower" only with `lp_lower`."""
    nll = float(-np.mean(lp)) if lp.size else float("nan")
    scores = {"PPL": nll, "PPL/zlib": nll / len(zlib.compress(bytes(text, "utf-8")))}
    if lp_lower is not None:
        nll_lower = float(-np.mean(lp_lower)) if lp_lower.size else float("nan")
        scores["PPL/lower"] = nll / nll_lower if nll_lower else float("nan")
    for ratio in MIN_K_RATIOS:
        scores[f"Min-{int(ratio * 100)}%"] = min_k_score(lp, ratio)
    return scores


def mia_auc(nonmember_scores: Sequence[float], member_scores: Sequence[float]) -> float:
    """AUC of telling members (label 1) from nonmembers (label 0) by low score.

    Equal to MUSE's `sklearn.metrics.auc(*roc_curve(labels, -scores)[:2])` (a test checks it, ties
    included), computed as the Mann-Whitney statistic on average ranks: with x = -score,
    AUC = (sum of member ranks - n1 (n1 + 1) / 2) / (n0 * n1). Ninety AUCs per model are needed, and
    sklearn's input validation made them slower than the model's forward passes.
    """
    from scipy.stats import rankdata

    x = -np.concatenate([np.asarray(nonmember_scores, float), np.asarray(member_scores, float)])
    n0, n1 = len(nonmember_scores), len(member_scores)
    if n0 == 0 or n1 == 0:
        raise ValueError("mia_auc needs at least one member and one nonmember score")
    if np.isnan(x).any():
        return float("nan")
    ranks = rankdata(x)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def auc_table(log: dict[str, list[dict]]) -> dict[str, float]:
    """AUC for every ordered pair of splits and every score key, keyed like MUSE's auc.json (the splits
    and scores the log holds)."""
    table = {}
    present = [s for s in SPLITS if s in log]
    scored = [k for k in SCORE_KEYS if all(k in d for s in present for d in log[s])]
    for split0 in present:
        for split1 in present:
            for key in scored:
                table[f"{split0}_{split1}_{key}"] = mia_auc(
                    [d[key] for d in log[split0]], [d[key] for d in log[split1]]
                )
    return table


def key_needs(auc_key: str) -> tuple[list[str], bool]:
    """The splits an AUC key compares and whether its score needs the lowercased texts
    ("forget_holdout_Min-40%" -> (["forget", "holdout"], False))."""
    split0, split1, score = auc_key.split("_", 2)
    if split0 not in SPLITS or split1 not in SPLITS or score not in SCORE_KEYS:
        raise ValueError(f"not an AUC key: {auc_key}")
    return list(dict.fromkeys((split0, split1))), score == "PPL/lower"


def privleak(auc: float, auc_retrain: float) -> float | None:
    """PrivLeak in percent: relative gap of the model's AUC to the retrained model's (None if AUC_retrain = 0)."""
    if auc_retrain == 0:
        return None
    return (auc - auc_retrain) / auc_retrain * 100


def published_auc_retrain(corpus_name: str) -> tuple[float, str] | None:
    """MUSE's published retrained AUC for a NEWS or BOOKS corpus, if the name says which."""
    name = corpus_name.lower()
    for key, value in PUBLISHED_AUC_RETRAIN.items():
        if key in name:
            return value, f"MUSE published AUC_retrain for {key.upper()} ({value})"
    return None
