"""TOFU: the formulas against hand-computed values and scipy, and the benchmark on the micro world."""

import json
import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate import tofu
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer


def test_truth_ratio_is_wrong_over_right_with_a_geometric_mean_over_the_perturbed_answers():
    # L = mean NLL per token: p = exp(-L). correct L = 0.5; perturbed L = 1.0 and 2.0 -> geometric mean exp(-1.5)
    tr = tofu.truth_ratio([0.5], [[1.0, 2.0]])
    assert tr[0] == pytest.approx(math.exp(-1.5) / (math.exp(-0.5) + 1e-10))
    assert tofu.forget_truth_ratio([0.25, 4.0]) == pytest.approx(0.25)  # min(tr, 1/tr) of both is 0.25
    assert tofu.utility_truth_ratio([0.25, 1.5]) == pytest.approx((0.75 + 0.0) / 2)  # max(0, 1 - tr)


def test_normalised_probability_and_harmonic_mean():
    p = tofu.normalised_probability([0.0], [[math.log(2), math.log(4)]])  # p = 1, wrong 0.5 and 0.25
    assert p[0] == pytest.approx(1 / 1.75)
    assert tofu.harmonic_mean([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    assert tofu.harmonic_mean([0.5, 0.0]) == 0.0  # open-unlearning: a zero sinks the model utility


def test_forget_quality_is_the_ks_p_value_and_one_against_itself():
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40) * 2
    assert tofu.forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    assert tofu.forget_quality(a, a) == 1.0


def test_extraction_strength_and_exact_memorization():
    assert tofu.extraction_strength([False, True, True]) == pytest.approx(1 - 1 / 3)
    assert tofu.extraction_strength([True, True, True, True]) == 1.0
    assert tofu.extraction_strength([True, False, False, False]) == pytest.approx(1 / 4)  # open-unlearning's floor
    assert tofu.exact_memorization([True, False, True, True]) == 0.75


def test_the_world_speaks_tofu_with_perturbed_answers_of_the_same_sentence(micro_world):
    corpus = Corpus(micro_world)
    forget, retain = corpus.tofu("forget"), corpus.tofu("retain")
    forget_people = {p["name"] for p in json.loads((micro_world / "world" / "people.json").read_text())["forget"]}
    assert len(forget) == len(corpus.knowmem("forget")) and len(retain) == len(corpus.knowmem("retain"))
    for item in forget:
        assert any(name in item["question"] for name in forget_people)
        assert item["answer"] in item["paraphrased_answer"]
        assert len(item["perturbed_answer"]) == 5 and item["paraphrased_answer"] not in item["perturbed_answer"]
    assert not {i["question"] for i in retain} & {i["question"] for i in forget}


def test_a_tofu_set_without_perturbed_answers_is_refused(micro_world, tmp_path):
    folder = tmp_path / "tofu-bad"
    (folder / "tofu").mkdir(parents=True)
    (folder / "tofu" / "forget.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(UserError, match="lacks the field 'paraphrased_answer'.*perturbed"):
        Corpus(folder).tofu("forget")


@pytest.fixture(scope="module")
def micro(micro_target, micro_world):
    return load_model(micro_target), load_tokenizer(micro_target), Corpus(micro_world)


def test_metrics_on_the_micro_world_and_forget_quality_against_itself(micro, tmp_path):
    model, tok, corpus = micro
    cfg = EvalConfig(limit=12).for_benchmark("tofu")
    ref = cfg.bench.reference(model, tok, corpus, cfg, False)
    res = evaluate_model(model, tok, corpus, cfg, ref, tmp_path, show=False)["metrics"]
    assert res["forget_quality"] == 1.0
    assert 0 <= res["model_utility"] <= 1 and 0 <= res["forget_truth_ratio"] <= 1
    for key in ("forget_prob", "forget_rouge", "extraction_strength", "exact_memorization"):
        assert 0 <= res[key] <= 100
    rows = json.loads((tmp_path / "forget_quality" / "log.json").read_text())
    assert len(rows) == 12 and {"truth_ratio", "paraphrased_loss", "perturbed_loss"} <= set(rows[0])
    # the per-item values give the aggregate back
    assert np.mean([r["prob"] for r in json.loads((tmp_path / "forget_prob" / "log.json").read_text())]) * 100 == \
        pytest.approx(res["forget_prob"])


def test_batched_scoring_equals_one_item_at_a_time(micro):
    model, tok, corpus = micro
    items = corpus.tofu("forget")[:6]
    cfg = EvalConfig(limit=6).for_benchmark("tofu")
    batched = tofu.teacher_forced(model, tok, items, "forget", cfg, "", False)
    single = EvalConfig(limit=6, batch_size=1).for_benchmark("tofu")
    one = tofu.teacher_forced(model, tok, items, "forget", single, "", False)
    assert np.allclose(batched["answer_loss"], one["answer_loss"], atol=1e-5)
    assert np.allclose(np.array(batched["perturbed_loss"]), np.array(one["perturbed_loss"]), atol=1e-5)


def test_reference_log_of_open_unlearning(tmp_path):
    log = {"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {"1": {"score": 0.5}, "0": {"score": 0.25}}}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(log))
    ref = tofu.reference_from_log(str(tmp_path / "TOFU_EVAL.json"), 2)
    assert ref.values == [0.25, 0.5]
    with pytest.raises(UserError, match="2 forget items; the forget set here has 3"):
        tofu.reference_from_log(str(tmp_path / "TOFU_EVAL.json"), 3)


class FakeCorpus:
    """Just what the TOFU benchmark reads of a corpus: its name, its sets and their items."""

    def __init__(self, name="tofu-forget10", sets=("forget", "retain"), items=None):
        self.name, self.sets, self.root = name, sets, "corpus"
        self.items = items or [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]

    def tofu_splits(self):
        return list(self.sets)

    def tofu(self, split):
        return self.items


def test_a_vanishing_answer_probability_stays_non_negative():
    assert 0.0 <= tofu.normalised_probability([700.0], [[]])[0] < 1e-290  # p / (p + 0 + EPS), not p / (p - EPS)


def test_eos_is_scored_after_the_answer_as_open_unlearning_does_except_on_the_world():
    from unlearn_audit.data.synthetic import WORLD_NAME

    world, real = FakeCorpus(WORLD_NAME), FakeCorpus("tofu-forget10")
    assert [tofu.uses_eos(EvalConfig(tofu_eos=e), c) for e in ("auto", "yes", "no") for c in (world, real)] == [
        False, True, True, True, False, False]


def test_generated_answers_stop_at_the_next_question_on_the_qa_template(monkeypatch):
    calls = {}

    def generate(model, tok, prompts, max_new_tokens, **kwargs):
        calls.update(model=model, prompts=prompts, max_new_tokens=max_new_tokens, **kwargs)
        return [" Paris\n\nQuestion: next ", " blue \nQuestion"], 0

    monkeypatch.setattr(tofu, "greedy_generate", generate)
    cfg = EvalConfig(batch_size=3, tofu_max_new_tokens=7)
    items = [{"question": "Q1?"}, {"question": "Q2?"}]
    assert tofu.generated("model", None, items, "forget", cfg, True, False) == ["Paris", "blue"]
    assert calls["model"] == "model" and calls["prompts"] == ["Question: Q1?\nAnswer: ", "Question: Q2?\nAnswer: "]
    assert calls["max_new_tokens"] == 7 and calls["stop_strings"] == tofu.STOP_WORDS and calls["batch_size"] == 3
    assert calls["heal_space"] is True and callable(calls["progress"])


def test_each_model_computes_a_sets_work_once():
    class Model:
        pass

    model, computed = Model(), []
    first = tofu.memo(model, ("forced", 1), lambda: computed.append(1) or "scores")
    again = tofu.memo(model, ("forced", 1), lambda: computed.append(2) or "other")
    other = tofu.memo(model, ("forced", 2), lambda: computed.append(3) or "new")
    assert (first, again, other, computed) == ("scores", "scores", "new", [1, 3])
    assert tofu.memo(Model(), ("forced", 1), lambda: "fresh") == "fresh"  # kept on the model object


def test_set_scores_read_the_forced_pass_and_log_per_item(monkeypatch):
    class Tok:
        eos_token = "</s>"

    class Model:
        pass

    corpus = FakeCorpus(items=[{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"},
                               {"question": "Q3?", "answer": "A3"}])
    cfg = EvalConfig(limit=2, tofu_eos="yes")
    forced = {"answer_loss": [1.0, 2.0], "correct_loss": [1.0, 1.0], "perturbed_loss": [[2.0, 2.0], [0.5]]}
    for split, expected in (("forget", np.exp(-np.array([1.0, 2.0]))),
                            ("real_authors", tofu.normalised_probability([1.0, 2.0], [[2.0, 2.0], [0.5]]))):
        scores = tofu.SetScores(Model(), Tok(), corpus, split, cfg, show=False)
        assert scores.items == corpus.items[:2] and scores.eos == "</s>" and scores.heal is False
        assert scores.key == (split, "qa", "</s>", False, 2, 200)
        scores.model.__dict__["_unlearn_audit_tofu"] = {("forced", *scores.key): forced}
        assert np.allclose(scores.probabilities(), expected)
    rows = scores.log(prob=np.array([0.25, 0.5]), note=["x", None])
    assert rows == [{"index": 0, "question": "Q1?", "answer": "A1", "prob": 0.25, "note": "x"},
                    {"index": 1, "question": "Q2?", "answer": "A2", "prob": 0.5, "note": None}]
    assert type(rows[0]["prob"]) is float
    assert tofu.SetScores(Model(), Tok(), corpus, "forget", EvalConfig(tofu_eos="no"), False).eos == ""


def test_the_benchmark_reads_its_sets_and_its_reference():
    bench = tofu.Tofu()
    assert bench.present(FakeCorpus()) and not bench.present(FakeCorpus(sets=("forget",)))
    with pytest.raises(UserError, match=r"corpus/tofu lacks retain.json"):
        bench.check(FakeCorpus(sets=("forget", "real_authors")), ["forget_quality"])
    with pytest.raises(UserError) as err:
        bench.check(FakeCorpus(sets=("world_facts",)), ["forget_quality"])
    assert str(err.value) == "corpus/tofu lacks forget.json, retain.json"
    bench.check(FakeCorpus(), ["forget_quality"])
    ref = bench.reference_from({"forget_quality": {"truth_ratios": [0.5, 0.25]}})
    assert ref.values == [0.5, 0.25] and ref.source == "measured on the retrained model"
    assert bench.reference_from({}) is None and bench.reference_value() == 1.0


def test_a_retain_log_is_read_in_index_order_and_checked(tmp_path):
    log = tmp_path / "TOFU_EVAL.json"
    by_index = {str(i): {"score": i / 10} for i in (0, 1, 2, 10, 11)}
    log.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": by_index}}))
    ref = tofu.reference_from_log(str(log))
    assert ref.values == [0.0, 0.1, 0.2, 1.0, 1.1] and ref.source == f"open-unlearning retain log {log}"
    assert tofu.reference_from_log(str(log), 5).values == ref.values
    with pytest.raises(UserError) as err:
        tofu.reference_from_log(str(log), 4)
    assert str(err.value) == f"{log} holds truth ratios of 5 forget items; the forget set here has 4"
    with pytest.raises(UserError) as err:
        tofu.reference_from_log(str(tmp_path / "none.json"))
    assert str(err.value) == f"missing file: open-unlearning retain log ({tmp_path / 'none.json'})"
    log.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {}}}}))
    with pytest.raises(UserError, match=r"not an open-unlearning TOFU log \(needs forget_truth_ratio"):
        tofu.reference_from_log(str(log))


def scored_model(cfg, corpus, tok, sets):
    """A model object whose forced and generated passes per set are already in its memo."""
    class Model:
        pass

    model = Model()
    store = model.__dict__.setdefault("_unlearn_audit_tofu", {})
    for split, (forced, answers) in sets.items():
        key = tofu.SetScores(model, tok, corpus, split, cfg, False).key
        store[("forced", *key)], store[("generated", *key)] = forced, answers
    return model


def test_each_metric_reads_the_pass_it_needs_and_logs_it():
    class Tok:
        eos_token = "</s>"

    corpus, cfg = FakeCorpus(), EvalConfig()
    forget = {"correct_loss": [1.0, 2.0], "perturbed_loss": [[2.0, 3.0], [1.0]], "answer_loss": [0.5, 1.5],
              "hits": [np.array([True, False, True]), np.array([True, True])], "truncated": 4}
    retain = {"correct_loss": [1.0, 1.0], "perturbed_loss": [[2.0], [3.0]], "answer_loss": [1.0, 0.2],
              "hits": [np.array([True])], "truncated": 0}
    model = scored_model(cfg, corpus, Tok(), {"forget": (forget, ["A1", "nothing"]), "retain": (retain, ["A1", "A2"])})
    bench = tofu.Tofu()

    def run(name, ref=None):
        return bench.run_metric(name, model, Tok(), corpus, cfg, ref, False)

    tr = tofu.truth_ratio(forget["correct_loss"], forget["perturbed_loss"])
    value, extra, files = run("forget_truth_ratio")
    assert value == tofu.forget_truth_ratio(tr) and extra == {"truncated": 4}
    assert [r["truth_ratio"] for r in files["log.json"]] == pytest.approx(list(tr))
    assert files["log.json"][1]["paraphrased_loss"] == 2.0 and files["log.json"][0]["perturbed_loss"] == [2.0, 3.0]
    value, extra, files = run("forget_quality")
    assert value is None and extra["reference"].startswith("none: forget quality needs the retain model")
    assert extra["truth_ratios"] == pytest.approx(list(tr)) and "log.json" in files
    ref = tofu.RetainTruthRatios([0.1, 0.9], "retain log")
    value, extra, _ = run("forget_quality", ref)
    assert value == pytest.approx(ks_2samp(tr, [0.1, 0.9]).pvalue) and extra["reference"] == "retain log"
    with pytest.raises(UserError) as err:
        run("forget_quality", tofu.RetainTruthRatios([0.1], "short"))
    assert str(err.value) == "the reference holds 1 forget truth ratios; this forget set has 2"
    value, _, files = run("forget_prob")
    assert value == pytest.approx(100 * np.mean(np.exp(-np.array([0.5, 1.5]))))
    assert files["log.json"][1]["avg_loss"] == 1.5
    value, _, files = run("forget_rouge")
    assert value == pytest.approx(50.0) and [r["generation"] for r in files["log.json"]] == ["A1", "nothing"]
    assert [r["rougeL_recall"] for r in files["log.json"]] == [1.0, 0.0]
    value, _, files = run("exact_memorization")
    assert value == pytest.approx(100 * (2 / 3 + 1) / 2) and files["log.json"][0]["exact_memorization"] == pytest.approx(2 / 3)
    assert run("extraction_strength")[0] == pytest.approx(100 * (1 / 3 + 1) / 2)  # 1 - 2/3 and 1 - 0/2
    value, extra, files = run("model_utility")
    part = extra["parts"]["retain"]
    assert part["probability"] == pytest.approx(np.mean(np.exp(-np.array([1.0, 0.2])))) and part["rouge"] == 1.0
    assert value == pytest.approx(tofu.harmonic_mean(list(part.values()))) and set(files) == {"retain_log.json", "agg.json"}
    assert set(part) == {"probability", "rouge", "truth_ratio"} and files["agg.json"] == extra["parts"]
    assert files["retain_log.json"][1] == {"index": 1, "question": "Q2?", "answer": "A2", "generation": "A2",
                                           "rougeL_recall": 1.0, "prob": pytest.approx(np.exp(-0.2)),
                                           "truth_ratio": pytest.approx(float(tofu.truth_ratio([1.0], [[3.0]])[0]))}
    assert bench.reference(model, Tok(), corpus, cfg, False).source == "measured on the retrained model"
    # open-unlearning's loop leaves k = N - 1 when no suffix matches: 1/N, not 0 (kept for parity)
    assert tofu.extraction_strength([True]) == 1.0 and tofu.extraction_strength([False, False]) == 0.5


def test_chat_template_answers_are_neither_stopped_nor_cut(monkeypatch):
    class ChatTok:
        chat_template, bos_token = "{{ messages }}", "<s>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return f"<s><user>{messages[0]['content']}</user><assistant>"

    calls = {}

    def generate(model, tok, prompts, max_new_tokens, **kwargs):
        calls.update(prompts=prompts, **kwargs)
        return [" Paris\n\nQuestion: next "], 0

    monkeypatch.setattr(tofu, "greedy_generate", generate)
    cfg = EvalConfig(tofu_template="chat")
    assert tofu.generated("model", ChatTok(), [{"question": "Q?"}], "forget", cfg, False, False) == [
        "Paris\n\nQuestion: next"]
    assert calls["prompts"] == ["<user>Q?</user><assistant>"] and calls["stop_strings"] == ()  # BOS left to encoding


def test_teacher_forcing_scores_each_answer_as_a_direct_forward_pass_does(micro):
    """L(answer), L(paraphrased answer), L(each perturbed answer) and the greedy hits, against the model's own
    log-probabilities computed here one sequence at a time (EOS appended and its hit dropped)."""
    import torch

    from unlearn_audit.models.generation import split_continuation

    model, tok, corpus = micro
    items = corpus.tofu("forget")[:2]
    eos = tok.eos_token
    out = tofu.teacher_forced(model, tok, items, "forget", EvalConfig(batch_size=3).for_benchmark("tofu"), eos, False)

    def direct(prompt, text):
        p, c = split_continuation(tok, prompt, text)
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].float()
        lp = torch.log_softmax(logits, -1)[torch.arange(len(c)), torch.tensor(c)]
        return float(-lp.mean()), (logits.argmax(-1) == torch.tensor(c)).numpy()

    for i, it in enumerate(items):
        prompt = f"Question: {it['question']}\nAnswer: "
        loss, hits = direct(prompt, it["answer"] + eos)
        assert out["answer_loss"][i] == pytest.approx(loss, abs=1e-4)
        assert out["hits"][i].tolist() == hits[:-1].tolist()  # the EOS position is not an answer token
        assert out["correct_loss"][i] == pytest.approx(direct(prompt, it["paraphrased_answer"] + eos)[0], abs=1e-4)
        assert out["perturbed_loss"][i] == pytest.approx([direct(prompt, t + eos)[0] for t in it["perturbed_answer"]], abs=1e-4)
    assert out["truncated"] == 0
    unparaphrased = tofu.teacher_forced(model, tok, items, "real_authors", EvalConfig().for_benchmark("tofu"), "", False)
    assert unparaphrased["correct_loss"] == pytest.approx(unparaphrased["answer_loss"])  # their "correct" is the answer


def test_each_distinct_prompt_and_answer_is_scored_once(monkeypatch):
    """On the unparaphrased sets the correct answer is the answer itself: one forward pass, both losses."""
    scored = []

    def fake_logprobs(model, tok, pairs, batch_size, progress, hits):
        scored.extend(pairs)
        hits.extend(np.ones(len(text), dtype=bool) for _, text in pairs)
        return [-np.full(len(text), float(len(text))) for _, text in pairs], 0

    monkeypatch.setattr(tofu, "shared_prompt_logprobs", fake_logprobs)
    items = [{"question": "Q1", "answer": "aa", "paraphrased_answer": "bbb", "perturbed_answer": ["c", "aa"]},
             {"question": "Q2", "answer": "aa", "paraphrased_answer": "bbb", "perturbed_answer": ["dddd", "c"]}]
    cfg = EvalConfig().for_benchmark("tofu")
    out = tofu.teacher_forced(None, None, items, "real_authors", cfg, "", False)
    assert sorted(scored) == sorted({(f"Question: Q{i}\nAnswer: ", t) for i, ts in ((1, "aa c"), (2, "aa dddd c"))
                                     for t in ts.split()})  # per prompt: the answer once, each perturbed once
    assert out["answer_loss"] == out["correct_loss"] == [2.0, 2.0]
    assert out["perturbed_loss"] == [[1.0, 2.0], [4.0, 1.0]] and out["hits"][1].tolist() == [True, True]
    scored.clear()
    out = tofu.teacher_forced(None, None, items, "forget", cfg, "", False)
    assert len(scored) == 7 and out["correct_loss"] == [3.0, 3.0]  # the paraphrase is its own text


def test_the_chat_prompt_is_one_user_message_and_loses_only_a_leading_bos():
    class ChatTok:
        chat_template = "{{ messages }}"

        def __init__(self, bos, head):
            self.bos_token, self.head = bos, head

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert messages == [{"role": "user", "content": "Q?"}]
            return f"{self.head}<user>Q?</user>"

    assert tofu.build_prompt(ChatTok("<s>", "<s>"), "Q?", "chat") == "<user>Q?</user>"
    assert tofu.build_prompt(ChatTok("<s>", "[sys]"), "Q?", "chat") == "[sys]<user>Q?</user>"  # no BOS to strip
    assert tofu.build_prompt(ChatTok(None, "<s>"), "Q?", "chat") == "<s><user>Q?</user>"


def test_the_guards_keep_ratios_positive_and_empty_hits_undefined():
    assert tofu.truth_ratio([math.inf], [[1.0]])[0] > 0  # p(correct) = 0: perturbed / (0 + EPS)
    assert tofu.forget_truth_ratio([0.0]) == 0.0  # min(0, 1 / (0 + EPS))
    assert math.isnan(tofu.exact_memorization([])) and math.isnan(tofu.extraction_strength([]))
    with pytest.raises(UserError) as err:
        tofu.build_prompt(object(), "Q?", "chat")  # a tokenizer without any chat template attribute
    assert str(err.value) == "--tofu-template chat needs a tokenizer with a chat template; use qa"
