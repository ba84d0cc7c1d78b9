"""The built-in world: deterministic, split by person, complete MUSE layout."""

import json

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, build_world, write_world
from unlearn_audit.errors import UserError


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_world(WorldConfig(people=30, seed=7), tmp_path / "a")
    b = write_world(WorldConfig(people=30, seed=7), tmp_path / "b")
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.json"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.json"))
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_different_seed_gives_a_different_world():
    a = build_world(WorldConfig(people=30, seed=1))
    b = build_world(WorldConfig(people=30, seed=2))
    assert a["corpus.json"]["content_hash"] != b["corpus.json"]["content_hash"]


def test_splits_are_disjoint_by_person_and_sized_as_asked():
    files = build_world(WorldConfig(people=100, seed=0))
    people = files["world/people.json"]
    names = {s: {p["name"] for p in people[s]} for s in people}
    assert len(names["forget"]) == 10 and len(names["holdout"]) == 10 and len(names["retain"]) == 80
    assert not names["forget"] & names["retain"]
    assert not names["forget"] & names["holdout"]
    assert not names["retain"] & names["holdout"]
    # no forget person is mentioned in retain or holdout texts, nor in the ICL examples
    retain_text = " ".join(files["raw/retain.json"] + files["raw/holdout.json"])
    icl = json.dumps(files["knowmem/forget_qa_icl.json"] + files["knowmem/retain_qa_icl.json"])
    for name in names["forget"]:
        assert name not in retain_text and name not in icl


def test_forget_questions_cover_every_fact_of_every_forget_person():
    files = build_world(WorldConfig(people=40, seed=0))
    forget = files["world/people.json"]["forget"]
    qa = files["knowmem/forget_qa.json"]
    assert len(qa) == 6 * len(forget)
    for person in forget:
        answers = {q["answer"] for q in qa if person["name"] in q["question"]}
        assert answers == {v for k, v in person.items() if k != "name"}


def test_verbmem_items_are_prefix_and_rest_of_forget_bios():
    files = build_world(WorldConfig(people=40, seed=0))
    bios = files["privleak/forget.json"]
    for item in files["verbmem/forget.json"]:
        assert item["prompt"].endswith(" ") and item["gt"]
        assert item["prompt"] + item["gt"] in bios


def test_written_world_loads_as_a_corpus(tmp_path):
    out = write_world(WorldConfig(people=20, seed=0), tmp_path / "w")
    c = Corpus(out)
    assert c.name == "world"
    assert len(c.knowmem("forget")) == 12
    assert c.raw("holdout") and c.privleak("holdout") and c.verbmem()
    assert c.info["counts"]["raw/forget.json"] == len(c.raw("forget"))


@pytest.mark.parametrize("kwargs", [{"people": 5}, {"bios_per_person": 0}, {"forget_share": 0.7}])
def test_bad_world_options_are_user_errors(kwargs):
    with pytest.raises(UserError):
        build_world(WorldConfig(**kwargs))


def test_world_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a corpus folder"):
        write_world(WorldConfig(people=20), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bio_repeats_repeat_each_training_bio_and_change_nothing_else():
    once = build_world(WorldConfig(people=30, seed=0))
    thrice = build_world(WorldConfig(people=30, seed=0, bio_repeats=3))
    bios = once["privleak/forget.json"]  # the forget people's biographies
    for bio in bios:
        assert once["raw/forget.json"].count(bio) == 1 and thrice["raw/forget.json"].count(bio) == 3
    for rel in ("knowmem/forget_qa.json", "knowmem/retain_qa.json", "verbmem/forget.json"):
        assert once[rel] == thrice[rel]


def test_default_world_content_is_unchanged_by_the_bio_repeats_option():
    """The tiny demo's world (and so every cached tiny model and number) stays what it was."""
    assert build_world(WorldConfig(people=100, seed=0))["corpus.json"]["content_hash"] == "946087e3dc14a626f26a647f507c02c900ad7209170ab65bcd07049a15bf1449"


def test_validation_people_are_unlearned_but_never_reported(tmp_path):
    """The validation split: its people's texts are in the forget training texts (unlearning removes them),
    their questions and passages only in the validation files; its retain questions are ones KnowMem_r
    does not ask (nor its few-shot examples)."""
    world = build_world(WorldConfig(people=100, seed=0, validation_share=0.05))
    people = json.loads(json.dumps(world["world/people.json"]))
    assert len(people["validation"]) == 5 and len(people["forget"]) == 10
    names = {p["name"] for p in people["validation"]}
    assert all(any(n in t for t in world["raw/forget.json"]) for n in names)
    assert not any(n in t for n in names for t in world["raw/retain.json"])
    reported = world["knowmem/forget_qa.json"] + world["knowmem/retain_qa.json"] + world["knowmem/retain_qa_icl.json"]
    assert not any(n in qa["question"] for n in names for qa in reported)
    assert not any(n in item["prompt"] + item["gt"] for n in names for item in world["verbmem/forget.json"])
    assert len(world["knowmem/forget_qa_validation.json"]) == 30 and len(world["verbmem/forget_validation.json"]) == 10
    retain_val = world["knowmem/retain_qa_validation.json"]
    assert len(retain_val) == 100 and not {q["question"] for q in retain_val} & {q["question"] for q in reported}
    c = Corpus(write_world(WorldConfig(people=100, seed=0, validation_share=0.05), tmp_path / "w"))
    assert c.has_validation() and len(c.knowmem_validation("retain")) == 100 and c.verbmem_validation()


def test_no_validation_share_writes_the_world_as_before(tmp_path):
    """Without a validation share nothing changes (the content hash above), and a rule that needs the split
    is refused with one sentence naming the option."""
    world = build_world(WorldConfig(people=100, seed=0))
    assert not any("validation" in rel for rel in world) and "validation" not in world["world/people.json"]
    c = Corpus(write_world(WorldConfig(people=20, seed=0), tmp_path / "w"))
    with pytest.raises(UserError, match="has no validation split .* --validation-share"):
        c.knowmem_validation("forget")


@pytest.mark.parametrize("share", [-0.1, 0.5])
def test_bad_validation_share_is_a_user_error(share):
    with pytest.raises(UserError, match="validation-share"):
        build_world(WorldConfig(validation_share=share))


def test_holdout_items_ask_about_people_no_model_trains_on():
    files = build_world(WorldConfig(people=40, seed=5))
    names = {p["name"] for p in files["world/people.json"]["holdout"]}
    trained = " ".join(files["raw/forget.json"] + files["raw/retain.json"])
    assert names and not any(name in trained for name in names)
    for part in ("knowmem/holdout_qa.json", "tofu/holdout.json"):
        assert files[part] and all(any(n in it["question"] for n in names) for it in files[part])
    assert len(files["knowmem/holdout_qa.json"]) == len(files["tofu/holdout.json"])  # every fact of every person
    bios = set(files["privleak/holdout.json"])  # the holdout people's passages, cut as the forget ones are
    assert files["verbmem/holdout.json"] and all(it["prompt"] + it["gt"] in bios for it in files["verbmem/holdout.json"])
