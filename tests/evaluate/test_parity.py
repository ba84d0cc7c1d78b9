"""Metric parity with the paper authors' own MUSE-BOOKS logs: our scoring must reproduce their aggregates."""

import json

import pytest

from unlearn_audit.evaluate import aggregate, mia_auc, rouge
from unlearn_audit.evaluate.privleak import SCORE_KEYS, auc_table

METHODS = ["ga", "ga_gdr", "npo", "npo_gdr"]
ROUGE_METRICS = ["knowmem_f", "knowmem_r", "verbmem_f"]


def load(shared_dir, method, metric, name):
    path = shared_dir / "paper-logs" / "books" / method / metric / name
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("metric", ROUGE_METRICS)
def test_rouge_aggregates_match_paper_logs(shared_dir, method, metric):
    items = load(shared_dir, method, metric, "log.json")
    expected = load(shared_dir, method, metric, "agg.json")
    rows = []
    for item in items:
        scores = rouge(item["gt"], item["response"])
        for key, value in scores.items():
            assert value == pytest.approx(item[key], abs=1e-12), (key, item["gt"], item["response"])
        row = {k: item[k] for k in ("prompt", "gt", "response")} | scores
        if "question" in item:
            row["question"] = item["question"]
        rows.append(row)
    ours = aggregate(rows)
    for key in ("rougeL", "rougeL_recall", "rouge1", "rouge1_recall"):
        assert ours[f"mean_{key}"] == pytest.approx(expected[f"mean_{key}"], abs=1e-9)
        assert ours[f"max_{key}"] == pytest.approx(expected[f"max_{key}"], abs=1e-9)
    assert [k for k in ours if not k.endswith(("ci_lo", "ci_hi"))] == [
        k for k in expected if not k.endswith(("ci_lo", "ci_hi"))
    ]


@pytest.mark.parametrize("method", METHODS)
def test_privleak_aucs_match_paper_logs(shared_dir, method):
    log = load(shared_dir, method, "privleak", "log.json")
    expected = load(shared_dir, method, "privleak", "auc.json")
    ours = auc_table(log)
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_mia_auc_single_key_from_paper_log(shared_dir):
    log = load(shared_dir, "npo", "privleak", "log.json")
    expected = load(shared_dir, "npo", "privleak", "auc.json")["forget_holdout_Min-40%"]
    auc = mia_auc([d["Min-40%"] for d in log["forget"]], [d["Min-40%"] for d in log["holdout"]])
    assert auc == pytest.approx(expected, abs=1e-6)
    assert set(SCORE_KEYS) <= set(log["forget"][0])
