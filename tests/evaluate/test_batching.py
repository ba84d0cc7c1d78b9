"""Batched evaluation must give the same answers as MUSE's one-item-at-a-time loop."""

import numpy as np

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.knowmem import STOP_WORDS, build_prompts, cut_answer
from unlearn_audit.models.generation import greedy_generate, token_logprobs
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_batched_generation_equals_batch_size_one(micro_target, micro_world):
    corpus = Corpus(micro_world)
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    prompts = build_prompts(corpus.knowmem("retain")[:24], corpus.knowmem_icl("retain"))
    prompts += [v["prompt"] for v in corpus.verbmem()[:8]]
    batched, _ = greedy_generate(model, tok, prompts, 32, stop_strings=STOP_WORDS, batch_size=16)
    single, _ = greedy_generate(model, tok, prompts, 32, batch_size=1)  # no early stop at all
    assert [cut_answer(t) for t in batched] == [cut_answer(t) for t in single]


def test_batched_logprobs_equal_batch_size_one(micro_target, micro_world):
    corpus = Corpus(micro_world)
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    texts = corpus.privleak("forget") + corpus.privleak("holdout")[:5]
    batched, _ = token_logprobs(model, tok, texts, batch_size=16)
    single, _ = token_logprobs(model, tok, texts, batch_size=1)
    for a, b, t in zip(batched, single, texts):
        assert a.shape == b.shape == (len(tok(t).input_ids) - 1,)
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_reference_loss_matches_hf_loss(micro_target, micro_world):
    """Our per-token log-probs average to exactly the loss HF reports (MUSE's "PPL" key)."""
    import torch

    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    text = Corpus(micro_world).privleak("forget")[0]
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    (lp,), _ = token_logprobs(model, tok, [text])
    assert abs(-lp.mean() - loss) < 1e-5
