"""One unlearning trainer for every method, on the training core (`training/`): the method's forget
loss plus alpha times its regularizer on paired forget/retain batches, optional SURE masking of the
gradients, quantization-aware losses and the margin term. Precision modes, checkpoints, resume, the
per-epoch record and MUSE's stopping rule are the core's (training/core.py); the unlearned folder gets
`unlearn.json` and `config.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import to_yaml
from ..data.corpus import Corpus
from ..errors import UserError
from ..models.loading import LoadOptions, load_model, load_tokenizer, model_fingerprint
from ..training import bf16, lora
from ..training.core import (
    PRECISIONS,
    CoreTrainer,
    EpochRecorder,
    PairedChunks,
    PartsCollator,
    TrainSettings,
    chunk_ids,
    chunk_length,
    emulated_optimizer,
    finish_work,
    load_for_training,
    memory_record,
    precision_record,
    refuse_unsupported,
    run_loop,
    save_trained,
    start_work_dir,
    training_arguments,
    versions,
)
from ..training.schedule import ScheduleRule
from ..utils.environment import environment
from ..utils.progress import quiet_trainer_output
from . import sure
from .margin import MarginOptions, batch_margin_loss, derived_margin
from .methods import WRAPPERS, Batch, Method, is_wrapper, registered_options, resolve_method
from .qat import DEFAULT_THROUGH, FakeQuantized, ThroughOptions, parse_through
from .sure import SaliencyOptions

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
        from .qat import parse_through

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
        return TrainSettings(learning_rate=lr, epochs=self.epochs, max_steps=self.max_steps,
                             batch_size=self.batch_size, grad_accum=self.grad_accum, max_length=self.max_length,
                             dtype=self.dtype, arithmetic=self.arithmetic, weight_decay=self.weight_decay,
                             seed=self.seed, fused_adamw=self.fused_adamw, max_abs_loss=self.max_abs_loss,
                             keep_checkpoints=self.keep_checkpoints, lora=self.lora,
                             gradient_checkpointing=self.gradient_checkpointing, optim=self.optim)


# ------------------------------------------------------------------------------------------- trainer
class UnlearnTrainer(CoreTrainer):
    """The core trainer whose loss is forget loss + alpha * regularizer; optionally masks gradients (SURE)."""

    def __init__(self, *args, method: Method, cfg: UnlearnConfig, ref_model=None, masks=None, **kwargs):
        super().__init__(*args, max_abs_loss=cfg.max_abs_loss, **kwargs)
        self.method = method
        self.ucfg = cfg
        self.through = cfg.through_schemes()
        self.margin = cfg.margin
        self.masks = masks
        self.ref_model = self._prepare_ref(ref_model) if ref_model is not None else None

    def _prepare_ref(self, ref):
        """Put the frozen reference where the model is (DeepSpeed/FSDP wrap it for inference); a LoRA
        run's reference is its own base with the adapter off."""
        if isinstance(ref, lora.AdapterOff):
            return ref
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return self.accelerator.prepare_model(ref, evaluation_mode=True)
        return ref.to(self.args.device)

    def method_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Forget loss + alpha * regularizer, and the parts to log."""
        forget = self.method.forget.fn(batch, self.ucfg)
        loss = forget
        parts = {"forget_loss": forget.detach().float().item()}
        if self.method.regularizer is not None:
            reg = self.method.regularizer.fn(batch, self.ucfg)
            loss = loss + self.ucfg.alpha * reg
            parts["retain_loss"] = reg.detach().float().item()
        return loss, parts

    def loss_and_parts(self, model, inputs):
        batch = Batch(model, self.ref_model, inputs, joint=self.ucfg.joint_pass)
        loss, parts = self.method_loss(batch)
        if self.through:  # quantization-aware: the same loss on each fake-quantized model (qat.py)
            quantized = torch.stack([self.method_loss(batch.on(FakeQuantized(model, s)))[0] for s in self.through])
            parts["quantized_loss"] = quantized.mean().detach().float().item()
            loss = self.ucfg.through_mix * loss + (1 - self.ucfg.through_mix) * quantized.mean()
        if self.ucfg.margin_weight:
            term = batch_margin_loss(batch, self.margin)
            parts["margin_loss"] = term.detach().float().item()
            loss = loss + self.ucfg.margin_weight * term
        return loss, parts

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.masks is not None:
            sure.mask_gradients(model, self.masks)
        return loss


# ------------------------------------------------------------------------------------------- run
def unlearn(
    model_path: str | Path,
    corpus: Corpus,
    cfg: UnlearnConfig,
    out: str | Path,
    evaluator: Callable | None = None,
    utility_floor: float | None = None,
    opts: LoadOptions | None = None,
    show: bool = True,
) -> Path:
    """Unlearn the forget set of `corpus` from the model at `model_path`; write an HF folder to `out`."""
    cfg.validate()
    if cfg.schedule_rule():
        corpus.require_validation()
        if evaluator is None:
            raise UserError("the schedule rule (--stop-at-depth / --min-utility-kept) needs a validation evaluator")
    method, level, lr = cfg.resolve()
    settings = cfg.settings(lr)
    floor = cfg.utility_floor if cfg.utility_floor is not None else utility_floor
    out = Path(out)
    work = out.parent / f".{out.name}.work"
    identity = {"model": model_fingerprint(model_path), "corpus": corpus.content_hash, "config": asdict(cfg)}
    started = time.time()

    model, arithmetic = load_for_training(model_path, settings, opts)
    tokenizer = load_tokenizer(model_path, opts)
    ref = reference_model(model, model_path, cfg, method, opts)
    if method.forget.prepare is not None:
        method.forget.prepare(model, cfg)
    if arithmetic == "emulated":  # the weights native bf16 would load
        for m in (model, ref):
            if isinstance(m, torch.nn.Module):
                bf16.round_to_bf16_(m)
    max_len = chunk_length(model, settings)
    forget = chunk_ids(tokenizer, corpus.raw("forget"), max_len)
    retain = chunk_ids(tokenizer, corpus.raw("retain"), max_len) if method.needs_retain else None
    dataset = PairedChunks(forget, retain, cfg.seed)
    collator = PartsCollator(tokenizer.pad_token_id)
    start_work_dir(work, identity)  # only now: bad inputs above leave no scratch folder behind

    args = training_arguments(settings, work, show)
    masks = saliency_masks(model, ref, method, cfg, level, dataset, collator, work) if level else None
    recorder = EpochRecorder(work / "epochs.json", evaluator, floor, show, cfg.schedule_rule())
    trainer = UnlearnTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                             method=method, cfg=cfg, ref_model=ref, masks=masks, callbacks=[recorder],
                             optimizer_cls_and_kwargs=emulated_optimizer(args, settings) if arithmetic == "emulated" else None)
    quiet_trainer_output(trainer, show)
    if masks is not None and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise UserError("SURE masking supports single-device and DDP training, not DeepSpeed/FSDP sharding")
    refuse_unsupported(trainer, arithmetic)
    if trainer.through and trainer.args.world_size > 1:
        raise UserError("quantization-aware unlearning (--through / qat) runs on one device for now")
    if cfg.margin_weight and cfg.margin is None:
        scheme = (trainer.through or parse_through(DEFAULT_THROUGH))[0]
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collator)
        trainer.margin = derived_margin(trainer.ref_model, scheme, loader, trainer.args.device)

    outcome = run_loop(trainer, recorder, model, settings, work, floor, arithmetic)
    record = {
        "method": f"{cfg.method}({cfg.base})" if is_wrapper(cfg.method) else cfg.method,
        "config": asdict(cfg),
        "resolved": {"method": method.name, "learning_rate": lr, "saliency": level, "utility_floor": floor,
                     "needs_reference": method.needs_ref, "through": [s.name for s in trainer.through],
                     "margin": trainer.margin if cfg.margin_weight else None},
        "precision": precision_record(model, settings, arithmetic),
        "source_model": str(model_path),
        "source_hash": identity["model"],
        "corpus": {"name": corpus.name, "content_hash": corpus.content_hash},
        "forget_chunks": len(forget),
        "epochs": outcome.epochs,
        "schedule_rule": {**asdict(cfg.schedule_rule()), "start": recorder.state.get("start")} if cfg.schedule_rule() else None,
        "chosen_epoch": outcome.chosen,
        "chosen_reason": outcome.reason,
        "diverged": outcome.diverged,
        "saliency_kept_share": sure.kept_share(masks, model) if masks is not None else None,
        "memory": memory_record(trainer, model, settings),
        "seconds": round(time.time() - started, 2),
        "versions": versions(),
        "environment": environment(),
    }
    save_trained(trainer, tokenizer, out, "unlearn.json", record, to_yaml(cfg), base=model_path)
    finish_work(trainer, work, settings)
    return out


def reference_model(model, model_path, cfg: UnlearnConfig, method: Method, opts):
    """The frozen reference NPO, the KL regularizer and the margin compare against: a second copy of the
    target, or under LoRA the same model with its adapter off."""
    if not (method.needs_ref or cfg.margin_weight):
        return None
    if lora.is_peft(model):
        return lora.AdapterOff(model)
    return load_model(model_path, next(model.parameters()).dtype, opts)


def saliency_masks(model, ref, method: Method, cfg: UnlearnConfig, level: str, dataset, collator, work: Path):
    """SURE masks: loaded from the work folder on resume, else computed on the forget set and saved."""
    path = work / "saliency.safetensors"
    if path.is_file():
        return sure.load_masks(path)
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collator)

    def forget_loss(inputs):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return method.forget.fn(Batch(model, ref, inputs), cfg)

    masks = sure.compute_masks(model, loader, forget_loss, level, cfg.saliency_percentile)
    sure.save_masks(masks, path)
    return masks
