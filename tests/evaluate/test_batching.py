"""Batched evaluation must give the same answers as MUSE's one-item-at-a-time loop."""

import numpy as np
import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.knowmem import STOP_WORDS, build_prompts, cut_answer
from unlearn_audit.evaluate.reference import generate_one
from unlearn_audit.models.generation import (
    SharedPrefix,
    common_prefix_length,
    greedy_generate,
    token_logprobs,
)
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_batched_generation_equals_batch_size_one(micro_target, micro_world):
    corpus = Corpus(micro_world)
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    prompts = build_prompts(corpus.knowmem("retain")[:24], corpus.knowmem_icl("retain"))
    prompts += [v["prompt"] for v in corpus.verbmem()[:8]]
    batched, _ = greedy_generate(model, tok, prompts, 32, stop_strings=STOP_WORDS, batch_size=16)
    single, _ = greedy_generate(model, tok, prompts, 32, batch_size=1)  # no early stop at all
    assert [cut_answer(t) for t in batched] == [cut_answer(t) for t in single]


def test_shared_prefix_generation_equals_muse_loop(micro_target, micro_world):
    """KnowMem prompts share their few-shot examples: encoded once, the answers stay MUSE's."""
    corpus = Corpus(micro_world)
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    prompts = build_prompts(corpus.knowmem("forget")[:20], corpus.knowmem_icl("forget"))
    ids = tok(prompts).input_ids
    shared = SharedPrefix.find(model, ids, tok.pad_token_id)
    assert shared is not None and len(shared.prefix) > len(ids[0]) // 2  # the path under test is taken
    assert len({len(x) for x in ids}) > 1  # prompts of different lengths: padding sits after the prefix
    batched, _ = greedy_generate(model, tok, prompts, 32, stop_strings=STOP_WORDS, batch_size=7)
    assert [cut_answer(t) for t in batched] == [cut_answer(generate_one(model, tok, p, 32)) for p in prompts]
    # the next-token distribution of each row is the one it has alone (padding masked, positions kept)
    input_ids, mask, cache = shared.batch(ids, "cpu")
    p = len(shared.prefix)
    with torch.no_grad():
        rows = model(input_ids[:, p:], attention_mask=mask, past_key_values=cache,
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, p:]).logits[:, -1]
        alone = torch.stack([model(torch.tensor([x])).logits[0, -1] for x in ids])
    torch.testing.assert_close(rows, alone, atol=1e-4, rtol=1e-4)


def test_common_prefix_leaves_every_prompt_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert common_prefix_length([[7, 2], [1, 2]]) == 0
    assert common_prefix_length([]) == 0


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


def grouped_head_model(tok):
    """A random Llama with grouped KV heads (4 query heads share 2 KV heads), as SmolLM2, Llama-3, Qwen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      initializer_range=0.2, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def test_grouped_kv_heads_give_the_same_logits_under_a_padding_mask(micro_target, micro_world):
    """The CPU attention that keeps KV heads grouped must compute what transformers' SDPA does, padding
    included, and hand the model back with its own attention."""
    from unlearn_audit.models.generation import grouped_kv_attention, pad

    tok = load_tokenizer(micro_target)
    model = grouped_head_model(tok)
    texts = [v["prompt"] for v in Corpus(micro_world).verbmem()[:4]]
    ids, mask = pad(tok(texts).input_ids, tok.pad_token_id, "cpu", left=True)
    assert (mask == 0).any()  # rows of different lengths: the padding mask is in play
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
        with grouped_kv_attention(model):
            assert model.config._attn_implementation != "sdpa"  # the grouped path is taken
            grouped = model(ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    keep = mask.bool()
    assert torch.allclose(plain[keep], grouped[keep], atol=1e-5)


def test_batched_generation_with_grouped_kv_heads_equals_one_at_a_time(micro_target, micro_world):
    tok = load_tokenizer(micro_target)
    model = grouped_head_model(tok)
    prompts = [v["prompt"] for v in Corpus(micro_world).verbmem()[:6]]
    batched, _ = greedy_generate(model, tok, prompts, 16, batch_size=6)
    single, _ = greedy_generate(model, tok, prompts, 16, batch_size=1)
    assert batched == single and len(set(batched)) > 1


def tofu_pairs(corpus, n: int) -> list[tuple[str, str]]:
    """Each question's prompt with its answer, paraphrase and perturbed answers, as TOFU scores them."""
    from unlearn_audit.evaluate.tofu import build_prompt

    return [(build_prompt(None, it["question"], "qa"), text) for it in corpus.tofu("forget")[:n]
            for text in (it["answer"], it["paraphrased_answer"], *it["perturbed_answer"])]


def rows_seen(model) -> list[int]:
    """Rows of every forward pass from now on (a hook on the model's input)."""
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    return seen


def tiny_gemma3(tok, sliding_window: int):
    """A random Gemma 3 text model (sliding-window and global layers, query-key norms, scaled embeddings)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=sliding_window,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           attn_implementation="sdpa", initializer_range=0.2)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("attention", ["trained", "sdpa-grouped", "eager-grouped", "gemma3"])
def test_a_prompt_and_its_continuations_in_one_row_score_as_rows_of_their_own(micro_target, micro_world, attention):
    """The tree mask and position ids make every continuation read what it reads alone: log-probabilities to
    float rounding, the same greedy hits; one row per prompt instead of one per pair."""
    from unlearn_audit.models.generation import continuation_logprobs, shared_prompt_logprobs

    tok = load_tokenizer(micro_target)
    model = {"trained": lambda: load_model(micro_target), "gemma3": lambda: tiny_gemma3(tok, 512)}.get(
        attention, lambda: grouped_head_model(tok))()
    if attention == "eager-grouped":
        model.config._attn_implementation = "eager"
    pairs = tofu_pairs(Corpus(micro_world), 5)
    alone_hits, shared_hits = [], []
    alone, _ = continuation_logprobs(model, tok, pairs, 4, hits=alone_hits)
    seen = rows_seen(model)
    shared, truncated = shared_prompt_logprobs(model, tok, pairs, 4, hits=shared_hits)
    assert truncated == 0 and sum(seen) == 5 and len(seen) == 2  # 5 prompts in rows of 4: 35 pairs, 2 passes
    for a, b, ha, hb in zip(alone, shared, alone_hits, shared_hits):
        assert a.shape == b.shape and a.size > 0
        np.testing.assert_allclose(b, a, atol=1e-4)
        assert hb.tolist() == ha.tolist()


def test_rows_past_the_context_and_other_architectures_score_each_pair_alone(micro_target, micro_world, monkeypatch):
    from unlearn_audit.models import generation
    from unlearn_audit.models.generation import continuation_logprobs, shared_prompt_logprobs

    tok = load_tokenizer(micro_target)
    model = grouped_head_model(tok)
    pairs = tofu_pairs(Corpus(micro_world), 3)
    longest = max(sum(map(len, generation.split_continuation(tok, p, c))) for p, c in pairs)
    model.config.max_position_embeddings = longest  # every pair fits alone; no prompt's whole row does
    alone, _ = continuation_logprobs(model, tok, pairs, 4)
    seen = rows_seen(model)
    shared, _ = shared_prompt_logprobs(model, tok, pairs, 4)
    assert sum(seen) == len(pairs)  # one row per pair
    for a, b in zip(alone, shared):
        np.testing.assert_array_equal(a, b)
    gemma = tiny_gemma3(tok, sliding_window=longest)  # a 4D mask replaces the window: rows must fit in it
    alone, _ = continuation_logprobs(gemma, tok, pairs, 4)
    seen = rows_seen(gemma)
    shared, _ = shared_prompt_logprobs(gemma, tok, pairs, 4)
    assert sum(seen) == len(pairs)
    for a, b in zip(alone, shared):
        np.testing.assert_array_equal(a, b)
    seen = rows_seen(model)
    monkeypatch.setattr(generation, "SHARED_PROMPT_TYPES", ("gemma3_text",))
    model.config.max_position_embeddings = 1024
    shared_prompt_logprobs(model, tok, pairs, 4)
    assert sum(seen) == len(pairs)  # an architecture not checked: separate rows


def test_the_tree_mask_lets_continuations_see_the_prompt_and_themselves_only():
    from unlearn_audit.models.generation import tree_mask

    mask = tree_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]), torch.float32)[0, 0] == 0
    assert mask.tolist() == [[True, False, False, False, False, False],
                             [True, True, False, False, False, False],
                             [True, True, True, False, False, False],
                             [True, True, True, True, False, False],
                             [True, True, False, False, True, False],
                             [False, False, False, False, False, True]]
