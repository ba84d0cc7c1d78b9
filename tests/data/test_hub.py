"""The hub loaders write the corpus layout (the hub itself is unreachable here: `datasets` is faked)."""

import sys
from types import SimpleNamespace

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.hub import download_tofu


def fake_tofu(config: str) -> list[dict]:
    item = {"question": f"Q of {config}?", "answer": f"A of {config}."}
    if config.endswith("_perturbed"):
        item.update(paraphrased_answer="A, reworded.", perturbed_answer=["B.", "C."])
    return [item, {**item, "question": item["question"] + " again"}]


def test_tofu_is_written_with_its_holdout_questions(monkeypatch, tmp_path):
    calls = []

    def load_dataset(repo, config, split):
        calls.append(config)
        return fake_tofu(config)

    monkeypatch.setitem(sys.modules, "datasets", SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path))
    corpus = Corpus(download_tofu("tofu-forget05"))
    assert "holdout05" in calls and "forget05_perturbed" in calls
    assert corpus.tofu("holdout") == fake_tofu("holdout05")  # question and answer: what the MIAs read
    assert corpus.tofu_splits() == ["forget", "retain", "real_authors", "world_facts", "holdout"]
    assert corpus.raw("forget")[0] == "Question: Q of forget05?\nAnswer: A of forget05."
