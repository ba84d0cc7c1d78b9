"""KnowMem: does the model answer questions about a split? (MUSE's knowledge-memorization metric.)

Prompt = the ICL pairs as "Question: {q}\\nAnswer: {a}\\n\\n", then "Question: {q}\\nAnswer: ".
Greedy, at most 32 new tokens; the output is cut before the first "\\n\\n", then "\\nQuestion", then
"Question:" (MUSE's `get_prefix_before_words_occur`); score = ROUGE-L F1 against the answer;
metric = mean x 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..data.corpus import QA
from ..models.generation import greedy_generate
from .rouge import aggregate, rouge

STOP_WORDS = ("\n\n", "\nQuestion", "Question:")
MAX_NEW_TOKENS = 32


def build_prompts(questions: Sequence[QA], icl: Sequence[QA]) -> list[str]:
    """MUSE's few-shot prompt for each question."""
    prefix = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in icl)
    return [prefix + f"Question: {qa.question}\nAnswer: " for qa in questions]


def cut_answer(text: str, words: Sequence[str] = STOP_WORDS) -> str:
    """Keep the text before each stop word in turn (MUSE's `get_prefix_before_words_occur`)."""
    for word in words:
        text = text.split(word)[0]
    return text


def score_answers(prompts: Sequence[str], questions: Sequence[QA], outputs: Sequence[str]) -> list[dict]:
    """Per-item log rows in MUSE's layout (prompt, gt, response, four ROUGE scores, question)."""
    rows = []
    for prompt, qa, out in zip(prompts, questions, outputs):
        response = cut_answer(out)
        rows.append({"prompt": prompt, "gt": qa.answer, "response": response, **rouge(qa.answer, response),
                     "question": qa.question})
    return rows


def evaluate_knowmem(
    model,
    tokenizer,
    questions: Sequence[QA],
    icl: Sequence[QA],
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    heal_space: bool = False,
) -> tuple[dict, list[dict], int]:
    """(aggregate, per-item log, truncated prompts) of KnowMem on `questions` (`heal_space`: see
    `greedy_generate`)."""
    prompts = build_prompts(questions, icl)
    outputs, truncated = greedy_generate(model, tokenizer, prompts, max_new_tokens, stop_strings=STOP_WORDS,
                                         batch_size=batch_size, progress=progress, heal_space=heal_space)
    rows = score_answers(prompts, questions, outputs)
    return aggregate(rows), rows, truncated
