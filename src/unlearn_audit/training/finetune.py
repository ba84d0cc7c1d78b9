"""`finetune`: make the target (forget + retain texts) and the retrained model (retain texts only) from
any Hugging Face causal LM on any MUSE-layout corpus, as MUSE and TOFU do, so a real model that knows
nothing of the corpus becomes something to unlearn and its control.

Training is the training core's plain NLL training (`training.train_on_texts`): HF Trainer, the
precision modes (`--dtype bf16|fp32|mixed`), per-epoch checkpoints and resume, `accelerate launch`.
`train-tiny` stays the tiny sibling that also builds the model from scratch. The output folder gets a
`finetune.json` saying what it was trained on (and the core's `train.json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.corpus import Corpus
from ..errors import UserError
from ..models.loading import LoadOptions, load_tokenizer, model_fingerprint
from ..utils.io import atomic_write_json
from . import bf16
from .bf16 import PRECISIONS
from .lora import LeanOptions

ROLES = ("target", "retrained")


@dataclass
class FinetuneConfig(LeanOptions):
    """How to fine-tune (CLI flags and YAML keys have these names)."""

    role: str = field(default="target", metadata={
        "help": "target: forget + retain texts; retrained: retain texts only", "choices": list(ROLES)})
    epochs: int = field(default=3, metadata={"help": "passes over the texts"})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (constant)"})
    batch_size: int = field(default=4, metadata={"help": "texts per device and step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    max_length: int = field(default=512, metadata={"help": "tokens per training chunk (texts are split)"})
    dtype: str = field(default="fp32", metadata={
        "help": "training precision (on a GPU, bf16 or mixed)", "choices": list(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of the data order"})
    fused_adamw: bool = field(default=False, metadata={"help": "AdamW as one fused kernel (see `unlearn --help`)"})
    loss_chunk: int = field(default=0, metadata={
        "help": "positions per chunk of the output head (e.g. 256): the loss never holds the batch's full "
                "logits, for large vocabularies such as Gemma's 262k (docs/findings.md); 0: full logits"})

    def validate(self) -> None:
        if self.role not in ROLES:
            raise UserError(f"--role must be one of {', '.join(ROLES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise UserError("--epochs and --batch-size must be at least 1 and --learning-rate positive")
        if self.loss_chunk < 0:
            raise UserError(f"--loss-chunk must be 0 (full logits) or a positive number of positions, not {self.loss_chunk}")
        self.check_lean(bf16.resolve_arithmetic("auto", self.dtype))


def training_texts(corpus: Corpus, role: str) -> list[str]:
    return [*corpus.raw("forget"), *corpus.raw("retain")] if role == "target" else corpus.raw("retain")


def finetune(model: str | Path, corpus: Corpus, cfg: FinetuneConfig, out: str | Path,
             opts: LoadOptions | None = None, show: bool = True) -> Path:
    """Fine-tune `model` into the target or retrained model of `corpus`; writes an HF folder to `out`."""
    from .core import TrainSettings, train_on_texts  # the training stack, once there is work

    cfg.validate()
    out = Path(out)
    load_tokenizer(model, opts)  # a bad model folder is refused before any scratch data is written
    texts = training_texts(corpus, cfg.role)
    settings = TrainSettings(learning_rate=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size,
                             grad_accum=cfg.grad_accum, max_length=cfg.max_length, dtype=cfg.dtype, seed=cfg.seed,
                             fused_adamw=cfg.fused_adamw, lora=cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing,
                             optim=cfg.optim, loss_chunk=cfg.loss_chunk)
    train_on_texts(model, texts, settings, out, opts=opts, show=show, about={"role": cfg.role})
    atomic_write_json(out / "finetune.json", {"role": cfg.role, "base_model": str(model),
                                              "base_hash": model_fingerprint(model), "corpus": corpus.name,
                                              "corpus_hash": corpus.content_hash, "texts": len(texts),
                                              "config": asdict(cfg)})
    return out
