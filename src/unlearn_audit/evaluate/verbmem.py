"""VerbMem: does the model continue forget-set text verbatim? (MUSE's verbatim-memorization metric.)

Prompt -> greedy continuation of 128 new tokens. The ground truth is cut to its first 128 tokens the
way MUSE does it (tokenize with special tokens, keep 128 ids, decode without special tokens).
Score = ROUGE-L F1 of (cut ground truth, continuation); metric = mean x 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..models.generation import greedy_generate
from .rouge import aggregate, rouge

MAX_NEW_TOKENS = 128


def cut_ground_truth(tokenizer, gt: str, max_tokens: int = MAX_NEW_TOKENS) -> str:
    """The first `max_tokens` tokens of the ground truth, decoded back to text (as MUSE does)."""
    ids = tokenizer(gt, add_special_tokens=True).input_ids[:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def evaluate_verbmem(
    model,
    tokenizer,
    items: Sequence[dict[str, str]],
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    heal_space: bool = False,
) -> tuple[dict, list[dict], int]:
    """(aggregate, per-item log, truncated prompts) of VerbMem on prompt/gt items (`heal_space`: see
    `greedy_generate`)."""
    prompts = [it["prompt"] for it in items]
    outputs, truncated = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                                         progress=progress, heal_space=heal_space)
    rows = []
    for item, out in zip(items, outputs):
        gt = cut_ground_truth(tokenizer, item["gt"], max_new_tokens)
        rows.append({"prompt": item["prompt"], "gt": gt, "response": out, **rouge(gt, out)})
    return aggregate(rows), rows, truncated
