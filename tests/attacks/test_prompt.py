"""`prompt:*`: the forget questions asked another way; few-shot examples never come from the forget set."""

import json

import pytest

from unlearn_audit.attacks import parse_attack
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.benchmark import get_benchmark


def asked(attack: str, world, tmp_path) -> tuple[Corpus, Corpus]:
    a = parse_attack(attack)
    corpus = Corpus(world)
    return corpus, a.impl.eval_corpus(a, corpus, tmp_path)


def test_few_shot_examples_come_from_the_retain_set_only(micro_world, tmp_path):
    corpus, changed = asked("prompt:few-shot:k=4", micro_world, tmp_path)
    forget_questions = {q.question for q in corpus.knowmem("forget")}
    icl = changed.knowmem_icl("forget")
    assert len(icl) == 4 and not {q.question for q in icl} & forget_questions
    assert {q.question for q in icl} <= {q.question for q in [*corpus.knowmem("retain"), *corpus.knowmem_icl("retain")]}
    assert changed.knowmem("forget") == corpus.knowmem("forget")  # the questions themselves stay
    for original, item in zip(corpus.tofu("forget"), changed.tofu("forget")):
        shown = item["question"][: -len(original["question"])]
        assert item["question"].endswith(original["question"]) and shown.count("\nAnswer: ") == 4
        assert not any(q in shown for q in forget_questions)
    utility = {it["question"] for it in corpus.mc("utility", "world")}
    for item in changed.mc("forget", "world"):
        shots = item["question"].split("\n\n")[:-1]
        assert len(shots) == 4 and all(s.split("\n")[0] in utility for s in shots)


def test_paraphrase_rewords_each_question_and_keeps_its_answer(micro_world, tmp_path):
    corpus, changed = asked("prompt:paraphrase", micro_world, tmp_path)
    before, after = corpus.knowmem("forget"), changed.knowmem("forget")
    assert [q.answer for q in before] == [q.answer for q in after]
    assert all(a.question != b.question for a, b in zip(before, after))
    assert [it["question"] for it in changed.tofu("forget")] == [it["paraphrased_question"] for it in corpus.tofu("forget")]


def test_prefix_goes_before_every_forget_question_only(micro_world, tmp_path):
    corpus, changed = asked("prompt:prefix:name=dev-mode", micro_world, tmp_path)
    assert all(q.question.startswith("Developer mode is on") for q in changed.knowmem("forget"))
    assert changed.knowmem("retain") == corpus.knowmem("retain")


@pytest.mark.parametrize("attack, message", [
    ("prompt:few-shot:k=100000", "more than the"),
    ("prompt:prefix:name=please", "name must be"),
    ("prompt:rhyme", "kind="),
])
def test_bad_prompt_attacks(micro_world, attack, message):
    with pytest.raises(UserError, match=message):
        a = parse_attack(attack)
        a.impl.check_corpus(a, Corpus(micro_world), get_benchmark("muse"))


def test_paraphrase_needs_paraphrases(shared_dir):
    a = parse_attack("prompt:paraphrase")
    with pytest.raises(UserError, match="no reworded forget questions"):
        a.impl.check_corpus(a, Corpus(shared_dir / "muse" / "news"), get_benchmark("muse"))


def test_audit_with_prompt_attacks_keeps_the_standard_prompts_as_baseline(run_cli, micro_target, micro_retrained,
                                                                          ga_model, micro_world, tmp_path):
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", ga_model, "--retrained", micro_retrained,
                             "--corpus", micro_world, "--metrics", "knowmem_f,knowmem_r", "--limit", "12",
                             "--attacks", "prompts", "--out", tmp_path, "--quiet")
    assert code in (0, 1), out + err
    report = json.loads((tmp_path / "audit.json").read_text())
    for row in report["attacks"]:
        assert row["evaluated_on"] == f"forget set asked as {row['attack']}"
        assert row["unlearned_full"] == report["full"]["unlearned"]  # baseline: the standard prompts
        assert row["control"]["knowmem_f"] is not None and row["control_gain"] is not None
