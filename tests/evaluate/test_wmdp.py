"""WMDP: the harness's prompt, accuracy, file checks, and the lm-evaluation-harness engine against ours."""

import json

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.mc_template import mc_prompt
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.evaluate.wmdp import accuracy_rows


def test_prompt_is_the_harness_template():
    item = {"question": " What? ", "choices": ["w", "x", "y", "z"], "answer": 2}
    assert mc_prompt(item, "bio") == ("The following are multiple choice questions (with answers) about biology.\n\n"
                                      "What?\nA. w\nB. x\nC. y\nD. z\nAnswer:")


def test_accuracy_is_the_argmax_letter():
    items = [{"question": "q", "choices": list("abcd"), "answer": 1}, {"question": "q", "choices": list("abcd"), "answer": 0}]
    rows = accuracy_rows(items, [[-3.0, -1.0, -2.0, -4.0], [-1.0, -0.5, -2.0, -3.0]], "bio")
    assert [r["correct"] for r in rows] == [True, False]


def test_world_questions_have_four_choices_one_true(micro_world):
    corpus = Corpus(micro_world)
    forget = corpus.mc("forget", "world")
    truths = {q.question: q.answer for q in corpus.knowmem("forget")}
    assert len(forget) == len(truths)
    for item in forget:
        assert item["choices"][item["answer"]] == truths[item["question"]] and len(set(item["choices"])) == 4
    assert corpus.mc_subjects("utility") == ["world"]


def test_an_item_with_three_options_is_refused(tmp_path):
    (tmp_path / "wmdp" / "forget").mkdir(parents=True)
    (tmp_path / "wmdp" / "forget" / "bio.json").write_text(json.dumps([{"question": "q", "choices": ["a", "b", "c"], "answer": 0}]))
    with pytest.raises(UserError, match="has 3 choices; WMDP-style items have exactly 4"):
        Corpus(tmp_path).mc("forget", "bio")


def word_level_model(words: list[str]):
    """A tiny random Llama with a whitespace tokenizer that adds BOS (both engines then see the same tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "[UNK]", *sorted(set(words))])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="[UNK]")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)).eval()
    return model, tok


def test_lm_eval_engine_scores_as_ours(micro_world, tmp_path):
    pytest.importorskip("lm_eval")
    corpus = Corpus(micro_world)
    text = " ".join(mc_prompt(it, "world") for g in ("forget", "utility") for it in corpus.mc(g, "world"))
    model, tok = word_level_model([*text.replace(".", " . ").replace(":", " : ").replace("?", " ? ").split(),
                                   "A", "B", "C", "D"])
    logs = {}
    for engine in ("builtin", "lm-eval"):
        cfg = EvalConfig(limit=10, mc_engine=engine).for_benchmark("wmdp")
        res = evaluate_model(model, tok, corpus, cfg, None, tmp_path / engine, show=False)
        logs[engine] = (res["metrics"], json.loads((tmp_path / engine / "forget_acc" / "log.json").read_text()))
    assert logs["builtin"][0] == logs["lm-eval"][0]
    ours, theirs = logs["builtin"][1], logs["lm-eval"][1]
    assert [r["choice"] for r in ours] == [r["choice"] for r in theirs]
    assert max(abs(a - b) for r, s in zip(ours, theirs) for a, b in zip(r["loglikelihoods"], s["loglikelihoods"])) < 1e-4
