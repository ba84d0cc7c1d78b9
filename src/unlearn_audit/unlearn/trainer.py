"""One unlearning trainer for every method, on the training core (`training/`): the method's forget
loss plus alpha times its regularizer on paired forget/retain batches, optional SURE masking of the
gradients, quantization-aware losses and the margin term. Precision modes, checkpoints, resume, the
per-epoch record and MUSE's stopping rule are the core's (training/core.py); the unlearned folder gets
`unlearn.json` and `config.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import to_yaml
from ..data.corpus import Corpus
from ..errors import UserError
from ..models.loading import LoadOptions, load_model, load_tokenizer, model_fingerprint
from ..training import bf16, lora
from ..training.core import (
    CoreTrainer,
    EpochRecorder,
    PairedChunks,
    PartsCollator,
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
from ..utils.environment import environment
from ..utils.progress import quiet_trainer_output
from . import sure
from .config import UnlearnConfig
from .margin import batch_margin_loss, derived_margin
from .methods import Batch, Method, is_wrapper
from .qat import DEFAULT_THROUGH, FakeQuantized, parse_through


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

    args = training_arguments(settings, work, show, len(dataset))
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
