"""`steer:orthogonalize`: no weight writes along the direction any more, so no hidden state has it."""

import pytest
import torch

from unlearn_audit.attacks import Context, parse_attack
from unlearn_audit.attacks.steer import orthogonalize, separating_direction
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model, load_tokenizer, model_config


def test_orthogonalization_removes_the_direction_exactly(micro_target, micro_world):
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    d = separating_direction(model, tok, Corpus(micro_world), layer=0)
    assert abs(float(d.norm()) - 1) < 1e-9
    orthogonalize(model, d)
    d32 = d.float()
    assert model.get_input_embeddings().weight.matmul(d32).abs().max() < 1e-4
    ids = torch.tensor([tok("Question: Who?\nAnswer: ").input_ids])
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states[:-1]  # the last one is normed
    assert all(float((s @ d32).abs().max()) < 1e-3 for s in states)


def test_the_attack_loads_an_orthogonalized_model(micro_target, micro_world):
    attack = parse_attack("steer:orthogonalize:layer=0")
    ctx = Context(corpus=Corpus(micro_world), tokenizer=load_tokenizer(micro_target), show=False)
    model = attack.impl.load(str(micro_target), attack, ctx)
    plain = load_model(micro_target)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(plain.named_parameters())[n])]
    assert any("o_proj" in n for n in changed) and any("down_proj" in n for n in changed)
    assert not any("q_proj" in n or "up_proj" in n for n in changed)
    with pytest.raises(UserError, match="out of range"):
        bad = parse_attack("steer:orthogonalize:layer=50")
        bad.impl.check_model(bad, model_config(micro_target))
