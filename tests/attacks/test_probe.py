"""`probe:*`: the logit lens at the last layer is the model's own output; a linear probe finds a planted
feature; probes run in an audit against the retrained control; bad probes are refused before loading."""

import json

import numpy as np
import pytest
import torch

from unlearn_audit.attacks import parse_attack, probe
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.benchmark import get_benchmark
from unlearn_audit.models.generation import encode_documents, split_continuation
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_logit_lens_at_the_last_layer_is_the_models_own_choice(micro_target, micro_world):
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    items = probe.candidate_items(Corpus(micro_world), "forget")[:8]
    lens = probe.logit_lens_choices(model, tok, items)
    assert lens.shape == (8, model.config.num_hidden_layers)
    for item, chosen in zip(items, lens[:, -1]):
        prompt = probe.prompt_of(item)
        with torch.no_grad():
            logits = model(torch.tensor([encode_documents(tok, [prompt])[0]])).logits[0, -1]
        firsts = [split_continuation(tok, prompt, c)[1][0] for c in item["choices"]]
        assert chosen == int(logits[firsts].argmax())


def test_the_linear_probe_recovers_a_planted_linear_map():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(200, 8))
    planted, shift = rng.normal(size=(8, 8)), rng.normal(size=8)
    last = first @ planted + shift
    states = [torch.tensor(np.stack([a, b]), dtype=torch.float32) for a, b in zip(first, last)]
    maps = probe.fit_maps(states, ridge=1e-6)
    assert np.allclose(np.hstack([first, np.ones((200, 1))]) @ maps[0], last, atol=1e-3)
    assert np.allclose(maps[1][:8], np.eye(8), atol=1e-3)  # the last layer maps onto itself


def test_the_linear_probe_on_the_world(micro_target, micro_world):
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    corpus = Corpus(micro_world)
    retain, forget = probe.candidate_items(corpus, "retain"), probe.candidate_items(corpus, "forget")
    acc, layer = probe.linear_probe_accuracy(model, tok, retain, forget, seed=0)
    assert 0 <= layer < model.config.num_hidden_layers
    answers = np.array([it["answer"] for it in forget])
    own = float((probe.logit_lens_choices(model, tok, forget)[:, -1] == answers).mean())
    chance = float(np.mean([1 / len(it["choices"]) for it in forget]))
    last, _ = probe.linear_probe_accuracy(model, tok, retain, forget, seed=0, layer=model.config.num_hidden_layers - 1)
    assert last == pytest.approx(own, abs=1.5 / len(forget))  # at the last layer the lens is the model's own output
    assert own > chance + 0.2 and acc >= chance  # the target knows its forget facts; the probe reads them


@pytest.mark.parametrize("attack, message", [("probe:linear:layer=99", "out of range"), ("probe:gaze", "kind=")])
def test_bad_probes(micro_world, micro_target, attack, message):
    from unlearn_audit.models.loading import model_config

    with pytest.raises(UserError, match=message):
        a = parse_attack(attack)
        a.impl.check_model(a, model_config(micro_target))


def test_a_probe_needs_candidate_answers(shared_dir):
    a = parse_attack("probe:logit-lens")
    with pytest.raises(UserError, match="no candidate answers"):
        a.impl.check_corpus(a, Corpus(shared_dir / "muse" / "news"), get_benchmark("muse"))


def test_audit_with_probes_scores_them_against_the_control(run_cli, micro_target, micro_retrained, ga_model,
                                                           micro_world, tmp_path):
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", ga_model, "--retrained", micro_retrained,
                             "--corpus", micro_world, "--metrics", "knowmem_f,knowmem_r", "--limit", "12",
                             "--attacks", "hidden", "--out", tmp_path, "--quiet")
    assert code in (0, 1), out + err
    report = json.loads((tmp_path / "audit.json").read_text())
    rows = {r["attack"]: r for r in report["attacks"]}
    assert list(rows) == ["probe:logit-lens", "probe:linear", "steer:orthogonalize"]
    for row in (rows["probe:logit-lens"], rows["probe:linear"]):
        assert row["knowledge"] == ["probe_acc"] and row["evaluated_on"].startswith("hidden states")
        for role in ("unlearned", "target", "control"):
            assert 0 <= row[role]["probe_acc"] <= 100 and 0 <= row[role]["output_acc"] <= 100
        assert row["unlearned_full"] == {"probe_acc": row["unlearned"]["output_acc"]}
    steer = rows["steer:orthogonalize"]  # a weight transform: every metric again, the control alike
    assert steer["evaluated_on"] == "forget set" and steer["control"]["knowmem_f"] is not None
    assert "| probe:linear |" in (tmp_path / "audit.md").read_text() and "Hidden or gone?" in out
