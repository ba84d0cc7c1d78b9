"""The audit's control in its three forms, and the no-control floors (experiment/control.py)."""

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.benchmark import get_benchmark
from unlearn_audit.experiment.control import Control, floor_sources, floor_words, parse_control


def test_the_three_forms_and_the_alias():
    assert parse_control("runs/retrain").kind == "retrained" and str(parse_control("runs/retrain").model) == "runs/retrain"
    assert parse_control(None, "runs/retrain") == parse_control("runs/retrain")  # --retrained is its alias
    base = parse_control("base:HuggingFaceTB/SmolLM2-135M")
    assert base.kind == "base" and base.role == "base" and str(base.model) == "HuggingFaceTB/SmolLM2-135M"
    assert parse_control("none") == Control("none") and parse_control("none").role is None
    implicit = parse_control(None)
    assert implicit.kind == "none" and implicit.implicit and "(no --control given)" in implicit.describe()


@pytest.mark.parametrize("control, retrained, message", [
    ("a", "b", "give the control once"), ("base:", None, "needs the model before fine-tuning"),
    ("  ", None, "--control is empty")])
def test_bad_controls_are_one_line(control, retrained, message):
    with pytest.raises(UserError, match=message):
        parse_control(control, retrained)


def test_floors_come_from_holdout_items_or_chance(micro_world):
    corpus = Corpus(micro_world)
    muse, tofu, wmdp = get_benchmark("muse"), get_benchmark("tofu"), get_benchmark("wmdp")
    assert floor_sources(Control("none"), corpus, muse, muse.knowledge) == {"verbmem_f": "holdout", "knowmem_f": "holdout"}
    assert floor_sources(Control("none"), corpus, tofu, tofu.knowledge) == {"forget_rouge": "holdout",
                                                                           "forget_prob": "holdout"}
    assert floor_sources(Control("none"), corpus, wmdp, wmdp.knowledge) == {"forget_acc": "chance"}
    assert wmdp.chance(corpus, "forget_acc") == pytest.approx(25.0)  # four choices per question
    assert wmdp.chance(corpus, "utility_acc") is None and muse.chance(corpus, "knowmem_f") is None
    assert floor_sources(parse_control("runs/retrain"), corpus, muse, muse.knowledge) == {}  # a control model


def test_without_holdout_items_the_floor_is_zero_only_when_no_control_was_asked_for(shared_dir):
    news, muse = Corpus(shared_dir / "muse" / "news"), get_benchmark("muse")
    sources = floor_sources(Control("none", implicit=True), news, muse, muse.knowledge)
    assert sources == {"verbmem_f": "zero", "knowmem_f": "zero"}
    assert "every point counts as retained" in floor_words(sources, muse)
    with pytest.raises(UserError, match="knowmem/holdout_qa.json, verbmem/holdout.json"):
        floor_sources(Control("none"), news, muse, muse.knowledge)
