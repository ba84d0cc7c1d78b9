"""LoRA adapter folders (PEFT's `adapter_config.json` + `adapter_model.safetensors`) wherever a model is
expected: the base is resolved from the adapter's config (or `--adapter-base`), loaded, and the adapter
merged into it at a chosen precision.

The merge (Hu et al. 2021, "LoRA", arXiv 2106.09685, eq. 3; PEFT's `LoraLayer.get_delta_weight`):

    W' = round_p( round_p(W) + s * B @ A ),   s = lora_alpha / r   (rsLoRA: lora_alpha / sqrt(r))

the base loaded in the merge precision p (as a deployment loads it, and as our bf16 training saw it),
the sum computed in float32 and rounded once more to p. p decides
what a deployment keeps of a small update: merged into bf16 weights, a change below half a bf16 step of
W rounds away before any quantizer sees it. `--merge-dtype auto` takes the precision the adapter was
trained in (pure bf16 -> bf16, else fp32; an adapter from elsewhere: the base's stored format); the
merged model is then cast to the dtype it is run in. The merge precision is recorded in every output.

Only plain LoRA on linear layers is merged here (no DoRA, no modules_to_save, no fan_in_fan_out); other
adapters are refused with a sentence. The same function (`merged_weight`) merges for loading and for
`bins` (quantize/bins.py reads adapter folders through it), so the forecast reads the weights evaluation
runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .files import check_safetensors, is_local

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_DTYPES = ("auto", "bf16", "fp32")
PREFIX = "base_model.model."
TRAINING_RECORDS = ("unlearn.json", "train.json")


def is_adapter(spec) -> bool:
    """A local folder holding a PEFT adapter (and no full model of its own)."""
    p = Path(str(spec))
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter folder, read and checked (no weights loaded)."""

    folder: Path
    config: dict
    base: str

    @property
    def scaling_rule(self) -> str:
        return "alpha/sqrt(r)" if self.config.get("use_rslora") else "alpha/r"

    def scaling(self, rank: int) -> float:
        alpha = float(self.config.get("lora_alpha", rank))
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def trained_precision(self) -> str | None:
        """'bf16' or 'fp32' as recorded by our trainer beside the adapter, else None."""
        for name in TRAINING_RECORDS:
            path = self.folder / name
            if path.is_file():
                mode = json.loads(path.read_text()).get("precision", {}).get("mode")
                return "bf16" if mode == "bf16" else "fp32"
        return None


def read_adapter(folder, base_override: str | None = None) -> Adapter:
    """Read and check an adapter folder; the base is `base_override` or the config's base model."""
    folder = Path(str(folder))
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder}/{ADAPTER_CONFIG} is not valid JSON") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{folder}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged")
    unsupported = [k for k in ("use_dora", "fan_in_fan_out", "modules_to_save", "alpha_pattern") if config.get(k)]
    if unsupported:
        raise UserError(f"{folder}: the adapter uses {', '.join(unsupported)}, which this merge does not support; "
                        "merge it with PEFT and pass the merged folder")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{folder} holds {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    base = base_override or config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{folder}: the adapter does not name its base model; pass --adapter-base")
    if is_local(base) and not Path(base).exists():
        raise UserError(f"--adapter-base {base} is not found" if base_override else
                        f"{folder}: its base model {base} is not found; pass --adapter-base")
    return Adapter(folder, config, str(base))


def merge_precision(adapter: Adapter, requested: str, base_dtype: torch.dtype) -> torch.dtype:
    """The precision the merged weights are rounded to (see module docstring)."""
    if requested not in MERGE_DTYPES:
        raise UserError(f"--merge-dtype must be one of {', '.join(MERGE_DTYPES)}")
    if requested == "auto":
        requested = adapter.trained_precision() or ("bf16" if base_dtype == torch.bfloat16 else "fp32")
    return torch.bfloat16 if requested == "bf16" else torch.float32


def lora_pairs(adapter: Adapter) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Base weight name -> (A, B) of every adapted linear layer."""
    from safetensors.torch import load_file

    check_safetensors(adapter.folder / ADAPTER_WEIGHTS)
    state = load_file(str(adapter.folder / ADAPTER_WEIGHTS))
    pairs: dict[str, list] = {}
    for key, tensor in state.items():
        for i, part in enumerate((".lora_A.weight", ".lora_B.weight")):
            if key.endswith(part):
                name = key.removeprefix(PREFIX)[: -len(part)] + ".weight"
                pairs.setdefault(name, [None, None])[i] = tensor
    broken = [n for n, (a, b) in pairs.items() if a is None or b is None]
    if not pairs or broken:
        raise UserError(f"{adapter.folder}/{ADAPTER_WEIGHTS} holds no complete LoRA pairs"
                        + (f" ({broken[0]} lacks A or B)" if broken else ""))
    return {n: (a, b) for n, (a, b) in pairs.items()}


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                  precision: torch.dtype) -> torch.Tensor:
    """round_p(round_p(W) + s * B @ A), the sum in float32 (the one definition of the merge)."""
    return (weight.to(precision).float() + (b.float() @ a.float()) * scaling).to(precision)


def merge_into(model, adapter: Adapter, precision: torch.dtype) -> dict:
    """Merge the adapter into `model`'s weights in place; every weight ends in `precision` (unadapted
    ones too, as a merged checkpoint saved in that precision would hold them). Returns the record."""
    params = dict(model.named_parameters())
    pairs = lora_pairs(adapter)
    missing = [n for n in pairs if n not in params]
    if missing:
        raise UserError(f"{adapter.folder}: the adapter targets {missing[0]}, which the base model "
                        f"{adapter.base} does not have (another base?)")
    with torch.no_grad():
        model.to(precision)
        for name, (a, b) in pairs.items():
            w = params[name]
            if tuple(w.shape) != (b.shape[0], a.shape[1]):
                raise UserError(f"{adapter.folder}: {name} is {tuple(w.shape)} in the base but the adapter is "
                                f"{(b.shape[0], a.shape[1])} (another base?)")
            w.copy_(merged_weight(w, a, b, adapter.scaling(a.shape[0]), precision))
    return adapter_record(adapter, precision, len(pairs))


def adapter_record(adapter: Adapter, precision: torch.dtype, layers: int) -> dict:
    return {"adapter": str(adapter.folder), "base": adapter.base, "merged_in": str(precision).replace("torch.", ""),
            "layers": layers, "rank": adapter.config.get("r"), "alpha": adapter.config.get("lora_alpha"),
            "scaling": adapter.scaling_rule}

