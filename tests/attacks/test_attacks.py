"""Recovery attacks: names parse (or fail in one line), transforms produce the weights they claim,
relearning trains, and `audit --attacks` scores them against the retrained control and resumes."""

import json
import re

import pytest
import torch

from unlearn_audit.attacks import parse_attack, parse_attacks
from unlearn_audit.attacks.relearn import forget_names, split_forget
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.experiment import audit as audit_mod
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.unlearn.losses import mean_nll
from unlearn_audit.unlearn.trainer import UnlearnConfig, unlearn

RELEARN = "steps=8,lr=1e-3"


@pytest.fixture(scope="module")
def ga_model(micro_target, micro_world, tmp_path_factory):
    """GA_GDR at a learning rate that forgets part of the forget set and keeps utility."""
    cfg = UnlearnConfig(method="ga_gdr", learning_rate=2e-4, epochs=3, dtype="fp32")
    return unlearn(micro_target, Corpus(micro_world), cfg, tmp_path_factory.mktemp("ga") / "model", show=False)


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


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}


def test_cast_rounds_every_weight_to_the_format(ga_model):
    model = load_model(ga_model, "fp32")  # unlearned in fp32 (the tiny target itself is stored in bf16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = parse_attack("cast:bf16")
    a.impl.transform(model, a)
    changed = 0
    for n, p in model.named_parameters():
        assert torch.equal(p, p.to(torch.bfloat16).float())  # representable in bf16
        assert torch.equal(p, before[n].to(torch.bfloat16).float())  # round-to-nearest of the original
        changed += int(not torch.equal(p, before[n]))
    assert changed > 0  # fp32 unlearning moved weights off the bf16 grid


def test_magnitude_pruning_zeroes_exactly_the_smallest_share(micro_target):
    model = load_model(micro_target, "fp32")
    before = linear_weights(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    a = parse_attack("prune:magnitude:0.3")
    a.impl.transform(model, a)
    after = linear_weights(model)
    for n, w in after.items():
        zero = w == 0
        assert zero.sum().item() == round(0.3 * w.numel())
        assert torch.equal(w[~zero], before[n][~zero])  # the rest untouched
        assert before[n][zero].abs().max() <= before[n][~zero].abs().min()  # the smallest went
    assert torch.equal(model.get_input_embeddings().weight, emb)  # embeddings stay, as for quantization


def test_noise_is_seeded_and_sized_relative_to_each_matrix(micro_target):
    runs = []
    for _ in range(2):
        model = load_model(micro_target, "fp32")
        a = parse_attack("noise:rel=0.1,seed=5")
        before = linear_weights(model)
        a.impl.transform(model, a)
        runs.append({n: w - before[n] for n, w in linear_weights(model).items()})
    for n, d in runs[0].items():
        assert torch.equal(d, runs[1][n])
        ratio = d.std().item() / before[n].std().item()
        assert 0.08 < ratio < 0.12


def test_forget_part_splits_the_world_by_person(micro_world):
    corpus = Corpus(micro_world)
    texts, heldout = split_forget(corpus, share=0.5, seed=0)
    names = forget_names(corpus)
    taught = {n for n in names if any(n in t for t in texts)}
    assert len(taught) == 1  # two forget people, one relearned
    for part, items in heldout.items():
        assert items
        for item in items:
            text = item if isinstance(item, str) else " ".join(item.values())
            assert not any(n in text for n in taught), (part, text)
    assert split_forget(corpus, share=0.5, seed=0) == (texts, heldout)  # seeded


def forget_nll(model_path, texts) -> float:
    model, tok = load_model(model_path, "fp32"), load_tokenizer(model_path)
    with torch.no_grad():
        losses = []
        for t in texts:
            ids = torch.tensor([tok(t).input_ids])
            losses.append(mean_nll(model(ids).logits, ids).item())
    return sum(losses) / len(losses)


@pytest.mark.parametrize("data", ["retain", "forget-part"])
def test_relearning_trains_both_the_unlearned_model_and_the_control(data, ga_model, micro_retrained, micro_world,
                                                                    tmp_path):
    from unlearn_audit.attacks.registry import Context

    corpus = Corpus(micro_world)
    a = parse_attack(f"relearn:{data}:share=0.5,{RELEARN}")
    for model in (ga_model, micro_retrained):
        out = a.impl.train(str(model), a, Context(corpus=corpus, show=False), tmp_path / "work")
        assert json.loads((out / "unlearn.json").read_text())["epochs"][-1]["step"] == 8  # steps=8, exactly
        if data == "forget-part":  # it learned the relearning texts
            texts = split_forget(corpus, 0.5, 0)[0]
            assert forget_nll(out, texts) < forget_nll(model, texts) - 0.05
        else:
            moved = [not torch.equal(w, load_model(model, "fp32").state_dict()[n])
                     for n, w in load_model(out, "fp32").state_dict().items()]
            assert all(moved)


def test_audit_scores_attacks_against_the_control_and_resumes(run_cli, micro_target, micro_retrained, ga_model,
                                                             micro_world, tmp_path, monkeypatch):
    attacks = ["cast:bf16", "prune:magnitude:0.2", f"relearn:retain:{RELEARN}",
               f"relearn:forget-part:share=0.5,{RELEARN}"]
    argv = ["audit", "--target", micro_target, "--unlearned", ga_model, "--retrained", micro_retrained,
            "--corpus", micro_world, "--metrics", "verbmem_f,knowmem_f,knowmem_r", "--out", tmp_path, "--quiet",
            "--attacks", *attacks]
    code, out, _ = run_cli(*argv)
    assert code in (0, 1), out
    report = json.loads((tmp_path / "audit.json").read_text())
    rows = {r["attack"]: r for r in report["attacks"]}
    assert list(rows) == attacks
    retain = rows[f"relearn:retain:{RELEARN}"]
    assert retain["unlearned"]["knowmem_f"] != retain["unlearned_full"]["knowmem_f"] or \
        retain["unlearned"]["verbmem_f"] != retain["unlearned_full"]["verbmem_f"]  # relearning moved it
    assert retain["control"] != retain["control_full"] and retain["control_gain"] is not None
    part = rows[f"relearn:forget-part:share=0.5,{RELEARN}"]
    assert part["evaluated_on"].startswith("held-out part")
    held = Corpus(part["evaluated_on"].split("(", 1)[1].rstrip(")"))
    assert len(held.knowmem("forget")) < len(Corpus(micro_world).knowmem("forget"))
    table = (tmp_path / "audit.md").read_text()
    assert all(f"| {a} |" in table for a in attacks) and "control gain" in table

    def no_loading(*args, **kwargs):
        raise AssertionError("a resumed audit must not load models again")

    monkeypatch.setattr(audit_mod, "load_attacked", no_loading)
    monkeypatch.setattr(audit_mod, "load_tokenizer", no_loading)
    code2, out2, _ = run_cli(*argv)
    assert code2 == code and json.loads((tmp_path / "audit.json").read_text())["attacks"] == report["attacks"]


def test_bins_forecasts_what_a_bf16_cast_erases(micro_target, tmp_path):
    """An fp32 update smaller than half a bf16 step is rounded away by the cast (forecast: 100% back);
    one of several steps survives it (forecast: about nothing back)."""
    from unlearn_audit.quantize.bins import analyse

    forecasts = {}
    for size, name in ((0.25, "below"), (8.0, "above")):
        model, tok = load_model(micro_target, "fp32"), load_tokenizer(micro_target)
        with torch.no_grad():
            for w in linear_weights(model):
                p = model.get_submodule(w).weight
                ulp = torch.exp2(torch.floor(torch.log2(p.abs().clamp(min=1e-30))) - 7)
                p.add_(size * ulp * torch.sign(torch.randn_like(p)))
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        r = analyse(micro_target, tmp_path / name, "cast-bf16")
        forecasts[name] = 1 - r["projected_survival"]
    assert forecasts["below"] == pytest.approx(1.0) and forecasts["above"] < 0.1
