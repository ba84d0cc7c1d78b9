"""Tiny target/retrained models: trained through the training core, cached, and knowing their facts."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.knowmem import evaluate_knowmem
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.tiny import TRAINING_THREADS, cache_key, cached_model_dir, train_tiny
from unlearn_audit.utils.arithmetic import portable_available


def exact_match(model_dir, corpus, split):
    _, rows, _ = evaluate_knowmem(load_model(model_dir), load_tokenizer(model_dir), corpus.knowmem(split),
                                  corpus.knowmem_icl(split))
    return sum(r["response"].strip() == r["gt"] for r in rows) / len(rows)


def test_micro_target_answers_its_questions(micro_target, micro_world):
    """(Its training time is measured by bench/train_tiny.py, not asserted: a loaded machine is slower.)"""
    info = json.loads((micro_target / "training.json").read_text())
    assert info["seconds"] > 0
    assert info["role"] == "target" and info["recipe"]["dtype"] == "bf16"
    corpus = Corpus(micro_world)
    # chance is at most 1/12 per attribute (the smallest value list): the model must be far above it
    assert exact_match(micro_target, corpus, "forget") >= 0.6
    assert exact_match(micro_target, corpus, "retain") >= 0.6


def test_retrained_never_saw_the_forget_set(micro_retrained, micro_world):
    corpus = Corpus(micro_world)
    assert exact_match(micro_retrained, corpus, "retain") >= 0.6
    assert exact_match(micro_retrained, corpus, "forget") <= 0.3


def test_second_call_is_served_from_cache(micro_world, micro_recipe, micro_target, tmp_path, monkeypatch):
    from unlearn_audit.training import tiny

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(tiny, "_train_into", no_training)
    out = train_tiny(Corpus(micro_world), "target", micro_recipe, out=tmp_path / "copy", progress=False)
    assert (out / "training.json").read_bytes() == (micro_target / "training.json").read_bytes()
    assert cached_model_dir(Corpus(micro_world), "target", micro_recipe) == micro_target


def test_cache_is_keyed_by_the_numeric_environment(micro_world, micro_recipe, monkeypatch):
    """Another thread count, kernel cap or library version trains other weights: never the same folder."""
    from unlearn_audit.utils import environment

    corpus = Corpus(micro_world)
    one, two = (cached_model_dir(corpus, "target", micro_recipe, threads=n) for n in (1, 2))
    assert one != two
    real = environment.numerics_key
    monkeypatch.setattr(environment, "numerics_key", lambda t: {**real(t), "onednn_isa": "AVX2"})
    monkeypatch.setattr("unlearn_audit.training.tiny.numerics_key", environment.numerics_key)
    assert cached_model_dir(corpus, "target", micro_recipe, threads=2) != two


def test_bf16_storage_is_recorded(micro_world, micro_recipe):
    recipe = replace(micro_recipe, dtype="bf16", epochs=1)
    out = train_tiny(Corpus(micro_world), "target", recipe, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert json.loads((out / "training.json").read_text())["recipe"]["dtype"] == "bf16"


def test_the_same_recipe_gives_the_same_weights_on_machines_offering_1_or_2_threads(micro_world, micro_recipe,
                                                                                   tmp_path, monkeypatch):
    """The demo's numbers must not depend on how many cores a machine has: the process offers 1 or 2 threads
    (UNLEARN_AUDIT_THREADS and torch's own setting), training uses its fixed count, the weights are equal.
    (Measured: training on 1 and on 2 threads gives other weights, so this fails without the fixed count.)"""
    import torch
    from safetensors.torch import load_file

    recipe = replace(micro_recipe, epochs=3)
    weights, keys = [], []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            monkeypatch.setenv("UNLEARN_AUDIT_THREADS", str(threads))
            monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path / f"cache{threads}"))
            torch.set_num_threads(threads)
            keys.append(cache_key(Corpus(micro_world), "target", recipe))
            path = train_tiny(Corpus(micro_world), "target", recipe, progress=False)
            assert json.loads((path / "training.json").read_text())["threads"] == TRAINING_THREADS
            weights.append(load_file(str(path / "model.safetensors")))
    finally:
        torch.set_num_threads(previous)
    assert keys[0] == keys[1]
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


# The micro world's target, 4 epochs with a quarter of them warming up, trained in a fresh process under the
# portable arithmetic: the recipe's optimizer, cosine schedule, clipping and the model's own loss all act.
PINNED = """
import hashlib, sys
from pathlib import Path
from unlearn_audit.utils import arithmetic
assert arithmetic.use_portable_arithmetic()
import torch
from safetensors.torch import load_file
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.models.tiny import TinyRecipe
from unlearn_audit.training.tiny import train_tiny
world = write_world(WorldConfig(people=20, seed=3), Path(sys.argv[1]) / "world")
recipe = TinyRecipe(hidden_size=128, num_layers=2, intermediate_size=256, epochs=4, learning_rate=5e-3,
                    batch_size=16, warmup_ratio=0.25)
w = load_file(str(train_tiny(Corpus(world), "target", recipe, progress=False) / "model.safetensors"))
print(hashlib.sha256(b"".join(k.encode() + w[k].view(torch.int16).numpy().tobytes() for k in sorted(w))).hexdigest())
"""

# measured 2026-12-07 (AMD EPYC) with the recipe's own HF Trainer loop, before tiny training moved onto the
# training core: the core reproduces it to the bit, and with it the quick demo's models and numbers
PINNED_SHA256 = "029b9cac4a946b4b002c83fe5215668612788a11c7b74c1d8c69da078b8b7ceb"


@pytest.mark.skipif(not portable_available(), reason="needs an x86-64 CPU with AVX2 and torch with MKL")
def test_the_tiny_recipe_trains_the_weights_it_always_trained(tmp_path):
    done = subprocess.run([sys.executable, "-c", PINNED, str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "UNLEARN_AUDIT_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == PINNED_SHA256
