"""`prune:magnitude`: exactly the smallest share of each matrix is zeroed."""

import torch

from unlearn_audit.attacks import parse_attack
from unlearn_audit.models.loading import load_model


def test_magnitude_pruning_zeroes_exactly_the_smallest_share(micro_target, linear_weights):
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
