"""Fluency of the retain answers (evaluate/fluency.py) and its gate (scoring.fluent, audit's exit 3)."""

import json
import math

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.fluency import answer_perplexity, retain_fluency
from unlearn_audit.evaluate.knowmem import evaluate_knowmem
from unlearn_audit.experiment.audit import verdict
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.scoring import FLUENCY_FACTOR, Gate, fluent


def test_the_perplexity_is_the_pooled_token_nll_of_the_answers_and_skips_empty_ones(micro_target):
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    pairs = [("Question: Where was Ada born?\n", "Lisbon"), ("Question: What is her job?\n", "a pilot"),
             ("Question: Why?\n", "  ")]  # no token straddles a prompt's end here (checked below)
    got = answer_perplexity(model, tok, pairs)
    total, tokens = 0.0, 0
    with torch.no_grad():  # by hand: one forward pass over prompt + answer, the answer's tokens scored
        for prompt, answer in pairs[:2]:
            p, full = tok(prompt).input_ids, tok(prompt + answer).input_ids
            assert full[: len(p)] == p
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1].float(), -1)
            total -= sum(logp[i - 1, full[i]].item() for i in range(len(p), len(full)))
            tokens += len(full) - len(p)
    assert got["answers"] == 2 and got["empty"] == 1 and got["tokens"] == tokens
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)
    assert answer_perplexity(model, tok, [("Q", "")])["perplexity"] is None


def test_nonsense_answers_fail_the_gate_and_the_models_own_answers_pass(micro_target, micro_world):
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    corpus = Corpus(micro_world)
    _, log, _ = evaluate_knowmem(model, tok, corpus.knowmem("retain")[:12], corpus.knowmem_icl("retain"),
                                 heal_space=True)
    own = [{"prompt": r["prompt"], "answer": r["response"], "gold": r["gt"]} for r in log]
    loop = [{**r, "answer": "the the the the the the"} for r in own]
    shuffled = [{**r, "answer": other["gold"]} for r, other in zip(own, own[1:] + own[:1])]
    result = retain_fluency(model, tok, {"own": own, "loop": loop, "shuffled": shuffled})
    gold = result["gold"]["perplexity"]
    assert fluent(result["own"]["perplexity"], gold)
    assert not fluent(result["loop"]["perplexity"], gold)
    assert result["shuffled"]["perplexity"] > result["own"]["perplexity"]


def test_the_gate_boundary():
    assert fluent(FLUENCY_FACTOR * 2.0, 2.0) and not fluent(FLUENCY_FACTOR * 2.0 + 1e-9, 2.0)
    assert fluent(None, 2.0) is None and fluent(3.0, None) is None


def test_forgetting_that_holds_with_nonsense_retain_answers_is_over_unlearned():
    full = {"retained": 0.1, "utility_kept": 0.95, "unlearned": {}, "target": {},
            "fluency": {"unlearned": {"perplexity": 900.0}, "gold": {"perplexity": 1.3}, "fluent": False}}
    gate, line = verdict(full, [], 0.25, 0.8)
    assert gate is Gate.OVER_UNLEARNED and gate.exit_code == 3
    assert "answers the retain questions with text the target finds nonsense" in line
    assert "retain answers NOT fluent (perplexity 900.0 under the target; the true answers 1.3" in line
    full["fluency"] = {**full["fluency"], "unlearned": {"perplexity": 1.5}, "fluent": True}
    gate, line = verdict(full, [], 0.25, 0.8)
    assert gate is Gate.HOLDS and "retain answers fluent (perplexity 1.5" in line


def test_the_audit_measures_fluency_when_utility_is_asked(run_cli, micro_target, micro_retrained, micro_world,
                                                          tmp_path):
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_retrained, "--retrained",
                             micro_retrained, "--corpus", micro_world, "--metrics", "verbmem_f,knowmem_f,knowmem_r",
                             "--limit", "8", "--schemes", "rtn-int8-channel", "--quiet", "--out", tmp_path)
    report = json.loads((tmp_path / "audit.json").read_text())
    fl = report["full"]["fluency"]
    assert fl["unlearned"]["answers"] + fl["unlearned"]["empty"] == 8 and fl["fluent"] is not None
    assert "retain answers" in report["verdict"]
    stored = json.loads((tmp_path / "fluency.json").read_text())
    assert len(stored["unlearned"]["item_nll"]) == fl["unlearned"]["answers"]  # per-item, for a second look
