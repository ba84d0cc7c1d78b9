"""One unlearning trainer for every method, built on HF `Trainer` (so `accelerate launch` scales it).

Precision modes (recorded in unlearn.json):
  bf16   pure bf16: weights, gradients and AdamW state in bf16, no fp32 master copy (the paper's code).
         A step of size ~lr only survives rounding for |w| below ~2^8 * lr, so small-LR updates land in
         near-zero weights.
  fp32   everything in float32.
  mixed  fp32 master weights with bf16 autocast for the forward/backward pass.

Per epoch: an HF checkpoint (resume after a kill), the mean forget/retain losses and, when an evaluator
is given, KnowMem on retain for MUSE's stopping rule: keep the first epoch whose utility falls below
the floor (the retrained model's KnowMem_r), else the last. A non-finite or exploding loss stops the run
and the last good epoch is kept.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .. import __version__
from ..config import to_yaml
from ..data.corpus import Corpus
from ..errors import UserError
from ..models.generation import encode_documents, right_pad
from ..models.loading import LoadOptions, describe_dtypes, load_model, load_tokenizer, model_fingerprint
from ..utils.io import atomic_write_json, atomic_write_text, read_json, replace_dir
from ..utils.progress import quiet_trainer_output
from . import bf16, sure
from .margin import batch_margin_loss, derived_margin
from .methods import WRAPPERS, Batch, Method, is_wrapper, resolve_method
from .qat import DEFAULT_THROUGH, FakeQuantized, parse_through

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp32", "mixed")
DEFAULT_LR = 1e-5
DEFAULT_SURE_LR = WRAPPERS["sure"].learning_rate


class Diverged(RuntimeError):
    """Raised inside the training loop when the loss is non-finite or explodes."""


@dataclass
class UnlearnConfig:
    """How to unlearn (CLI flags and YAML keys have these names)."""

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
    alpha: float = field(default=1.0, metadata={"help": "weight of the utility regularizer (GDR/KLR)"})
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature"})
    dtype: str = field(default="bf16", metadata={"help": "training precision", "choices": list(PRECISIONS)})
    arithmetic: str = field(default="auto", metadata={
        "help": "bf16 only: native (bf16 matrix products) or emulated (bf16 weights, gradients and AdamW state, "
                "fp32 forward/backward; same rounding of the update, fast on CPUs); auto: native on CUDA",
        "choices": list(bf16.ARITHMETICS)})
    seed: int = field(default=0, metadata={"help": "seed of data order and pairing"})
    max_length: int = field(default=512, metadata={"help": "tokens per training chunk (texts are split)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (SURE needs 0)"})
    saliency: str | None = field(default=None, metadata={"help": "row or module: SURE-style masking on any method"})
    saliency_percentile: float = field(default=90.0, metadata={"help": "keep rows at or above this percentile"})
    through: str | None = field(default=None, metadata={
        "help": "quantization-aware unlearning: also evaluate the loss on the model fake-quantized with these "
                "schemes (comma-separated rtn-*/bnb-fp4/bnb-nf4; straight-through gradients); --method qat "
                "defaults it to rtn-int4-g128"})
    through_mix: float = field(default=0.5, metadata={
        "help": "weight of the full-precision loss next to the fake-quantized ones (1 = full precision only)"})
    margin_weight: float = field(default=0.0, metadata={
        "help": "weight of the margin term keeping forget-token log-probs a margin below the target's (0 = off)"})
    margin: float | None = field(default=None, metadata={
        "help": "that margin in nats (default: twice the log-prob shift the quantizer causes on the target)"})
    simnpo_beta: float = field(default=2.5, metadata={"help": "SimNPO inverse temperature"})
    simnpo_gamma: float = field(default=0.0, metadata={"help": "SimNPO reward margin"})
    rmu_layer: int | None = field(default=None, metadata={"help": "RMU: decoder block steered (default: middle)"})
    rmu_steering: float = field(default=20.0, metadata={"help": "RMU: length of the random target direction"})
    rmu_alpha: float = field(default=1000.0, metadata={"help": "RMU: weight of the retain activation term"})
    rmu_params: str | None = field(default=None, metadata={
        "help": "RMU: regex of the trained parameters (default: MLP down_proj of blocks layer-2..layer)"})
    utility_floor: float | None = field(
        default=None, metadata={"help": "stop at the first epoch whose KnowMem_r (x100) falls below this"}
    )
    max_abs_loss: float = field(default=1e4, metadata={"help": "a loss beyond this magnitude counts as diverged"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep per-epoch checkpoints after finishing"})
    fused_adamw: bool = field(default=False, metadata={
        "help": "AdamW as one fused kernel (update computed in fp32, weights and state still stored in the "
                "training precision; several times faster on CPUs) instead of torch's per-tensor loop, which "
                "rounds each intermediate to bf16 in pure bf16; the two forget differently at small rates"})

    def validate(self) -> None:
        if self.dtype not in PRECISIONS:
            raise UserError(f"--dtype must be one of {', '.join(PRECISIONS)}")
        if self.arithmetic not in bf16.ARITHMETICS:
            raise UserError(f"--arithmetic must be one of {', '.join(bf16.ARITHMETICS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--epochs, --batch-size and --grad-accum must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be at least 1")
        if not 0 <= self.through_mix <= 1:
            raise UserError("--through-mix must lie between 0 and 1")
        if self.margin_weight < 0 or (self.margin is not None and self.margin <= 0):
            raise UserError("--margin-weight must be >= 0 and --margin positive")
        self.through_schemes()
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError("--learning-rate must be positive")
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


# ------------------------------------------------------------------------------------------- data
def chunk_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """BOS (or the document prefix) + text + EOS, split into chunks of at most `max_length` tokens (no
    text is dropped); the same start as evaluation (`encode_documents`)."""
    eos = tokenizer.eos_token_id
    chunks = []
    for ids in encode_documents(tokenizer, texts):
        ids = ids + ([eos] if eos is not None else [])
        chunks.extend(ids[i : i + max_length] for i in range(0, len(ids), max_length) if len(ids[i : i + max_length]) > 1)
    return chunks


class ForgetRetainDataset(torch.utils.data.Dataset):
    """Item i = forget chunk i paired with a fixed, seeded-random retain chunk."""

    def __init__(self, forget: list[list[int]], retain: list[list[int]] | None, seed: int):
        if not forget:
            raise UserError("the forget set is empty after tokenization")
        self.forget = forget
        self.retain = retain
        g = torch.Generator().manual_seed(seed)
        self.pair = torch.randint(len(retain), (len(forget),), generator=g).tolist() if retain else None

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.forget[i]}
        if self.retain:
            item["retain"] = self.retain[self.pair[i]]
        return item


class PairCollator:
    """Pad forget and retain parts separately; padding gets label -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for split in ("forget", "retain"):
            if split not in items[0]:
                continue
            ids, mask = right_pad([it[split] for it in items], self.pad_id, "cpu")
            batch[f"{split}_input_ids"] = ids
            batch[f"{split}_attention_mask"] = mask
            batch[f"{split}_labels"] = ids.masked_fill(mask == 0, -100)
        return batch


# ------------------------------------------------------------------------------------------- trainer
class UnlearnTrainer(Trainer):
    """HF Trainer whose loss is forget loss + alpha * regularizer; optionally masks gradients (SURE)."""

    def __init__(self, *args, method: Method, cfg: UnlearnConfig, ref_model=None, masks=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        self.ucfg = cfg
        self.through = cfg.through_schemes()
        self.margin = cfg.margin
        self.masks = masks
        self.ref_model = self._prepare_ref(ref_model) if ref_model is not None else None
        self._sums: dict[str, float] = {}
        self._count = 0

    def _prepare_ref(self, ref):
        """Put the frozen reference where the model is (DeepSpeed/FSDP wrap it for inference)."""
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = Batch(model, self.ref_model, inputs)
        loss, parts = self.method_loss(batch)
        if self.through:  # quantization-aware: the same loss on each fake-quantized model (qat.py)
            quantized = torch.stack([self.method_loss(batch.on(FakeQuantized(model, s)))[0] for s in self.through])
            parts["quantized_loss"] = quantized.mean().detach().float().item()
            loss = self.ucfg.through_mix * loss + (1 - self.ucfg.through_mix) * quantized.mean()
        if self.ucfg.margin_weight:
            term = batch_margin_loss(batch, self.margin)
            parts["margin_loss"] = term.detach().float().item()
            loss = loss + self.ucfg.margin_weight * term
        value = loss.detach().float().item()
        if not math.isfinite(value) or abs(value) > self.ucfg.max_abs_loss:
            raise Diverged(f"loss {value:.4g} at step {self.state.global_step}")
        for k, v in parts.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.masks is not None:
            sure.mask_gradients(model, self.masks)
        return loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._count:
            logs.update({k: v / self._count for k, v in self._sums.items()})
            self._sums, self._count = {}, 0
        super().log(logs, *args, **kwargs)


class EpochRecorder(TrainerCallback):
    """Per epoch: mean losses, optional evaluation, MUSE's stopping rule; persisted for resume."""

    def __init__(self, path: Path, evaluator, floor: float | None, show: bool):
        self.path = path
        self.evaluator = evaluator
        self.floor = floor
        self.show = show
        self.state = read_json(path) if path.is_file() else {"epochs": [], "stopped": None}
        self.started = time.time()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = math.ceil(state.epoch - 1e-6)  # a partial last epoch (--max-steps) counts as the next one
        logs = [e for e in state.log_history if e.get("epoch", 0) > epoch - 1 and "forget_loss" in e]
        record = {
            "epoch": epoch,
            "step": state.global_step,
            "forget_loss": mean([e["forget_loss"] for e in logs]),
            "retain_loss": mean([e["retain_loss"] for e in logs if "retain_loss" in e]),
            "seconds": round(time.time() - self.started, 2),
        }
        if self.evaluator is not None:  # every rank: replicas are identical, so all take the same decision
            record["metrics"] = self.evaluator(model)
        below = self.floor is not None and record.get("metrics", {}).get("knowmem_r", math.inf) < self.floor
        self.state["epochs"] = [e for e in self.state["epochs"] if e["epoch"] < epoch] + [record]
        if below:
            self.state["stopped"] = {"epoch": epoch, "reason": (
                f"KnowMem_r {record['metrics']['knowmem_r']:.2f} fell below the utility floor {self.floor:.2f}")}
            control.should_training_stop = True
        if state.is_world_process_zero:
            atomic_write_json(self.path, self.state)
        if self.show and state.is_world_process_zero:
            m = record.get("metrics", {})
            extra = " ".join(f"{k}={v:.1f}" for k, v in m.items())
            print(f"  epoch {epoch}: forget loss {record['forget_loss']:.4f} "
                  f"retain loss {fmt_opt(record['retain_loss'])} {extra}", flush=True)


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def fmt_opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def training_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete HF checkpoint under `folder`, if any."""
    cps = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(cps, key=lambda p: int(p.name.split("-")[-1])) if cps else None


def checkpoint_for_step(folder: Path, step: int) -> Path:
    path = folder / f"checkpoint-{step}"
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is missing; cannot restore the chosen epoch")
    return path


def load_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model` in place (safetensors only)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if "lm_head" not in k or not getattr(model.config, "tie_word_embeddings", False)]
    if real_missing or unexpected:
        raise UserError(f"checkpoint {checkpoint} does not match the model ({len(real_missing)} missing keys)")


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
    method, level, lr = cfg.resolve()
    floor = cfg.utility_floor if cfg.utility_floor is not None else utility_floor
    out = Path(out)
    work = out.parent / f".{out.name}.work"
    identity = {"model": model_fingerprint(model_path), "corpus": corpus.content_hash, "config": asdict(cfg)}
    started = time.time()

    arithmetic = bf16.resolve_arithmetic(cfg.arithmetic, cfg.dtype)
    dtype = torch.float32 if arithmetic == "emulated" else training_dtype(cfg.dtype)
    model = load_model(model_path, dtype, opts)
    model.config.use_cache = False
    tokenizer = load_tokenizer(model_path, opts)
    ref = load_model(model_path, dtype, opts) if method.needs_ref or cfg.margin_weight else None
    if method.forget.prepare is not None:
        method.forget.prepare(model, cfg)
    if arithmetic == "emulated":  # the weights native bf16 would load
        for m in (model, ref):
            if m is not None:
                bf16.round_to_bf16_(m)
    max_len = min(cfg.max_length, getattr(model.config, "max_position_embeddings", cfg.max_length) or cfg.max_length)
    forget = chunk_ids(tokenizer, corpus.raw("forget"), max_len)
    retain = chunk_ids(tokenizer, corpus.raw("retain"), max_len) if method.needs_retain else None
    dataset = ForgetRetainDataset(forget, retain, cfg.seed)
    collator = PairCollator(tokenizer.pad_token_id)
    start_work_dir(work, identity)  # only now: bad inputs above leave no scratch folder behind

    args = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=cfg.weight_decay,
        optim="adamw_torch_fused" if cfg.fused_adamw else "adamw_torch",
        bf16=cfg.dtype == "mixed",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=1,
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        disable_tqdm=not show,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    masks = saliency_masks(model, ref, method, cfg, level, dataset, collator, work) if level else None
    recorder = EpochRecorder(work / "epochs.json", evaluator, floor, show)
    optimizer = None
    if arithmetic == "emulated":
        optimizer = (bf16.Bf16StateAdamW, {"lr": lr, "betas": (args.adam_beta1, args.adam_beta2),
                                           "eps": args.adam_epsilon, "fused": cfg.fused_adamw})
    trainer = UnlearnTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                             method=method, cfg=cfg, ref_model=ref, masks=masks, callbacks=[recorder],
                             optimizer_cls_and_kwargs=optimizer)
    quiet_trainer_output(trainer, show)
    sharded = trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled
    if masks is not None and sharded:
        raise UserError("SURE masking supports single-device and DDP training, not DeepSpeed/FSDP sharding")
    if arithmetic == "emulated" and sharded:
        raise UserError("--arithmetic emulated is for single-device and DDP runs; use --arithmetic native "
                        "under DeepSpeed/FSDP")
    if trainer.through and trainer.args.world_size > 1:
        raise UserError("quantization-aware unlearning (--through / qat) runs on one device for now")
    if cfg.margin_weight and cfg.margin is None:
        scheme = (trainer.through or parse_through(DEFAULT_THROUGH))[0]
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collator)
        trainer.margin = derived_margin(trainer.ref_model, scheme, loader, trainer.args.device)

    diverged = None
    if recorder.state["stopped"] is None and not finished(recorder.state, cfg):
        resume = latest_checkpoint(work / "checkpoints")
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Diverged as exc:
            diverged = str(exc)
    chosen, reason = choose_epoch(recorder.state, diverged, floor)
    if chosen is None:
        if trainer.is_world_process_zero():
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from
        raise UserError(f"unlearning diverged in the first epoch ({diverged}); lower --learning-rate")
    last_step = recorder.state["epochs"][-1]["step"] if recorder.state["epochs"] else None
    chosen_step = next(e["step"] for e in recorder.state["epochs"] if e["epoch"] == chosen)
    if diverged or chosen_step != last_step or trainer.state.global_step != chosen_step:
        restore_checkpoint(trainer, model, checkpoint_for_step(work / "checkpoints", chosen_step))
    if arithmetic == "emulated":
        model.to(torch.bfloat16)  # exact: the weights hold bf16 values; saved as native bf16 would be

    record = {
        "method": f"{cfg.method}({cfg.base})" if is_wrapper(cfg.method) else cfg.method,
        "config": asdict(cfg),
        "resolved": {"method": method.name, "learning_rate": lr, "saliency": level, "utility_floor": floor,
                     "needs_reference": method.needs_ref, "through": [s.name for s in trainer.through],
                     "margin": trainer.margin if cfg.margin_weight else None},
        "precision": {"mode": cfg.dtype, "arithmetic": arithmetic,
                      "description": bf16.describe(arithmetic, cfg.dtype),
                      "parameter_dtypes": describe_dtypes(model),
                      "optimizer_state": "bf16 (no fp32 master)" if cfg.dtype == "bf16" else "fp32"},
        "source_model": str(model_path),
        "source_hash": identity["model"],
        "corpus": {"name": corpus.name, "content_hash": corpus.content_hash},
        "forget_chunks": len(forget),
        "epochs": recorder.state["epochs"],
        "chosen_epoch": chosen,
        "chosen_reason": reason,
        "diverged": diverged,
        "saliency_kept_share": sure.kept_share(masks, model) if masks is not None else None,
        "seconds": round(time.time() - started, 2),
        "versions": versions(),
    }
    save_unlearned(trainer, tokenizer, out, record, to_yaml(cfg))
    if trainer.is_world_process_zero() and not cfg.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    return out


def restore_checkpoint(trainer, model, checkpoint: Path) -> None:
    """Go back to a saved epoch (divergence, or an epoch before the last was chosen)."""
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer._load_from_checkpoint(str(checkpoint))  # sharded engines restore their own state
    else:
        load_weights(model, checkpoint)


def start_work_dir(work: Path, identity: dict) -> None:
    """Create (or reuse, for resume) the work folder; refuse one left by a different run."""
    marker = work / "identity.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != json.loads(json.dumps(identity)):
            raise UserError(f"{work} holds an unfinished run with other settings; delete it or choose another --out")
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, identity)


def finished(state: dict, cfg: UnlearnConfig) -> bool:
    """Whether the recorded epochs already reach the configured end (--max-steps, else --epochs)."""
    if not state["epochs"]:
        return False
    if cfg.max_steps:
        return state["epochs"][-1]["step"] >= cfg.max_steps
    return state["epochs"][-1]["epoch"] >= cfg.epochs


def choose_epoch(state: dict, diverged: str | None, floor: float | None) -> tuple[int | None, str]:
    """MUSE's rule: the stopping epoch if utility fell below the floor, else the last good epoch."""
    if state["stopped"]:
        return state["stopped"]["epoch"], state["stopped"]["reason"]
    if not state["epochs"]:
        return None, "no epoch finished"
    last = state["epochs"][-1]["epoch"]
    if diverged:
        return last, f"training diverged ({diverged}); kept the last good epoch"
    if floor is not None:
        return last, f"utility never fell below the floor {floor:.2f}; kept the last epoch"
    return last, "no utility floor given; kept the last epoch"


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


def save_unlearned(trainer, tokenizer, out: Path, record: dict, config_yaml: str) -> None:
    """Write the unlearned model atomically: weights (gathered by the Trainer under DeepSpeed/FSDP),
    tokenizer, unlearn.json and config.yaml; only the main process writes, every process waits for it."""
    trainer.model.config.use_cache = True
    staging = out.parent / f".{out.name}.saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; unlearn.json holds the config
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "unlearn.json", record)
        atomic_write_text(staging / "config.yaml", config_yaml)
        replace_dir(staging, out)
    trainer.accelerator.wait_for_everyone()


def versions() -> dict[str, str]:
    import transformers

    return {"unlearn_audit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
