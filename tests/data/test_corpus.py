"""The Corpus loader: reads real MUSE files, and names the exact file/field on bad input."""

import json

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError


def test_reads_the_real_muse_news_files(shared_dir):
    c = Corpus(shared_dir / "muse" / "news")
    assert len(c.knowmem("forget")) == 100
    assert len(c.knowmem("retain")) == 100
    assert len(c.verbmem()) == 100
    for split in ("forget", "retain", "holdout"):
        assert len(c.privleak(split)) == 100
    assert all(isinstance(q.question, str) and isinstance(q.answer, str) for q in c.knowmem_icl("forget"))
    assert len(c.raw("forget")) == 889
    assert c.name == "news" and len(c.content_hash) == 64


def test_books_lacks_raw_files_and_fails_only_when_asked(shared_dir):
    c = Corpus(shared_dir / "muse" / "books")
    assert len(c.knowmem("forget")) == 100  # evaluation parts work
    with pytest.raises(UserError, match=r"missing file: corpus part raw/forget.json"):
        c.raw("forget")


def write(root, rel, content):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def test_missing_folder():
    with pytest.raises(UserError, match="corpus folder not found"):
        Corpus("/nonexistent/corpus")


def test_malformed_json_names_file_and_position(tmp_path):
    write(tmp_path, "knowmem/forget_qa.json", '[{"question": "q", "answer": ')
    with pytest.raises(UserError, match=r"malformed JSON in corpus part knowmem/forget_qa.json .*line 1"):
        Corpus(tmp_path).knowmem("forget")


def test_missing_field_names_item_and_field(tmp_path):
    write(tmp_path, "knowmem/forget_qa.json", [{"question": "q", "answer": "a"}, {"question": "q2"}])
    with pytest.raises(UserError, match=r"item 1 lacks the field 'answer'"):
        Corpus(tmp_path).knowmem("forget")


def test_wrong_field_type(tmp_path):
    write(tmp_path, "verbmem/forget.json", [{"prompt": "p", "gt": 3}])
    with pytest.raises(UserError, match=r"field 'gt' must be a string"):
        Corpus(tmp_path).verbmem()


def test_empty_split(tmp_path):
    write(tmp_path, "privleak/holdout.json", [])
    with pytest.raises(UserError, match=r"privleak/holdout.json: the list is empty"):
        Corpus(tmp_path).privleak("holdout")


def test_not_a_list(tmp_path):
    write(tmp_path, "raw/forget.json", {"text": "x"})
    with pytest.raises(UserError, match="expected a JSON list"):
        Corpus(tmp_path).raw("forget")


def test_unknown_split_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown raw split"):
        Corpus(tmp_path).raw("train")


def test_hub_alias_without_network_or_extra_is_a_clear_error(monkeypatch, tmp_path, hub_offline):
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="muse-news|hub"):
        Corpus.open("muse-news")


def test_cli_reports_bad_corpus_in_one_line_with_exit_2(run_cli, tmp_path):
    write(tmp_path, "knowmem/forget_qa.json", "{broken")
    out_dir = tmp_path.with_name(tmp_path.name + "-out")  # beside the model folder, not inside it
    code, out, err = run_cli("eval", "--model", tmp_path, "--corpus", tmp_path / "nope", "--out", out_dir)
    assert code == 2
    assert err.startswith("error: corpus folder not found") and err.count("\n") == 1
    assert not out_dir.exists()


def test_the_holdout_view_asks_the_forget_questions_about_the_holdout_people(micro_world, tmp_path):
    corpus = Corpus(micro_world)
    assert corpus.holdout_items() == {"knowmem/forget_qa.json": "knowmem/holdout_qa.json",
                                      "verbmem/forget.json": "verbmem/holdout.json", "tofu/forget.json": "tofu/holdout.json"}
    view = corpus.holdout_view(tmp_path)
    people = json.loads((micro_world / "world" / "people.json").read_text())
    holdout, forget = {p["name"] for p in people["holdout"]}, {p["name"] for p in people["forget"]}
    asked = [qa.question for qa in view.knowmem("forget")]
    assert asked and all(any(name in q for name in holdout) and not any(name in q for name in forget) for q in asked)
    assert [it["question"] for it in view.tofu("forget")] == [it["question"] for it in corpus.tofu("holdout")]
    assert view.verbmem() == json.loads((micro_world / "verbmem" / "holdout.json").read_text())
    assert view.knowmem("retain") == corpus.knowmem("retain")  # everything else as it was
    reworded = [qa.question for qa in view.knowmem_paraphrased()]  # the reworded questions follow
    assert len(reworded) == len(asked) and all(any(name in q for name in holdout) for q in reworded)
    assert reworded != asked
    assert view.name == corpus.name and view.content_hash != corpus.content_hash
    assert corpus.holdout_view(tmp_path).root == view.root  # written once


def test_real_muse_has_no_holdout_items(shared_dir):
    assert Corpus(shared_dir / "muse" / "news").holdout_items() == {}


def test_tofus_own_holdout_questions_serve_the_membership_attacks_not_the_floor(micro_world, tmp_path):
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(micro_world, copy)
    full = json.loads((copy / "tofu" / "holdout.json").read_text())
    (copy / "tofu" / "holdout.json").write_text(json.dumps([{"question": it["question"], "answer": it["answer"]}
                                                            for it in full]))  # as TOFU's holdout10 config
    corpus = Corpus(copy)
    assert [it["answer"] for it in corpus.tofu("holdout")] == [it["answer"] for it in full]
    assert "tofu/forget.json" not in corpus.holdout_items()  # no perturbed answers: not a floor for TOFU's scores
    assert "knowmem/forget_qa.json" in corpus.holdout_items()
    (copy / "tofu" / "holdout.json").write_text(json.dumps([{"question": "Who?"}]))
    with pytest.raises(UserError, match="item 0 lacks the field 'answer'"):
        Corpus(copy).tofu("holdout")
