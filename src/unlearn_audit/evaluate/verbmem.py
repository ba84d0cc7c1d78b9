"""VerbMem: does the model continue forget-set text verbatim? (MUSE's verbatim-memorization metric.)

Prompt -> greedy continuation of 128 new tokens. The ground truth is cut to its first 128 tokens the
way MUSE does it (tokenize with special tokens, keep 128 ids, decode without special tokens).
Score = ROUGE-L F1 of (cut ground truth, continuation); metric = mean x 100.

MUSE's ground truths are longer than the window, so it compares 128 generated tokens with 128 reference
tokens. With `reference_length` (`--verbmem-length reference`; the SmolLM2 demo) a ground truth shorter
than the window (the built-in world's are ~40 tokens) keeps that parity: the continuation is as many
tokens as the ground truth has, not 128 (an F1 against a reference a third of the continuation's length
scores rambling after the text). MUSE's corpora are unchanged by either choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..models.generation import greedy_generate
from .rouge import aggregate, rouge

MAX_NEW_TOKENS = 128


def cut_ground_truth(tokenizer, gt: str, max_tokens: int = MAX_NEW_TOKENS) -> str:
    """The first `max_tokens` tokens of the ground truth, decoded back to text (as MUSE does)."""
    return window(tokenizer, gt, max_tokens)[0]


def window(tokenizer, gt: str, max_tokens: int) -> tuple[str, int]:
    """The cut ground truth and its length in tokens (special tokens counted, as MUSE cuts)."""
    ids = tokenizer(gt, add_special_tokens=True).input_ids[:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True), len(ids)


def cut_continuation(tokenizer, text: str, n_tokens: int) -> str:
    """The first `n_tokens` tokens of a generated continuation."""
    ids = tokenizer(text, add_special_tokens=False).input_ids[:n_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def evaluate_verbmem(
    model,
    tokenizer,
    items: Sequence[dict[str, str]],
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    heal_space: bool = False,
    reference_length: bool = False,
) -> tuple[dict, list[dict], int]:
    """(aggregate, per-item log, truncated prompts) of VerbMem on prompt/gt items (`heal_space`: see
    `greedy_generate`; `reference_length`: continuations as long as short ground truths, see above)."""
    prompts = [it["prompt"] for it in items]
    windows = [window(tokenizer, it["gt"], max_new_tokens) for it in items]
    if not reference_length:
        windows = [(gt, max_new_tokens) for gt, _ in windows]
    longest = max((n for _, n in windows), default=max_new_tokens)
    outputs, truncated = greedy_generate(model, tokenizer, prompts, longest, batch_size=batch_size,
                                         progress=progress, heal_space=heal_space)
    rows = []
    for item, out, (gt, n) in zip(items, outputs, windows):
        if n < max_new_tokens:  # a ground truth shorter than the window: a continuation of its length
            out = cut_continuation(tokenizer, out, n)
        rows.append({"prompt": item["prompt"], "gt": gt, "response": out, **rouge(gt, out)})
    return aggregate(rows), rows, truncated
