"""The options of an unlearning run (`UnlearnConfig`: CLI flags and YAML keys), apart from the trainer so
that reading them (the command line's parser, a grid's validation) does not import the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import UserError
from ..training import bf16, lora
from ..training.bf16 import PRECISIONS
from ..training.schedule import ScheduleRule
from . import sure
from .margin import MarginOptions
from .methods import WRAPPERS, Method, registered_options, resolve_method
from .qat import ThroughOptions, parse_through
from .sure import SaliencyOptions

if TYPE_CHECKING:
    from ..training.core import TrainSettings

DEFAULT_LR = 1e-5
DEFAULT_SURE_LR = WRAPPERS["sure"].learning_rate


@dataclass
class RunOptions:
    """The options every unlearning run has (the methods' own options are their dataclasses, below)."""

    method: str = field(default="npo_klr", metadata={
        "help": "ga, npo, simnpo, rmu, each alone or with _gdr/_klr (e.g. npo_klr); sure or qat (with --base)"})
    base: str = field(default="npo_klr", metadata={"help": "with --method sure or qat: the method it wraps"})
    learning_rate: float | None = field(
        default=None, metadata={"help": f"AdamW learning rate (default {DEFAULT_LR}; SURE {DEFAULT_SURE_LR})"}
    )
    epochs: int = field(default=5, metadata={"help": "passes over the forget set"})
    max_steps: int | None = field(default=None, metadata={
        "help": "stop after this many optimizer steps (overrides --epochs; the last, partial epoch counts)"})
    batch_size: int = field(default=4, metadata={"help": "forget (and retain) texts per device and step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    dtype: str = field(default="bf16", metadata={"help": "training precision", "choices": list(PRECISIONS)})
    arithmetic: str = field(default="auto", metadata={
        "help": "bf16 only: native (bf16 matrix products) or emulated (bf16 weights, gradients and AdamW state, "
                "fp32 forward/backward; same rounding of the update, fast on CPUs); auto: native on CUDA",
        "choices": list(bf16.ARITHMETICS)})
    seed: int = field(default=0, metadata={"help": "seed of data order and pairing"})
    max_length: int = field(default=512, metadata={"help": "tokens per training chunk (texts are split)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (SURE needs 0)"})
    utility_floor: float | None = field(
        default=None, metadata={"help": "stop at the first epoch whose KnowMem_r (x100) falls below this"}
    )
    stop_at_depth: float | None = field(default=None, metadata={
        "help": "schedule rule: stop at the first epoch whose forget knowledge retained on the corpus' validation "
                "split (mean of VerbMem_f and KnowMem_f over the model's own at the start) is at most this share "
                "(e.g. 0.4); --epochs is then the budget (docs/methods.md)"})
    min_utility_kept: float | None = field(default=None, metadata={
        "help": "schedule rule: stop when KnowMem_r on the validation split falls below this share of the "
                "model's own at the start (e.g. 0.8), keeping the last epoch above it"})
    max_abs_loss: float = field(default=1e4, metadata={"help": "a loss beyond this magnitude counts as diverged"})
    joint_pass: bool = field(default=False, metadata={
        "help": "regularized methods: the forget and the retain batch in one forward pass (and one per reference "
                "model) instead of two; the same loss to float rounding, fewer passes (bench/unlearn_speed.py)"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep per-epoch checkpoints after finishing"})
    fused_adamw: bool = field(default=False, metadata={
        "help": "AdamW as one fused kernel (update computed in fp32, weights and state still stored in the "
                "training precision; several times faster on CPUs) instead of torch's per-tensor loop, which "
                "rounds each intermediate to bf16 in pure bf16; the two forget differently at small rates"})


# The add-ons any method takes (SURE masking, training through a quantizer, the margin term) and every
# registered method's options (declared beside its loss and registered with it: a new method's file adds
# its flags, nothing here changes). Dataclass fields come from the last base first: the run's options lead
# the help, then each method's in the registry's order, then the add-ons.
ADD_ONS = (lora.LeanOptions, SaliencyOptions, ThroughOptions, MarginOptions)


@dataclass
class UnlearnConfig(*ADD_ONS, *reversed(registered_options()), RunOptions):
    """How to unlearn (CLI flags and YAML keys have these names)."""

    def validate(self) -> None:
        if self.dtype not in PRECISIONS:
            raise UserError(f"--dtype must be one of {', '.join(PRECISIONS)}")
        if self.arithmetic not in bf16.ARITHMETICS:
            raise UserError(f"--arithmetic must be one of {', '.join(bf16.ARITHMETICS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--epochs, --batch-size and --grad-accum must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be at least 1")
        self.check_through()
        self.check_margin()
        self.through_schemes()
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError("--learning-rate must be positive")
        for name in ("stop_at_depth", "min_utility_kept"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise UserError(f"--{name.replace('_', '-')} must lie in (0, 1)")
        self.check_lean(bf16.resolve_arithmetic(self.arithmetic, self.dtype))
        if self.lora and (reason := lora.lora_settings_error(self)):
            raise UserError(f"--lora: {reason}")
        self.resolve()

    def through_schemes(self) -> list:
        """The schemes the loss is also evaluated through (quantization-aware unlearning), parsed."""
        wrapper = WRAPPERS.get(self.method)
        text = self.through or (wrapper.through if wrapper else None)
        return parse_through(text) if text else []

    def resolve(self) -> tuple[Method, str | None, float]:
        """(method, saliency level or None, learning rate) with a wrapper's defaults (SURE, QAT) applied."""
        wrapper = WRAPPERS.get(self.method)
        method = resolve_method(self.base if wrapper else self.method)
        level = self.saliency or (wrapper.saliency if wrapper else None)
        lr = self.learning_rate or (wrapper.learning_rate if wrapper else None) or DEFAULT_LR
        if level is not None and level not in sure.LEVELS:
            raise UserError(f"--saliency must be one of {', '.join(sure.LEVELS)}")
        if level is not None and self.weight_decay:
            raise UserError("SURE masking needs --weight-decay 0 (decay would move the frozen rows)")
        return method, level, lr

    def schedule_rule(self) -> ScheduleRule:
        """The schedule rule of this run (empty, i.e. false, when neither bound is set)."""
        return ScheduleRule(self.stop_at_depth, self.min_utility_kept)

    def settings(self, lr: float) -> TrainSettings:
        """The training core's settings of this run (at the resolved learning rate)."""
        from ..training.core import TrainSettings

        return TrainSettings(learning_rate=lr, epochs=self.epochs, max_steps=self.max_steps,
                             batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length,
                             dtype=self.dtype, arithmetic=self.arithmetic, weight_decay=self.weight_decay,
                             seed=self.seed, fused_adamw=self.fused_adamw, max_abs_loss=self.max_abs_loss,
                             keep_checkpoints=self.keep_checkpoints, lora=self.lora,
                             gradient_checkpointing=self.gradient_checkpointing, optim=self.optim)
