"""Attack names parse to every parameter (or fail in one line); presets expand."""

import re

import pytest

from unlearn_audit.attacks import parse_attack, parse_attacks
from unlearn_audit.errors import UserError


@pytest.mark.parametrize("spec, key", [
    ("quant:rtn-int4-g128", "quant:scheme=rtn-int4-g128"),
    ("cast:fp16", "cast:dtype=fp16"),
    ("prune:magnitude:0.3", "prune:method=magnitude:share=0.3"),
    ("prune:magnitude:share=0.3", "prune:method=magnitude:share=0.3"),
    ("noise:rel=0.05,seed=2", "noise:rel=0.05:std=0.0:seed=2"),
    ("relearn:retain:steps=5,lr=1e-4", "relearn:data=retain:steps=5:lr=0.0001:batch=4:share=0.1:seed=0:dtype=fp32"),
])
def test_attack_names_parse_to_every_parameter(spec, key):
    assert parse_attack(spec).key == key


@pytest.mark.parametrize("spec, message", [
    ("melt:fast", "unknown attack 'melt:fast'"),
    ("cast:fp8", "dtype must be bf16 or fp16"),
    ("prune:random:0.3", "method must be magnitude"),
    ("prune:magnitude", "'share' is required"),
    ("noise:rel=0.1,std=0.1", "exactly one of rel=R or std=S"),
    ("relearn:retain:steps=0", "steps must be a whole number >= 1"),
    ("relearn:retain:lr=fast", "lr='fast' is invalid"),
    ("relearn:forget-part:share=0.2,share=0.3", "'share' is given twice"),
])
def test_bad_attack_names_are_user_errors(spec, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_attack(spec)


def test_presets_expand_without_repeats():
    names = [a.name for a in parse_attacks(["quick", "quant:rtn-int4-g128", "cast:bf16"], say=lambda _: None)]
    assert names[:2] == ["quant:rtn-int8-channel", "quant:rtn-int4-g128"] and len(names) == len(set(names))
    assert {a.family for a in parse_attacks("all", say=lambda _: None)} == {"quant", "cast", "prune", "noise",
                                                                            "relearn"}
    assert {a.family for a in parse_attacks("prompts", say=lambda _: None)} == {"prompt"}


def test_deploy_is_what_is_served_today_and_paper_keeps_the_papers_quantizers():
    deploy = [a.name for a in parse_attacks("deploy", say=lambda _: None)]
    assert {"quant:gguf-q4_k_m", "quant:gguf-q8_0", "quant:fp8-e4m3", "quant:nvfp4"} <= set(deploy)
    paper = [a.name for a in parse_attacks("paper", say=lambda _: None)]
    assert {"quant:rtn-int4-g128", "quant:bnb-fp4", "cast:bf16"} <= set(paper)
    every = [a.name for a in parse_attacks("all", say=lambda _: None)]
    assert set(deploy) | set(paper) <= set(every) and len(every) == len(set(every))
