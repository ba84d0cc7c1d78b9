"""`noise:`: seeded, and sized relative to each matrix."""

import torch

from unlearn_audit.attacks import parse_attack
from unlearn_audit.models.loading import load_model


def test_noise_is_seeded_and_sized_relative_to_each_matrix(micro_target, linear_weights):
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
