"""Metric functions against hand-computed values, and MUSE's formatting rules."""

import math
import types
import zlib

import numpy as np
import pytest

from unlearn_audit.data.corpus import QA
from unlearn_audit.evaluate import aggregate, mia_auc, min_k_score, rouge
from unlearn_audit.evaluate.knowmem import build_prompts, cut_answer
from unlearn_audit.evaluate.privleak import privleak, text_scores


def test_rouge_keys_and_values():
    r = rouge("the golden snitch", "the snitch")
    assert set(r) == {"rougeL", "rougeL_recall", "rouge1", "rouge1_recall"}
    assert r["rougeL_recall"] == pytest.approx(2 / 3)
    assert r["rougeL"] == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))
    assert rouge("Running dogs", "run dog")["rouge1"] == 0.0  # no stemming, as MUSE


def test_aggregate_mean_max_and_interval():
    rows = [{"prompt": "p", "rougeL": 0.0}, {"prompt": "q", "rougeL": 1.0}, {"prompt": "r", "rougeL": 0.5}]
    agg = aggregate(rows)
    assert agg["mean_rougeL"] == 0.5 and agg["max_rougeL"] == 1.0
    assert 0.0 <= agg["rougeL_ci_lo"] <= 0.5 <= agg["rougeL_ci_hi"] <= 1.0
    assert aggregate(rows) == agg  # the bootstrap is seeded


def test_min_k_is_minus_mean_of_lowest_tokens():
    lp = [-0.1, -5.0, -2.0, -0.5, -3.0, -1.0, -0.2, -0.3, -4.0, -0.05]
    assert min_k_score(lp, 0.2) == pytest.approx(4.5)  # int(10*0.2) = 2 lowest: -5, -4
    assert min_k_score(lp, 0.05) == pytest.approx(5.0)  # int(0.5) = 0 -> at least one token
    assert min_k_score(lp, 0.6) == pytest.approx(-np.mean(sorted(lp)[:6]))


def test_text_scores_follow_muse_definitions():
    lp, lower = np.array([-1.0, -2.0, -3.0]), np.array([-1.0, -1.0, -1.0])
    s = text_scores("Abc abc", lp, lower)
    assert s["PPL"] == pytest.approx(2.0)  # MUSE stores the mean NLL under "PPL"
    assert s["PPL/lower"] == pytest.approx(2.0)
    assert s["PPL/zlib"] == pytest.approx(2.0 / len(zlib.compress(b"Abc abc")))


def test_mia_auc_orientation():
    # members (holdout, label 1) with lower scores than nonmembers are detected -> AUC 1
    assert mia_auc([5, 6, 7], [1, 2, 3]) == 1.0
    assert mia_auc([1, 2, 3], [5, 6, 7]) == 0.0
    assert mia_auc([1, 2], [1, 2]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_mia_auc_equals_sklearn_roc_auc_with_ties(seed):
    from sklearn.metrics import auc, roc_curve

    rng = np.random.default_rng(seed)
    non = np.round(rng.normal(2.0, 1.0, 57), 1)  # rounding makes ties
    mem = np.round(rng.normal(1.5, 1.0, 43), 1)
    scores = np.concatenate([non, mem])
    labels = np.array([0] * len(non) + [1] * len(mem))
    fpr, tpr, _ = roc_curve(labels, -scores)
    assert mia_auc(non, mem) == pytest.approx(auc(fpr, tpr), abs=1e-12)


def test_privleak_formula():
    assert privleak(0.25, 0.5) == -50.0
    assert math.isclose(privleak(0.4772, 0.4772), 0.0)


def test_knowmem_prompt_and_cut_follow_muse():
    prompts = build_prompts([QA("Q?", "A")], [QA("q1", "a1"), QA("q2", "a2")])
    assert prompts == ["Question: q1\nAnswer: a1\n\nQuestion: q2\nAnswer: a2\n\nQuestion: Q?\nAnswer: "]
    assert cut_answer("Paris\n\nQuestion: next") == "Paris"
    assert cut_answer("Paris\nQuestion: x") == "Paris"
    assert cut_answer("Paris Question: x") == "Paris "
    assert cut_answer("no stop here") == "no stop here"


class WordTokenizer:
    """Whitespace tokenizer: one token per word, no special tokens."""

    def __call__(self, text, add_special_tokens=True):
        return types.SimpleNamespace(input_ids=text.split())

    def decode(self, ids, **kwargs):
        return " ".join(ids)


@pytest.mark.parametrize("gt_words, asked, kept", [(5, 5, 5), (200, 128, 178)])
def test_verbmem_continuation_matches_a_short_ground_truth(monkeypatch, gt_words, asked, kept):
    """A ground truth shorter than MUSE's 128-token window is compared with a continuation of its own length
    (MUSE's 128 vs 128); a longer one gets MUSE's 128 generated tokens, as before."""
    from unlearn_audit.evaluate import verbmem

    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        return [" ".join(["w"] * max_new_tokens + ["ramble"] * 50)], 0

    monkeypatch.setattr(verbmem, "greedy_generate", fake_generate)
    gt = " ".join(["w"] * gt_words)
    _, rows, _ = verbmem.evaluate_verbmem(None, WordTokenizer(), [{"prompt": "p", "gt": gt}], reference_length=True)
    assert seen["max_new_tokens"] == asked
    assert len(rows[0]["gt"].split()) == min(gt_words, 128)
    assert len(rows[0]["response"].split()) == kept
    _, rows, _ = verbmem.evaluate_verbmem(None, WordTokenizer(), [{"prompt": "p", "gt": gt}])  # MUSE's default
    assert seen["max_new_tokens"] == 128 and len(rows[0]["response"].split()) == 178


def test_min_k_and_text_scores_at_the_edges():
    assert math.isnan(min_k_score([], 0.4)) and min_k_score([-2.0], 0.4) == 2.0  # one token: itself
    s = text_scores("Abc", np.array([-1.0, -2.0, -3.0]), np.array([-0.5, -0.5, -0.5]))
    assert s["PPL/lower"] == pytest.approx(4.0)  # NLL(text) / NLL(lowercased)
    assert [k for k in s if k.startswith("Min-")] == ["Min-5%", "Min-10%", "Min-20%", "Min-30%", "Min-40%",
                                                      "Min-50%", "Min-60%"]
    assert s["Min-40%"] == pytest.approx(3.0)  # int(3 * 0.4) = 1 lowest
    empty = text_scores("x", np.array([]), np.array([]))
    assert math.isnan(empty["PPL"]) and math.isnan(empty["PPL/lower"]) and math.isnan(empty["Min-40%"])
    assert math.isnan(text_scores("x", np.array([-1.0]), np.array([0.0]))["PPL/lower"])  # NLL 0: no ratio
    assert "PPL/lower" not in text_scores("x", np.array([-1.0]), None)


def test_mia_auc_needs_both_groups_and_propagates_nan():
    assert mia_auc([2.0], [1.0]) == 1.0 and mia_auc([1], [2]) == 0.0  # one of each is enough; ints are scores
    for non, mem in (([], [1.0]), ([1.0], [])):
        with pytest.raises(ValueError) as err:
            mia_auc(non, mem)
        assert str(err.value) == "mia_auc needs at least one member and one nonmember score"
    assert math.isnan(mia_auc([1.0, float("nan")], [2.0]))


def test_privleak_is_undefined_without_a_retrained_auc():
    assert privleak(0.5, 0.0) is None and privleak(0.5, 1.0) == -50.0 and privleak(0.75, 0.5) == 50.0


def test_auc_keys_name_the_splits_and_the_score():
    from unlearn_audit.evaluate.privleak import auc_table, key_needs, published_auc_retrain

    log = {"forget": [{"PPL": 1.0, "Min-40%": 1.0}, {"PPL": 2.0, "Min-40%": 3.0}],
           "holdout": [{"PPL": 3.0, "Min-40%": 2.0}, {"PPL": 4.0, "Min-40%": 4.0}]}
    table = auc_table(log)
    assert sorted(table) == sorted(f"{a}_{b}_{k}" for a in ("forget", "holdout") for b in ("forget", "holdout")
                                   for k in ("PPL", "Min-40%"))
    assert table["forget_holdout_PPL"] == 0.0 and table["holdout_forget_PPL"] == 1.0
    assert table["forget_holdout_Min-40%"] == 0.25 and table["forget_forget_PPL"] == 0.5
    assert key_needs("forget_holdout_Min-40%") == (["forget", "holdout"], False)
    assert key_needs("retain_retain_PPL/lower") == (["retain"], True)
    for bad in ("forget_holdout_Min-45%", "forget_train_PPL", "test_holdout_PPL"):
        with pytest.raises(ValueError, match=f"not an AUC key: {bad}"):
            key_needs(bad)
    assert published_auc_retrain("MUSE-News") == (0.4772, "MUSE published AUC_retrain for NEWS (0.4772)")
    assert published_auc_retrain("books_forget")[0] == 0.5393 and published_auc_retrain("world") is None


def test_bootstrap_intervals_are_seeded_percentiles_of_shared_resamples():
    from unlearn_audit.evaluate.rouge import bootstrap_cis

    rng = np.random.default_rng(7)
    a, b = rng.random(20).tolist(), rng.random(20).tolist()
    cis = bootstrap_cis({"a": a, "const": [0.1] * 3, "b": b})
    idx = np.random.default_rng(0).integers(0, 20, size=(9999, 20))  # seed 0, 9999 resamples, shared
    for key, vals in (("a", a), ("b", b)):
        assert cis[key] == tuple(np.percentile(np.asarray(vals)[idx].mean(axis=1), [2.5, 97.5]))
    assert cis["const"] == (0.1, 0.1)  # a constant column is its value, not a mean of resampled copies
    lo, hi = bootstrap_cis({"two": [0.0, 1.0]})["two"]
    assert lo == 0.0 and hi == 1.0  # two distinct values are resampled, not a constant
    assert bootstrap_cis({"one": [0.7]})["one"] == (0.7, 0.7)


def test_aggregate_needs_rows_and_tofu_rouge_stems():
    from unlearn_audit.evaluate.rouge import rouge_l_recall_stemmed

    with pytest.raises(ValueError) as err:
        aggregate([])
    assert str(err.value) == "aggregate() needs at least one row"
    assert rouge_l_recall_stemmed("the cats were running", "a cat runs") == pytest.approx(0.5)  # cat, run
    assert rouge_l_recall_stemmed("cats running", "the dog") == 0.0
    assert rouge(gt="the cats were running", output="a cat runs")["rougeL_recall"] == 0.0  # MUSE's: no stemmer


class SpecialTokenizer:
    """Word tokenizer whose every option is visible: a BOS "<s>" when special tokens are added, dropped when
    skipped; cleaning up tokenization spaces joins " ," into ","."""

    def __call__(self, text, *, add_special_tokens):
        assert isinstance(add_special_tokens, bool)
        return types.SimpleNamespace(input_ids=["<s>"] * add_special_tokens + text.split())

    def decode(self, ids, *, skip_special_tokens, clean_up_tokenization_spaces):
        assert isinstance(skip_special_tokens, bool) and isinstance(clean_up_tokenization_spaces, bool)
        text = " ".join(i for i in ids if not (skip_special_tokens and i == "<s>"))
        return text.replace(" ,", ",") if clean_up_tokenization_spaces else text


def fake_generation(monkeypatch, module, outputs):
    """Replace the model's greedy generation in `module` by fixed outputs; returns what it was called with."""
    calls = {}

    def generate(model, tok, prompts, max_new_tokens, **kwargs):
        calls.update(model=model, tok=tok, prompts=list(prompts), max_new_tokens=max_new_tokens, **kwargs)
        return outputs, 3

    monkeypatch.setattr(module, "greedy_generate", generate)
    return calls


def test_verbmem_cuts_the_ground_truth_as_muse_does(monkeypatch):
    """MUSE tokenizes the ground truth with special tokens, keeps the window's ids and decodes without them."""
    from unlearn_audit.evaluate import verbmem

    tok = SpecialTokenizer()
    assert verbmem.window(tok, "a , b c", 3) == ("a,", 3)  # "<s>" counts towards the window
    assert verbmem.cut_ground_truth(tok, "a , b c", 4) == "a, b"
    assert verbmem.cut_continuation(tok, "x , y z", 2) == "x,"  # generated text: no special tokens added
    assert verbmem.cut_continuation(tok, "x <s> y z", 3) == "x y"  # special tokens it holds are skipped
    items = [{"prompt": "p1", "gt": "a"}, {"prompt": "p2", "gt": "c d e"}]
    calls = fake_generation(monkeypatch, verbmem, ["a b z z z", "c d e"])
    agg, rows, truncated = verbmem.evaluate_verbmem("model", tok, items, batch_size=5, progress=print,
                                                    max_new_tokens=3, reference_length=True)
    assert calls == {"model": "model", "tok": tok, "prompts": ["p1", "p2"], "max_new_tokens": 3, "batch_size": 5,
                     "progress": print, "heal_space": False}
    assert truncated == 3 and [r["prompt"] for r in rows] == ["p1", "p2"]
    # "a" is 2 ids with "<s>", shorter than the window: the continuation is cut to 2 tokens
    assert rows[0] == {"prompt": "p1", "gt": "a", "response": "a b", **rouge("a", "a b")}
    assert rows[1]["gt"] == "c d" and rows[1]["response"] == "c d e"  # the window's 3 ids: "<s>" c d
    assert agg["mean_rougeL"] == pytest.approx((rouge("a", "a b")["rougeL"] + rouge("c d", "c d e")["rougeL"]) / 2)
    verbmem.evaluate_verbmem("model", tok, items, heal_space=True)
    assert calls["heal_space"] is True and calls["max_new_tokens"] == 128


def test_knowmem_asks_muse_prompts_and_scores_the_cut_answers(monkeypatch):
    from unlearn_audit.evaluate import knowmem

    questions, icl = [QA("Q1?", "Paris"), QA("Q2?", "blue sky")], [QA("q", "a")]
    calls = fake_generation(monkeypatch, knowmem, ["Paris\n\nQuestion: more", "blue\nQuestion: x"])
    agg, rows, truncated = knowmem.evaluate_knowmem("model", "tok", questions, icl, batch_size=2, progress=print)
    assert calls == {"model": "model", "tok": "tok", "prompts": knowmem.build_prompts(questions, icl),
                     "max_new_tokens": 32, "stop_strings": knowmem.STOP_WORDS, "batch_size": 2, "progress": print,
                     "heal_space": False}
    assert truncated == 3
    assert rows[0] == {"prompt": calls["prompts"][0], "gt": "Paris", "response": "Paris", **rouge("Paris", "Paris"),
                       "question": "Q1?"}
    assert rows[1]["response"] == "blue" and rows[1]["question"] == "Q2?"
    assert agg["mean_rougeL"] == pytest.approx((1.0 + rouge("blue sky", "blue")["rougeL"]) / 2)
    knowmem.evaluate_knowmem("model", "tok", questions, icl, max_new_tokens=8, heal_space=True)
    assert calls["max_new_tokens"] == 8 and calls["heal_space"] is True
