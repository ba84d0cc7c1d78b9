"""The tiny Llama of the built-in world: its recipe, tokenizer, architecture and training texts
(training/tiny.py trains and caches the target and retrained models from them).

Recipe notes (measured on 2 CPU cores, see docs/tiny-models.md): knowledge is learned far faster when
the QA pairs of several people are mixed in one training text (as KnowMem's few-shot prompt mixes
them) than when a person's pairs stand together, and strong decoupled weight decay (1.0) both speeds
up fact learning and leaves the many near-zero weights a real LLM has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..data.corpus import Corpus
from ..errors import UserError

ROLES = ("target", "retrained")
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


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
