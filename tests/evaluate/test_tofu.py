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
