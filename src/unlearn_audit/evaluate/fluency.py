"""Fluency of the retain answers: does the unlearned model still answer in language, or in nonsense?

The utility gate reads one number (MUSE KnowMem_r, TOFU model utility), which scores an answer by its
overlap with the truth: a model that answers the retain questions it still knows and fills the others
with noise keeps most of it. Fluency asks how surprised the target is by the model's own retain answers:

    fluency perplexity(m) = exp( sum over m's non-empty retain answers a and their tokens y of
                                 -log p_target(y | the question's prompt, the earlier tokens of a)
                                 / the number of those tokens )

the answers as the benchmark logged them (MUSE: KnowMem_r's greedy responses; TOFU: the retain set's
greedy answers of model utility), scored by teacher forcing under the target. Its yardstick is the same
perplexity of the true answers, which fixes the scale for a model family and answer form; the gate
(`scoring.fluent`) passes a model whose perplexity is at most FLUENCY_FACTOR times that. Empty answers
are left out (a model that stops at once is silent, not broken; on the forget set that is forgetting).
Measured on the demo's SmolLM2 target (docs/findings.md): the demo's unlearned models 1.4-1.5, the
retrained model 4.0, the true answers 1.3; every answer replaced by another question's answer 634, by a
word loop 5e4, by random tokens 2e8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..models.generation import continuation_logprobs


def answer_perplexity(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int | None = None) -> dict:
    """exp of the pooled per-token NLL of each non-empty continuation after its prompt under `model`, the
    number of answers scored and left out (empty), and each scored answer's mean NLL."""
    kept = [(p, a) for p, a in pairs if a.strip()]
    lps, _ = continuation_logprobs(model, tokenizer, kept, batch_size) if kept else ([], 0)
    tokens = sum(lp.size for lp in lps)
    nll = -sum(float(lp.sum()) for lp in lps)
    return {"perplexity": math.exp(nll / tokens) if tokens else None, "answers": len(kept),
            "empty": len(pairs) - len(kept), "tokens": tokens,
            "item_nll": [float(-lp.mean()) if lp.size else None for lp in lps]}


def retain_fluency(judge, tokenizer, rows: dict[str, list[dict]], batch_size: int | None = None) -> dict:
    """The fluency perplexity under `judge` (the target) of each model's retain answers ({role: rows of
    prompt, answer, gold}) and of the true answers (the first role's rows), with their per-item logs."""
    result = {role: answer_perplexity(judge, tokenizer, [(r["prompt"], r["answer"]) for r in items], batch_size)
              for role, items in rows.items()}
    first = next(iter(rows.values()))
    result["gold"] = answer_perplexity(judge, tokenizer, [(r["prompt"], r["gold"]) for r in first], batch_size)
    return result
