"""MUSE's reference evaluation loop, kept as the yardstick for our batched evaluation.

One `generate` call per VerbMem/KnowMem item, two forward passes per PrivLeak text and a Python loop
over its tokens - exactly the algorithm of MUSE's `eval.py` (greedy decoding). `bench/eval_speed.py`
times it against `runner.evaluate_model` and asserts that both give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.corpus import Corpus
from .knowmem import build_prompts, cut_answer
from .privleak import SPLITS, auc_table, text_scores
from .rouge import aggregate, rouge
from .verbmem import cut_ground_truth


@torch.inference_mode()
def generate_one(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids
    out = model.generate(input_ids.to(model.device), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True,
                                  clean_up_tokenization_spaces=True)[0]


@torch.inference_mode()
def compute_ppl(model, tokenizer, text: str) -> list[float]:
    """MUSE's compute_ppl: one forward pass, then a Python loop collecting each token's log-prob."""
    input_ids = torch.tensor(tokenizer.encode(text)).unsqueeze(0).to(model.device)
    logits = model(input_ids, labels=input_ids).logits
    probabilities = torch.nn.functional.log_softmax(logits.float(), dim=-1)
    return [probabilities[0, i, token_id].item() for i, token_id in enumerate(input_ids[0][1:])]


def reference_verbmem(model, tokenizer, corpus: Corpus, limit: int | None = None) -> float:
    rows = []
    for item in corpus.verbmem()[:limit]:
        gt = cut_ground_truth(tokenizer, item["gt"])
        rows.append({"gt": gt, **rouge(gt, generate_one(model, tokenizer, item["prompt"], 128))})
    return aggregate(rows)["mean_rougeL"] * 100


def reference_knowmem(model, tokenizer, corpus: Corpus, split: str, limit: int | None = None) -> float:
    qa = corpus.knowmem(split)[:limit]
    rows = []
    for prompt, q in zip(build_prompts(qa, corpus.knowmem_icl(split)), qa):
        rows.append({"gt": q.answer, **rouge(q.answer, cut_answer(generate_one(model, tokenizer, prompt, 32)))})
    return aggregate(rows)["mean_rougeL"] * 100


def reference_auc(model, tokenizer, corpus: Corpus, limit: int | None = None) -> float:
    """The forget/holdout Min-40% AUC (MUSE's PrivLeak key) from two passes per text."""
    log = {}
    for split in SPLITS:
        log[split] = []
        for text in corpus.privleak(split)[:limit]:
            lp = np.array(compute_ppl(model, tokenizer, text))
            lower = np.array(compute_ppl(model, tokenizer, text.lower()))
            log[split].append(text_scores(text, lp, lower))
    return auc_table(log)["forget_holdout_Min-40%"]


def reference_metrics(model, tokenizer, corpus: Corpus, limit: int | None = None) -> dict[str, float]:
    """VerbMem, KnowMem f/r and the forget/holdout Min-40% AUC, one item at a time (MUSE's loop)."""
    return {"verbmem_f": reference_verbmem(model, tokenizer, corpus, limit),
            "knowmem_f": reference_knowmem(model, tokenizer, corpus, "forget", limit),
            "knowmem_r": reference_knowmem(model, tokenizer, corpus, "retain", limit),
            "auc": reference_auc(model, tokenizer, corpus, limit)}
