"""Tiny Llama-style model folders built without training (random weights, seconds), for the deployment
formats' tests: widths 256 (k-quant blocks fit) and 384 / 128 (they do not), tied or untied heads."""

from __future__ import annotations

import pytest
import torch

TEXTS = [f"Person {i} was born in town {i * 7 % 13}, works as a {('baker', 'nurse', 'pilot')[i % 3]} and "
         f"likes the colour number {i % 5}." for i in range(120)]


@pytest.fixture(scope="session")
def make_llama(tmp_path_factory):
    """make_llama(hidden=256, intermediate=384, layers=2, tied=False, dtype=torch.float32, seed=0) -> folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.models.tiny import build_tokenizer

    tokenizer = build_tokenizer(TEXTS, 300)
    made = {}

    def make(hidden=256, intermediate=384, layers=2, tied=False, dtype=torch.float32, seed=0):
        key = (hidden, intermediate, layers, tied, dtype, seed)
        if key not in made:
            config = LlamaConfig(vocab_size=384, hidden_size=hidden, intermediate_size=intermediate,
                                 num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                 num_key_value_heads=hidden // 64, head_dim=64, max_position_embeddings=512,
                                 tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(dtype)
            folder = tmp_path_factory.mktemp("llama") / "model"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def nudged(make_llama, tmp_path_factory):
    """nudged(folder, scale, seed=1) -> a copy of the model with a random update of relative size `scale`
    on half of its weights (an 'unlearned' model to compare with its target)."""
    from unlearn_audit.models.loading import load_model, load_tokenizer

    def make(folder, scale=0.05, seed=1):
        model = load_model(folder)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                mask = torch.rand(p.shape, generator=gen) < 0.5
                p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean() * scale * mask)
        out = tmp_path_factory.mktemp("unlearned") / "model"
        model.save_pretrained(out)
        load_tokenizer(folder).save_pretrained(out)
        return out

    return make
