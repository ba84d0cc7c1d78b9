"""The tiny target and retrained models of the embedded default, trained on CPU in about a minute.

`target` is trained on forget + retain texts, `retrained` on retain texts only, with the same recipe,
tokenizer and seed, so the pair is exactly what MUSE calls target and retrain. Both are ordinary
`save_pretrained` Llama folders (safetensors + tokenizer + `training.json`), cached under the user
cache dir by a hash of (corpus content, role, recipe): a second call returns at once.

Recipe notes (measured on 2 CPU cores, see docs/tiny-models.md): knowledge is learned far faster when
the QA pairs of several people are mixed in one training text (as KnowMem's few-shot prompt mixes
them) than when a person's pairs stand together, and strong decoupled weight decay (1.0) both speeds
up fact learning and leaves the many near-zero weights a real LLM has.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..data.corpus import Corpus
from ..errors import UserError
from ..utils.environment import numerics_key
from ..utils.io import atomic_dir, atomic_write_json, sha256_json
from ..utils.paths import cache_dir
from ..utils.threads import torch_threads
from .generation import right_pad
from .loading import DTYPES

log = logging.getLogger(__name__)

ROLES = ("target", "retrained")
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
RECIPE_VERSION = 1  # bump when training code changes results, so caches are not reused wrongly


@dataclass
class TinyRecipe:
    """Architecture and training recipe of the tiny Llama (every field enters the cache key)."""

    hidden_size: int = field(default=128, metadata={"help": "model width (multiple of 128)"})
    num_layers: int = field(default=2, metadata={"help": "transformer blocks"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width (multiple of 128)"})
    head_dim: int = field(default=64, metadata={"help": "attention head size"})
    vocab_size: int = field(default=2048, metadata={"help": "BPE vocabulary budget (rounded up to 128)"})
    max_length: int = field(default=512, metadata={"help": "context length in tokens"})
    epochs: int = field(default=50, metadata={"help": "passes over the training texts"})
    learning_rate: float = field(default=4e-3, metadata={"help": "peak AdamW learning rate (cosine decay)"})
    batch_size: int = field(default=16, metadata={"help": "texts per step"})
    weight_decay: float = field(default=1.0, metadata={"help": "decoupled AdamW weight decay"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    init_std: float = field(default=0.02, metadata={
        "help": "standard deviation of the initial weights (Llama's initializer_range); sets the weight scale "
                "that the bf16 step cap and the quantization bins are measured against"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and data order"})
    dtype: str = field(default="bf16", metadata={
        "help": "dtype the weights are stored in (trained in fp32; bf16 like released checkpoints)",
        "choices": ["fp32", "bf16"]})

    def validate(self) -> None:
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 128:
                raise UserError(f"{name} must be a multiple of 128 so quantization groups of 32/64/128 divide it")
        if self.hidden_size % self.head_dim:
            raise UserError("hidden_size must be a multiple of head_dim")
        if self.init_std <= 0:
            raise UserError("init_std must be positive")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise UserError("epochs, batch size and learning rate must be positive")
        if self.dtype not in ("fp32", "bf16"):
            raise UserError(f"--dtype must be fp32 or bf16, not {self.dtype}")


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on the corpus, with a BOS post-processor like Llama's.

    Spaces stay attached to the preceding word ("Answer: " is one piece), so a prompt that ends in a
    space, as MUSE's KnowMem prompt does, tokenizes exactly as it does inside training text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
            pre_tokenizers.Split(" ", "merged_with_previous"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=None
    )


def build_model(recipe: TinyRecipe, vocab: int):
    """A freshly initialised small Llama (untied embeddings, sizes from the recipe)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = recipe.hidden_size // recipe.head_dim
    config = LlamaConfig(
        vocab_size=int(math.ceil(vocab / 128) * 128),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=recipe.max_length,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=recipe.init_std,
    )
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(config)


def training_texts(corpus: Corpus, role: str) -> list[str]:
    """Target: forget + retain; retrained: retain only (MUSE's definitions)."""
    if role not in ROLES:
        raise UserError(f"--role must be one of {', '.join(ROLES)}, not '{role}'")
    texts = corpus.raw("retain")
    return corpus.raw("forget") + texts if role == "target" else list(texts)


def tokenizer_texts(corpus: Corpus) -> list[str]:
    """The tokenizer sees every raw split, like a pretraining tokenizer, so both roles share it."""
    texts = corpus.raw("forget") + corpus.raw("retain")
    try:
        texts += corpus.raw("holdout")
    except UserError:
        pass
    return texts


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


def _train_into(
    folder: Path, corpus: Corpus, role: str, recipe: TinyRecipe, texts: list[str], threads, progress: bool
) -> None:
    """Build tokenizer and model, train with HF Trainer, save weights + provenance into `folder`."""
    from transformers import Trainer, TrainingArguments, set_seed

    from ..utils.progress import quiet_trainer_output

    with torch_threads(training_threads(threads)):
        set_seed(recipe.seed)
        tokenizer = build_tokenizer(tokenizer_texts(corpus), recipe.vocab_size)
        model = build_model(recipe, len(tokenizer))
        dataset = TokenizedTexts(texts, tokenizer, recipe.max_length)
        args = TrainingArguments(
            output_dir=str(folder / "_trainer"),
            per_device_train_batch_size=recipe.batch_size,
            num_train_epochs=recipe.epochs,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            adam_beta2=0.95,
            warmup_steps=int(recipe.warmup_ratio * math.ceil(len(dataset) / recipe.batch_size) * recipe.epochs),
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            logging_steps=max(1, len(dataset) // recipe.batch_size),
            save_strategy="no",
            report_to=[],
            seed=recipe.seed,
            data_seed=recipe.seed,
            disable_tqdm=not progress,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=PadCollator(0))
        quiet_trainer_output(trainer, progress)
        started = time.time()
        result = trainer.train()
        seconds = time.time() - started
        shutil.rmtree(folder / "_trainer", ignore_errors=True)
        model = model.to(DTYPES[recipe.dtype])
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        atomic_write_json(
            folder / "training.json",
            {
                "role": role,
                "corpus": {"name": corpus.name, "content_hash": corpus.content_hash, "path": str(corpus.root)},
                "recipe": asdict(recipe),
                "texts": len(texts),
                "tokens_per_epoch": dataset.tokens,
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds": round(seconds, 2),
                "tokens_per_second": round(dataset.tokens * recipe.epochs / max(seconds, 1e-9), 1),
                "threads": torch.get_num_threads(),
                "final_train_loss": losses[-1] if losses else None,
                "mean_train_loss": result.training_loss,
                "loss_curve": losses,
                "unlearn_audit_version": __version__,
                "torch_version": torch.__version__,
            },
        )


class TokenizedTexts(torch.utils.data.Dataset):
    """Texts tokenized once: BOS + text + EOS, cut to the context length."""

    def __init__(self, texts: list[str], tokenizer, max_length: int):
        eos = tokenizer.eos_token_id
        self.items = [(tokenizer(t).input_ids + [eos])[:max_length] for t in texts]
        self.tokens = sum(map(len, self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.items[i]}


class PadCollator:
    """Right-pad a batch; padded positions get label -100 so they carry no loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = right_pad([f["input_ids"] for f in features], self.pad_id, "cpu")
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
