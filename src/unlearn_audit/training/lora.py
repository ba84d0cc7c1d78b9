"""LoRA training through PEFT (Hu et al. 2021, arXiv 2106.09685): `--lora r=16,alpha=32,targets=q_proj,v_proj`
on `unlearn`, `finetune` and the relearning attacks. The base weights stay frozen; only A (r x in) and
B (out x r) of each targeted linear layer train, B starting at zero, so the model starts as the base and
the update is s * B @ A with s = alpha / r. The output is a PEFT adapter folder (adapter_config.json naming
the base by absolute path or hub id, adapter_model.safetensors, the tokenizer and our record); every model
argument accepts it and merges it at load (models/adapters.py).

Trainable parameters: sum over adapted layers of r * (in + out); AdamW keeps two moments of each, so
its state is twice that (measured and recorded as `memory` in the record). The NPO/KL reference is the
same model with the adapter switched off, not a second copy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

DEFAULT_TARGETS = "all-linear"  # PEFT's keyword: every linear layer but the output head


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: float | None = None  # default 2 * r
    targets: tuple[str, ...] = (DEFAULT_TARGETS,)
    dropout: float = 0.0

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.r

    def record(self) -> dict:
        return {**asdict(self), "alpha": self.lora_alpha, "targets": list(self.targets)}


USAGE = "--lora r=R[,alpha=A,targets=NAME[,NAME...],dropout=P] (e.g. r=16,alpha=32,targets=q_proj,v_proj)"


def parse_lora(text: str | None) -> LoraSpec | None:
    """'r=16,alpha=32,targets=q_proj,v_proj,dropout=0.05' -> LoraSpec; items without '=' continue the
    previous key's list (target names)."""
    if not text:
        return None
    values: dict[str, list[str]] = {}
    key = None
    for item in (t.strip() for t in str(text).split(",") if t.strip()):
        if "=" in item:
            key, _, val = item.partition("=")
            key = key.strip()
            if key not in ("r", "alpha", "targets", "dropout") or key in values:
                raise UserError(f"--lora: unknown or repeated key {key!r}; use {USAGE}")
            values[key] = [val.strip()]
        elif key == "targets":
            values[key].append(item)
        else:
            raise UserError(f"--lora: {item!r} has no key; use {USAGE}")
    try:
        spec = LoraSpec(r=int(values.get("r", ["16"])[0]),
                        alpha=float(values["alpha"][0]) if "alpha" in values else None,
                        targets=tuple(values.get("targets", [DEFAULT_TARGETS])),
                        dropout=float(values.get("dropout", ["0"])[0]))
    except ValueError:
        raise UserError(f"--lora {text!r}: r must be a whole number, alpha and dropout numbers; use {USAGE}") from None
    if spec.r < 1 or spec.lora_alpha <= 0 or not 0 <= spec.dropout < 1 or not all(spec.targets):
        raise UserError(f"--lora {text!r}: r >= 1, alpha > 0, 0 <= dropout < 1 and named targets; use {USAGE}")
    return spec


def matched_modules(model, spec: LoraSpec) -> list[str]:
    """Names of the linear layers the spec adapts (PEFT's rule: a name equal to a target or ending in
    '.target'; 'all-linear' = every linear layer but the output head)."""
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if DEFAULT_TARGETS in spec.targets:
        out = model.get_output_embeddings()
        return [n for n in names if model.get_submodule(n) is not out]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in spec.targets)]


def check_targets(model_path, spec: LoraSpec, opts) -> None:
    """Refuse targets that match no linear layer, from the config alone (no weights loaded)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models.loading import model_config

    config = model_config(model_path, opts)
    if config is None:
        return  # a GGUF file: checked when PEFT wraps the loaded model
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    if not matched_modules(skeleton, spec):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"--lora targets {', '.join(spec.targets)} match no linear layer of {model_path}; "
                        f"its linear layers are {', '.join(linear)}")


def attach(model, spec: LoraSpec, seed: int):
    """Wrap `model` in a PEFT LoRA model (adapters in the model's own dtype, so pure bf16 stays bf16); A's
    random initialisation is drawn from `seed` (same seed, same adapter; a resumed run starts alike)."""
    import torch

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("--lora needs PEFT: pip install 'unlearn-audit[lora]' (or pip install peft)") from None
    targets = DEFAULT_TARGETS if DEFAULT_TARGETS in spec.targets else list(spec.targets)
    config = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.dropout, target_modules=targets,
                        task_type="CAUSAL_LM", bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config, autocast_adapter_dtype=False)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class AdapterOff:
    """The frozen base of a LoRA model: the same modules with the adapter switched off (the reference of
    NPO and the KL regularizer without a second copy of the weights)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_trainable(model, spec: LoraSpec) -> int:
    """r * (in + out) summed over the adapted layers (what the adapter implies)."""
    base = model.get_base_model() if is_peft(model) else model
    adapted = set(matched_modules(base, spec))
    return sum(spec.r * (m.in_features + m.out_features) for n, m in base.named_modules() if n in adapted)


def optimizer_state(optimizer) -> dict:
    """Elements and bytes the optimizer keeps (its moment tensors, 8-bit ones with their scales; step
    counters excluded), seen through accelerate's wrapper and the emulated-bf16 optimizer."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    optimizer = getattr(optimizer, "inner", optimizer)
    numel = nbytes = 0
    for state in getattr(optimizer, "state", {}).values():
        for v in state.values():
            if hasattr(v, "numel") and v.dim() > 0:
                numel += v.numel()
                nbytes += v.numel() * v.element_size()
    return {"optimizer_state_elements": numel, "optimizer_state_bytes": nbytes}


def save_base_reference(out: Path, model_path) -> None:
    """Name the base in adapter_config.json by absolute path (local) or as given (hub id, package:)."""
    import json

    from ..models.files import is_local
    from ..utils.io import atomic_write_json

    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(Path(model_path).resolve()) if is_local(model_path) else str(model_path)
    atomic_write_json(path, config)


def lora_settings_error(cfg) -> str | None:
    """Why an unlearning configuration cannot train through LoRA (None: it can)."""
    if cfg.method == "sure" or cfg.saliency:
        return "SURE masks rows of the full weight matrices; with --lora the base is frozen"
    if cfg.method.startswith("rmu"):
        return "RMU trains chosen MLP matrices of the full model (--rmu-params); it does not take --lora"
    if cfg.through or cfg.method == "qat":
        return "quantization-aware unlearning fake-quantizes the full weights; it does not take --lora yet"
    if cfg.margin_weight:
        return "the margin term's reference is fake-quantized; it does not take --lora yet"
    return None


@dataclass
class LeanOptions:
    """Memory-lean training (unlearn, finetune): LoRA, gradient checkpointing, 8-bit AdamW."""

    lora: str | None = field(default=None, metadata={
        "help": "train a LoRA adapter instead of every weight: r=16,alpha=32,targets=q_proj,v_proj "
                "(defaults r 16, alpha 2r, every linear layer); the output is an adapter folder"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, about a third more compute)"})
    optim: str = field(default="adamw", metadata={
        "help": "adamw, or adamw-8bit (bitsandbytes' 8-bit moments: a quarter of AdamW's state)",
        "choices": ["adamw", "adamw-8bit"]})

    def check_lean(self, arithmetic: str) -> None:
        parse_lora(self.lora)
        if self.optim not in ("adamw", "adamw-8bit"):
            raise UserError("--optim must be adamw or adamw-8bit")
        if self.optim == "adamw-8bit" and arithmetic == "emulated":
            raise UserError("--optim adamw-8bit keeps its own state format; use it with --arithmetic native or "
                            "--dtype fp32/mixed, not emulated bf16")
