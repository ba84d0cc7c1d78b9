"""The unlearned model the attack tests attack, and helpers they share."""

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.unlearn.trainer import UnlearnConfig, unlearn


@pytest.fixture(scope="session")
def ga_model(micro_target, micro_world, tmp_path_factory):
    """GA_GDR at a learning rate that forgets part of the forget set and keeps utility."""
    cfg = UnlearnConfig(method="ga_gdr", learning_rate=2e-4, epochs=3, dtype="fp32")
    return unlearn(micro_target, Corpus(micro_world), cfg, tmp_path_factory.mktemp("ga") / "model", show=False)


def weights_of_linears(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}


@pytest.fixture(scope="session")
def linear_weights():
    """{name: weight copy} of a model's Linear layers but the output head (the layers attacks transform)."""
    return weights_of_linears
