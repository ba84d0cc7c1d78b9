"""One causal-LM training loop on HF `Trainer` (so `accelerate launch` scales it), shared by `finetune`,
the tiny models (training/tiny.py), the relearning attacks and `unlearn`.

Precision modes (recorded with every trained model):
  bf16   pure bf16: weights, gradients and AdamW state in bf16, no fp32 master copy (the paper's code).
         A step of size ~lr only survives rounding for |w| below ~2^8 * lr, so small-LR updates land in
         near-zero weights. On CPUs the arithmetic may be emulated (bf16.py): same rounding, fp32 speed.
  fp32   everything in float32.
  mixed  fp32 master weights with bf16 autocast for the forward/backward pass.

Memory-lean modes (training/lora.py): `lora` trains a PEFT adapter on the frozen base,
`gradient_checkpointing` recomputes activations, `optim` adamw-8bit keeps bitsandbytes' 8-bit moments;
the record's `memory` says what trained and what the optimizer kept.

Per epoch: an HF checkpoint (resume after a kill; none for the epoch that ends training unless
checkpoints are kept, `NoFinalCheckpoint`), the mean of each logged loss part and, when an
evaluator is given, its metrics and MUSE's stopping rule: keep the first epoch whose KnowMem on retain
falls below the floor, else the last. A non-finite or exploding loss stops the run and the last good
epoch is kept. Data: texts are split into chunks of at most `max_length` tokens, each item one chunk per
named part ("text"; `unlearn`'s "forget" with a seeded-random "retain" partner), each part padded on its
own with label -100 on padding.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .. import __version__
from ..errors import UserError
from ..models.generation import encode_documents, right_pad
from ..models.loading import LoadOptions, describe_dtypes, load_model, load_tokenizer, model_fingerprint
from ..utils.environment import environment
from ..utils.interrupt import check_interrupt
from ..utils.io import atomic_write_json, atomic_write_text, read_json, replace_dir, sha256_json
from ..utils.progress import quiet_trainer_output
from . import bf16, lora
from .nll import IGNORE, chunked_mean_nll, mean_nll
from .schedule import ScheduleRule

PRECISIONS = bf16.PRECISIONS


class Diverged(RuntimeError):
    """Raised inside the training loop when the loss is non-finite or explodes."""


@dataclass
class TrainSettings:
    """What the loop needs (filled from `FinetuneConfig`, a relearning attack or `UnlearnConfig`)."""

    learning_rate: float
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    dtype: str = "fp32"
    arithmetic: str = "auto"
    weight_decay: float = 0.0
    seed: int = 0
    fused_adamw: bool = False
    max_abs_loss: float = 1e4
    keep_checkpoints: bool = False
    lora: str | None = None
    gradient_checkpointing: bool = False
    optim: str = "adamw"
    loss_chunk: int = 0  # positions per chunk of the output head in plain NLL training (0: full logits)
    schedule: str = "constant"  # HF's lr_scheduler_type: constant, or the tiny recipe's cosine decay
    warmup_ratio: float = 0.0  # share of all steps with a linear warm-up (rounded down to whole steps)
    adam_beta2: float = 0.999
    model_loss: bool = False  # plain training: the model's own causal-LM loss (HF's), not `mean_nll`
    checkpoints: bool = True  # per-epoch checkpoints (resume, restoring an epoch); off for short runs


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


class PairedChunks(torch.utils.data.Dataset):
    """Item i = chunk i of the main part, with a fixed, seeded-random chunk of the partner part if any."""

    def __init__(self, main: list[list[int]], partner: list[list[int]] | None, seed: int,
                 names: tuple[str, str] = ("forget", "retain")):
        if not main:
            raise UserError(f"the {names[0]} texts are empty after tokenization")
        self.main, self.partner, self.names = main, partner, names
        g = torch.Generator().manual_seed(seed)
        self.pair = torch.randint(len(partner), (len(main),), generator=g).tolist() if partner else None

    def __len__(self) -> int:
        return len(self.main)

    def __getitem__(self, i: int) -> dict:
        item = {self.names[0]: self.main[i]}
        if self.partner:
            item[self.names[1]] = self.partner[self.pair[i]]
        return item


class PartsCollator:
    """Pad each part of the items separately; padding gets label -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for part in items[0]:
            ids, mask = right_pad([it[part] for it in items], self.pad_id, "cpu")
            batch[f"{part}_input_ids"] = ids
            batch[f"{part}_attention_mask"] = mask
            batch[f"{part}_labels"] = ids.masked_fill(mask == 0, -100)
        return batch


# ------------------------------------------------------------------------------------------- trainer
class CoreTrainer(Trainer):
    """HF Trainer whose loss is `loss_and_parts` (subclasses define it), with a divergence stop and the
    mean of each part logged per logging step."""

    def __init__(self, *args, max_abs_loss: float = 1e4, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_abs_loss = max_abs_loss
        self._sums: dict[str, float] = {}
        self._count = 0

    def loss_and_parts(self, model, inputs) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts = self.loss_and_parts(model, inputs)
        value = loss.detach().float().item()
        if not math.isfinite(value) or abs(value) > self.max_abs_loss:
            raise Diverged(f"loss {value:.4g} at step {self.state.global_step}")
        for k, v in parts.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._count:
            logs.update({k: v / self._count for k, v in self._sums.items()})
            self._sums, self._count = {}, 0
        super().log(logs, *args, **kwargs)


class TextTrainer(CoreTrainer):
    """Plain causal-LM training: the NLL of the "text" part (HF's causal-LM loss)."""

    def __init__(self, *args, loss_chunk: int = 0, model_loss: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if loss_chunk and self.args.world_size > 1:  # the head runs outside the DDP/FSDP wrapper's forward
            raise UserError("--loss-chunk runs on one process; leave it out under accelerate launch / torchrun")
        self.loss_chunk, self.model_loss = loss_chunk, model_loss

    def loss_and_parts(self, model, inputs):
        ids, mask, labels = inputs["text_input_ids"], inputs["text_attention_mask"], inputs["text_labels"]
        if self.model_loss:  # the same mean as `mean_nll`, rounded as HF's cross-entropy rounds it
            loss = model(input_ids=ids, attention_mask=mask, labels=labels,
                         num_items_in_batch=labels[:, 1:].ne(IGNORE).sum()).loss
        elif self.loss_chunk:
            loss = chunked_mean_nll(model, ids, mask, labels, self.loss_chunk)
        else:
            loss = mean_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
        return loss, {"text_loss": loss.detach().float().item()}


class EpochRecorder(TrainerCallback):
    """Per epoch: the mean of each logged loss part, optional evaluation, MUSE's stopping rule and the
    schedule rule (training/schedule.py, scored against the model's validation scores at the start);
    persisted for resume."""

    def __init__(self, path: Path, evaluator, floor: float | None, show: bool, rule: ScheduleRule | None = None):
        self.path = path
        self.evaluator = evaluator
        self.floor = floor
        self.rule = rule or None
        self.show = show
        self.state = read_json(path) if path.is_file() else {"epochs": [], "stopped": None}
        self.started = time.time()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.rule and "start" not in self.state:  # the model before unlearning, once (kept for resume)
            self.state["start"] = self.evaluator(model)
            if state.is_world_process_zero:
                atomic_write_json(self.path, self.state)
            if self.show and state.is_world_process_zero:
                print("  start: " + " ".join(f"{k}={v:.1f}" for k, v in self.state["start"].items()), flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        check_interrupt()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops training here

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = math.ceil(state.epoch - 1e-6)  # a partial last epoch (--max-steps) counts as the next one
        logs = [e for e in state.log_history if e.get("epoch", 0) > epoch - 1]
        parts = sorted({k for e in logs for k in e if k.endswith("_loss") and k != "train_loss"})
        record = {"epoch": epoch, "step": state.global_step,
                  **{k: mean([e[k] for e in logs if k in e]) for k in parts},
                  "seconds": round(time.time() - self.started, 2)}
        if self.evaluator is not None:  # every rank: replicas are identical, so all take the same decision
            record["metrics"] = self.evaluator(model)
        below = self.floor is not None and record.get("metrics", {}).get("knowmem_r", math.inf) < self.floor
        self.state["epochs"] = [e for e in self.state["epochs"] if e["epoch"] < epoch] + [record]
        if below:
            self.state["stopped"] = {"epoch": epoch, "reason": (
                f"KnowMem_r {record['metrics']['knowmem_r']:.2f} fell below the utility floor {self.floor:.2f}")}
            control.should_training_stop = True
        elif self.rule and (decision := self.rule.decide(self.state["start"], self.state["epochs"])):
            self.state["stopped"] = {"epoch": decision[0], "reason": decision[1]}
            control.should_training_stop = True
        if state.is_world_process_zero:
            atomic_write_json(self.path, self.state)
        if self.show and state.is_world_process_zero:
            shown = [f"{k.replace('_', ' ')} {record[k]:.4f}" for k in parts if record[k] is not None]
            shown += [f"{k}={v:.1f}" for k, v in record.get("metrics", {}).items()]
            print(f"  epoch {epoch}: " + " ".join(shown), flush=True)


class NoFinalCheckpoint(TrainerCallback):
    """The epoch that ends training writes no checkpoint (weights and optimizer state: 12 bytes a parameter
    under AdamW) only for the work folder to delete it once the model is saved; a run killed in between
    redoes that epoch from the one before (`redo_unsaved_last_epoch`). Runs after `EpochRecorder`, whose
    rules may end training at this epoch."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_training_stop or state.global_step >= state.max_steps:
            control.should_save = False


def redo_unsaved_last_epoch(state: dict, checkpoints: Path) -> None:
    """Resume after a kill between the last epoch (no checkpoint: `NoFinalCheckpoint`) and the model's
    save: forget that epoch, and the stop decided at it, so training repeats it from the checkpoint before."""
    if state["epochs"] and not (checkpoints / f"checkpoint-{state['epochs'][-1]['step']}").is_dir():
        state["epochs"].pop()
        state["stopped"] = None


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ------------------------------------------------------------------------------------------- pieces
def training_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def check_lean_settings(model_path, s: TrainSettings, opts: LoadOptions | None) -> str:
    """Refuse impossible memory modes and LoRA targets that match nothing, before any weight is loaded;
    returns the resolved bf16 arithmetic."""
    arithmetic = bf16.resolve_arithmetic(s.arithmetic, s.dtype)
    lora.LeanOptions(s.lora, s.gradient_checkpointing, s.optim).check_lean(arithmetic)
    if s.lora:
        lora.check_targets(model_path, lora.parse_lora(s.lora), opts)
    return arithmetic


def load_for_training(model_path: str | Path, s: TrainSettings, opts: LoadOptions | None) -> tuple[object, str]:
    """(the model in the dtype its precision mode trains, wrapped in a LoRA adapter when asked; the
    resolved bf16 arithmetic)."""
    arithmetic = check_lean_settings(model_path, s, opts)
    dtype = torch.float32 if arithmetic == "emulated" else training_dtype(s.dtype)
    model = load_model(model_path, dtype, opts)
    model.config.use_cache = False
    if s.lora:
        model = lora.attach(model, lora.parse_lora(s.lora), s.seed)
    return model, arithmetic


def chunk_length(model, s: TrainSettings) -> int:
    """Tokens per training chunk: `max_length`, at most the model's context."""
    return min(s.max_length, getattr(model.config, "max_position_embeddings", s.max_length) or s.max_length)


def training_arguments(s: TrainSettings, work: Path, show: bool, items: int) -> TrainingArguments:
    """HF's arguments for the settings; the dataset's `items` size the warm-up (HF's steps per epoch)."""
    steps_per_epoch = math.ceil(items / (s.batch_size * s.grad_accum))
    warmup = s.warmup_ratio * s.max_steps if s.max_steps else s.warmup_ratio * steps_per_epoch * s.epochs
    return TrainingArguments(
        output_dir=str(work / "checkpoints"),
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps or -1,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.schedule,
        warmup_steps=int(warmup),
        adam_beta2=s.adam_beta2,
        weight_decay=s.weight_decay,
        optim="adamw_bnb_8bit" if s.optim == "adamw-8bit" else "adamw_torch_fused" if s.fused_adamw else "adamw_torch",
        gradient_checkpointing=s.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if s.gradient_checkpointing else None,
        bf16=s.dtype == "mixed",
        save_strategy="epoch" if s.checkpoints else "no",
        logging_strategy="steps",
        logging_steps=1,
        report_to=[],
        seed=s.seed,
        data_seed=s.seed,
        remove_unused_columns=False,
        disable_tqdm=not show,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def emulated_optimizer(args: TrainingArguments, s: TrainSettings) -> tuple | None:
    """The optimizer the Trainer gets for emulated bf16 arithmetic (bf16 weights and state, fp32 math)."""
    return (bf16.Bf16StateAdamW, {"lr": s.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                                  "eps": args.adam_epsilon, "fused": s.fused_adamw})


def refuse_unsupported(trainer, arithmetic: str) -> None:
    if arithmetic == "emulated" and (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        raise UserError("--arithmetic emulated is for single-device and DDP runs; use --arithmetic native "
                        "under DeepSpeed/FSDP")


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
    """Load a checkpoint's weights into `model` in place (safetensors only; a LoRA checkpoint's adapter)."""
    from safetensors.torch import load_file

    if lora.is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
        return
    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if "lm_head" not in k or not getattr(model.config, "tie_word_embeddings", False)]
    if real_missing or unexpected:
        raise UserError(f"checkpoint {checkpoint} does not match the model ({len(real_missing)} missing keys)")


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


def finished(state: dict, s: TrainSettings) -> bool:
    """Whether the recorded epochs already reach the configured end (max_steps, else epochs)."""
    if not state["epochs"]:
        return False
    if s.max_steps:
        return state["epochs"][-1]["step"] >= s.max_steps
    return state["epochs"][-1]["epoch"] >= s.epochs


def choose_epoch(state: dict, diverged: str | None, floor: float | None,
                 rule: ScheduleRule | None = None) -> tuple[int | None, str]:
    """The epoch a stopping rule chose (MUSE's utility floor, the schedule rule), else the last good epoch."""
    if state["stopped"]:
        return state["stopped"]["epoch"], state["stopped"]["reason"]
    if not state["epochs"]:
        return None, "no epoch finished"
    last = state["epochs"][-1]["epoch"]
    if diverged:
        return last, f"training diverged ({diverged}); kept the last good epoch"
    if rule:
        return last, rule.unmet(state["start"], state["epochs"])
    if floor is not None:
        return last, f"utility never fell below the floor {floor:.2f}; kept the last epoch"
    return last, "no utility floor given; kept the last epoch"


@dataclass
class Outcome:
    """What a finished loop hands back: the epochs run, the one kept and why, a divergence if any."""

    epochs: list[dict]
    chosen: int
    reason: str
    diverged: str | None


def run_loop(trainer, recorder: EpochRecorder, model, s: TrainSettings, work: Path, floor: float | None,
             arithmetic: str) -> Outcome:
    """Train (resuming from the newest checkpoint), then restore the epoch MUSE's rule keeps."""
    diverged = None
    if not s.keep_checkpoints:
        trainer.add_callback(NoFinalCheckpoint())
        redo_unsaved_last_epoch(recorder.state, work / "checkpoints")
    if recorder.state["stopped"] is None and not finished(recorder.state, s):
        resume = latest_checkpoint(work / "checkpoints")
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Diverged as exc:
            diverged = str(exc)
    chosen, reason = choose_epoch(recorder.state, diverged, floor, recorder.rule)
    if chosen is None:
        if trainer.is_world_process_zero():
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume from
        raise UserError(f"training diverged in the first epoch ({diverged}); lower --learning-rate")
    if diverged and not s.checkpoints:
        raise UserError(f"training diverged ({diverged}) and no epoch was kept to go back to; lower the learning rate")
    last_step = recorder.state["epochs"][-1]["step"] if recorder.state["epochs"] else None
    chosen_step = next(e["step"] for e in recorder.state["epochs"] if e["epoch"] == chosen)
    if diverged or chosen_step != last_step or trainer.state.global_step != chosen_step:
        restore_checkpoint(trainer, model, checkpoint_for_step(work / "checkpoints", chosen_step))
    if arithmetic == "emulated":
        model.to(torch.bfloat16)  # exact: the weights hold bf16 values; saved as native bf16 would be
    return Outcome(recorder.state["epochs"], chosen, reason, diverged)


def memory_record(trainer, model, s: TrainSettings) -> dict:
    """What trained and what the optimizer kept (LoRA: the adapter only)."""
    return {"lora": lora.parse_lora(s.lora).record() if s.lora else None,
            "gradient_checkpointing": s.gradient_checkpointing, "optim": s.optim,
            "trainable_parameters": lora.trainable_parameters(model),
            "total_parameters": sum(p.numel() for p in model.parameters()),
            **lora.optimizer_state(trainer.optimizer)}


def precision_record(model, s: TrainSettings, arithmetic: str) -> dict:
    return {"mode": s.dtype, "arithmetic": arithmetic, "description": bf16.describe(arithmetic, s.dtype),
            "parameter_dtypes": describe_dtypes(model),
            "optimizer_state": "bf16 (no fp32 master)" if s.dtype == "bf16" else "fp32"}


def save_trained(trainer, tokenizer, out: Path, record_name: str, record: dict, config_yaml: str | None,
                 base: str | Path | None = None) -> None:
    """Write the trained model atomically: weights (gathered by the Trainer under DeepSpeed/FSDP; a LoRA
    run's adapter, naming `base`), tokenizer, the record JSON and config.yaml; only the main process
    writes, every process waits for it."""
    trainer.model.config.use_cache = True
    staging = out.parent / f".{out.name}.saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the record holds the config
        if lora.is_peft(trainer.model):
            lora.save_base_reference(staging, base)
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / record_name, record)
        if config_yaml is not None:
            atomic_write_text(staging / "config.yaml", config_yaml)
        replace_dir(staging, out)
    trainer.accelerator.wait_for_everyone()


def finish_work(trainer, work: Path, s: TrainSettings) -> None:
    if trainer.is_world_process_zero() and not s.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)


def versions() -> dict[str, str]:
    import transformers

    return {"unlearn_audit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


# ------------------------------------------------------------------------------------------- texts
TRAIN_RECORD = "train.json"


def train_on_texts(model_path: str | Path, texts: list[str], s: TrainSettings, out: str | Path,
                   opts: LoadOptions | None = None, show: bool = True, about: dict | None = None,
                   evaluator: Callable | None = None) -> Path:
    """Fine-tune the model at `model_path` on `texts` (plain NLL): write an HF folder with `train.json`
    (settings, precision, epochs, `about`) to `out`. `finetune` and the relearning attacks train here."""
    out = Path(out)
    work = out.parent / f".{out.name}.work"
    identity = {"model": model_fingerprint(model_path), "texts": sha256_json(texts), "settings": asdict(s)}
    started = time.time()
    model, arithmetic = load_for_training(model_path, s, opts)
    tokenizer = load_tokenizer(model_path, opts)
    dataset = PairedChunks(chunk_ids(tokenizer, texts, chunk_length(model, s)), None, s.seed, names=("text", ""))
    start_work_dir(work, identity)  # only now: bad inputs above leave no scratch folder behind
    args = training_arguments(s, work, show, len(dataset))
    recorder = EpochRecorder(work / "epochs.json", evaluator, None, show)
    trainer = TextTrainer(model=model, args=args, train_dataset=dataset, data_collator=PartsCollator(tokenizer.pad_token_id),
                          callbacks=[recorder], max_abs_loss=s.max_abs_loss, loss_chunk=s.loss_chunk,
                          model_loss=s.model_loss,
                          optimizer_cls_and_kwargs=emulated_optimizer(args, s) if arithmetic == "emulated" else None)
    quiet_trainer_output(trainer, show)
    refuse_unsupported(trainer, arithmetic)
    outcome = run_loop(trainer, recorder, model, s, work, None, arithmetic)
    record = {**(about or {}), "settings": asdict(s), "precision": precision_record(model, s, arithmetic),
              "source_model": str(model_path), "source_hash": identity["model"], "texts": len(texts),
              "chunks": len(dataset), "tokens": sum(map(len, dataset.main)), "epochs": outcome.epochs, "chosen_epoch": outcome.chosen,
              "chosen_reason": outcome.reason, "diverged": outcome.diverged,
              "memory": memory_record(trainer, model, s),
              "seconds": round(time.time() - started, 2), "versions": versions(),
              "environment": environment()}
    save_trained(trainer, tokenizer, out, TRAIN_RECORD, record, None, base=model_path)
    finish_work(trainer, work, s)
    return out
