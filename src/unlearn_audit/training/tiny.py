"""Training the tiny target and retrained models of the built-in world (models/tiny.py builds them),
through the training core's plain causal-LM loop, in about a minute on a CPU.

`target` is trained on forget + retain texts, `retrained` on retain texts only, with the same recipe,
tokenizer and seed, so the pair is exactly what MUSE calls target and retrain. Both are ordinary
`save_pretrained` Llama folders (safetensors + tokenizer + `training.json`), cached under the user
cache dir by a hash of (corpus content, role, recipe, numeric environment): a second call returns at once.

The recipe's training (docs/tiny-models.md): fp32 AdamW (fused; beta2 0.95, decoupled weight decay 1.0),
a cosine learning rate after a linear warm-up, gradients clipped at norm 1, the model's own causal-LM
loss, on one thread (TRAINING_THREADS); the weights are then stored in the recipe's dtype.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..data.corpus import Corpus
from ..models.loading import DTYPES, load_model
from ..models.tiny import TinyRecipe, build_model, build_tokenizer, tokenizer_texts, training_texts
from ..utils.environment import numerics_key
from ..utils.io import atomic_dir, atomic_write_json, read_json, sha256_json
from ..utils.paths import cache_dir
from ..utils.threads import torch_threads

log = logging.getLogger(__name__)

RECIPE_VERSION = 2  # bump when training code changes results, so caches are not reused wrongly
"""2: texts longer than the context are split into chunks (the training core's data) instead of cut."""

TRAINING_THREADS = 1
"""Tiny models train on this many threads whatever the machine offers: the CPU GEMM that sums a weight
gradient over the tokens orders its sum by the thread count (1 and 2 threads give other weights, measured),
so a fixed count makes the same recipe give the same weights on a 1-core laptop and a 64-core node. One
thread is also what each of the demo's two grid workers has on 2 cores."""


def training_threads(threads: int | None) -> int:
    """The thread count tiny training uses: `threads` if asked for explicitly, else TRAINING_THREADS."""
    return threads or TRAINING_THREADS


def cache_key(corpus: Corpus, role: str, recipe: TinyRecipe, threads: int | None = None) -> str:
    """What determines the trained weights: corpus content, role, recipe, code version, and the numeric
    environment (library versions, oneDNN kernels, the training thread count)."""
    return sha256_json(
        {"corpus": corpus.content_hash, "role": role, "recipe": asdict(recipe), "version": RECIPE_VERSION,
         "numerics": numerics_key(training_threads(threads))}
    )[:20]


def cached_model_dir(corpus: Corpus, role: str, recipe: TinyRecipe, threads: int | None = None) -> Path:
    return cache_dir() / "tiny" / f"{role}-{cache_key(corpus, role, recipe, threads)}"


def is_complete(folder: Path) -> bool:
    return (folder / "training.json").is_file() and any(folder.glob("*.safetensors"))


def train_tiny(
    corpus: Corpus,
    role: str,
    recipe: TinyRecipe | None = None,
    out: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train (or fetch from cache) the tiny `role` model of `corpus`; copy it to `out` if given."""
    recipe = recipe or TinyRecipe()
    recipe.validate()
    texts = training_texts(corpus, role)
    cached = cached_model_dir(corpus, role, recipe, threads)
    if not is_complete(cached):
        with atomic_dir(cached) as tmp:
            _train_into(tmp, corpus, role, recipe, texts, threads, progress)
    else:
        log.info("using cached %s model %s", role, cached)
    if out is None:
        return cached
    out = Path(out)
    with atomic_dir(out) as tmp:
        shutil.copytree(cached, tmp, dirs_exist_ok=True)
    return out


def settings(recipe: TinyRecipe):
    """The recipe as the training core's settings."""
    from .core import TrainSettings

    return TrainSettings(learning_rate=recipe.learning_rate, epochs=recipe.epochs, batch_size=recipe.batch_size,
                         max_length=recipe.max_length, weight_decay=recipe.weight_decay, seed=recipe.seed,
                         fused_adamw=True, schedule="cosine", warmup_ratio=recipe.warmup_ratio, adam_beta2=0.95,
                         model_loss=True, checkpoints=False)


def _train_into(
    folder: Path, corpus: Corpus, role: str, recipe: TinyRecipe, texts: list[str], threads, progress: bool
) -> None:
    """Build tokenizer and model, train them with the training core, store the weights in the recipe's
    dtype with the tokenizer and the provenance (`training.json`) in `folder`."""
    from transformers import set_seed

    from .core import TRAIN_RECORD, mean, train_on_texts

    with torch_threads(training_threads(threads)):
        set_seed(recipe.seed)
        tokenizer = build_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)
        initial, trained = folder / "_initial", folder / "_trained"
        build_model(recipe, len(tokenizer)).save_pretrained(initial, safe_serialization=True)
        tokenizer.save_pretrained(initial)
        started = time.time()
        train_on_texts(initial, texts, settings(recipe), trained, show=progress)
        seconds = time.time() - started
        record = read_json(trained / TRAIN_RECORD)
        model = load_model(trained, "fp32").to(DTYPES[recipe.dtype])
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        shutil.rmtree(initial)
        shutil.rmtree(trained)
        losses = [e["text_loss"] for e in record["epochs"]]
        tokens = record["tokens"]
        atomic_write_json(
            folder / "training.json",
            {
                "role": role,
                "corpus": {"name": corpus.name, "content_hash": corpus.content_hash, "path": str(corpus.root)},
                "recipe": asdict(recipe),
                "texts": len(texts),
                "tokens_per_epoch": tokens,
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": round(seconds, 2),
                "tokens_per_second": round(tokens * recipe.epochs / max(seconds, 1e-9), 1),
                "threads": torch.get_num_threads(),
                "final_train_loss": losses[-1],
                "mean_train_loss": mean(losses),
                "loss_curve": losses,
                "unlearn_audit_version": __version__,
                "torch_version": torch.__version__,
            },
        )
