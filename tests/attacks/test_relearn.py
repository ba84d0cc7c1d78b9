"""`relearn:`: the forget-part split is by person; relearning trains the unlearned model and the control."""

import json

import pytest
import torch

from unlearn_audit.attacks import parse_attack
from unlearn_audit.attacks.relearn import forget_names, split_forget
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.unlearn.losses import mean_nll

RELEARN = "steps=8,lr=1e-3"


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
        assert json.loads((out / "train.json").read_text())["epochs"][-1]["step"] == 8  # steps=8, exactly
        if data == "forget-part":  # it learned the relearning texts
            texts = split_forget(corpus, 0.5, 0)[0]
            assert forget_nll(out, texts) < forget_nll(model, texts) - 0.05
        else:
            moved = [not torch.equal(w, load_model(model, "fp32").state_dict()[n])
                     for n, w in load_model(out, "fp32").state_dict().items()]
            assert all(moved)
