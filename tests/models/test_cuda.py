"""On a CUDA GPU (skipped without one): the paths a GPU user takes by default."""

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.bf16 import resolve_arithmetic

pytestmark = pytest.mark.cuda


def test_bf16_unlearning_uses_native_arithmetic_on_a_gpu():
    assert resolve_arithmetic("auto", "bf16") == "native"


def test_evaluation_on_the_gpu_matches_the_cpu(micro_target, micro_world):
    """Same greedy answers and scores on both devices (fp32: kernels differ, argmax should not)."""
    tok, corpus = load_tokenizer(micro_target), Corpus(micro_world)
    cfg = EvalConfig(metrics=["knowmem_f", "knowmem_r"], limit=12)
    cpu = evaluate_model(load_model(micro_target), tok, corpus, cfg, show=False)["metrics"]
    gpu = evaluate_model(load_model(micro_target, device="cuda"), tok, corpus, cfg, show=False)["metrics"]
    assert gpu == pytest.approx(cpu, abs=2.0)
    assert torch.cuda.memory_allocated() > 0
