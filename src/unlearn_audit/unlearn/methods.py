"""The method registry: a method is a forget loss plus an optional utility regularizer.

Names follow the paper and MUSE: `ga`, `ga_gdr`, `ga_klr`, `npo`, `npo_gdr`, `npo_klr` (forget loss,
then `_` and the regularizer). Adding a method takes one small file that registers its loss::

    from unlearn_audit.unlearn.methods import register_forget_loss

    @register_forget_loss("simnpo", needs_ref=False)
    def simnpo(batch, cfg):
        ...

and every combination with the registered regularizers (`simnpo`, `simnpo_gdr`, `simnpo_klr`) exists.
Each loss receives a `Batch` whose forward passes are computed lazily and at most once. A loss with
options declares them as a small dataclass beside it and registers it (`options=SimNPOOptions`); the
unlearning config is made of those dataclasses, so each option is a CLI flag and a YAML key, read as
`cfg.simnpo_beta` (a test checks that every registered dataclass is part of it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..utils.registry import Registry
from . import losses


class Batch:
    """A paired forget/retain batch with lazily computed (and cached) model and reference logits.
    `joint`: a network's forget and retain logits come from one forward pass over both batches (right-padded
    to one length; causal attention keeps each sequence's real positions as they were) instead of two:
    one larger matrix product per layer, the same loss to float rounding (--joint-pass)."""

    def __init__(self, model, ref_model, inputs: dict[str, torch.Tensor], joint: bool = False):
        self.model = model
        self.ref_model = ref_model
        self.inputs = inputs
        self.joint = joint and "retain_input_ids" in inputs
        self._joint_logits: dict[int, dict[str, torch.Tensor]] = {}

    def _logits(self, net, split: str) -> torch.Tensor:
        if self.joint:
            return self._both(net)[split]
        return net(
            input_ids=self.inputs[f"{split}_input_ids"], attention_mask=self.inputs[f"{split}_attention_mask"]
        ).logits

    def _both(self, net) -> dict[str, torch.Tensor]:
        """{split: logits} of one forward pass over the forget and the retain sequences together."""
        if id(net) not in self._joint_logits:
            ids = [self.inputs[f"{s}_input_ids"] for s in ("forget", "retain")]
            masks = [self.inputs[f"{s}_attention_mask"] for s in ("forget", "retain")]
            width = max(x.shape[1] for x in ids)
            logits = net(input_ids=torch.cat([pad_right(x, width, 0) for x in ids]),
                         attention_mask=torch.cat([pad_right(m, width, 0) for m in masks])).logits
            n = ids[0].shape[0]
            self._joint_logits[id(net)] = {"forget": logits[:n, : ids[0].shape[1]], "retain": logits[n:, : ids[1].shape[1]]}
        return self._joint_logits[id(net)]

    def labels(self, split: str) -> torch.Tensor:
        return self.inputs[f"{split}_labels"]

    def on(self, model) -> Batch:
        """The same inputs for another view of the model (fake-quantized), reusing the reference logits."""
        other = Batch(model, self.ref_model, self.inputs, self.joint)
        for name in ("forget_ref_logits", "retain_ref_logits"):
            if name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    def hidden(self, net, split: str, layer: int) -> torch.Tensor:
        """Output of decoder block `layer` (0-based) for the split's sequences (not cached: RMU only)."""
        out = net(input_ids=self.inputs[f"{split}_input_ids"], attention_mask=self.inputs[f"{split}_attention_mask"],
                  output_hidden_states=True)
        return out.hidden_states[layer + 1]

    @functools.cached_property
    def forget_logits(self) -> torch.Tensor:
        return self._logits(self.model, "forget")

    @functools.cached_property
    def retain_logits(self) -> torch.Tensor:
        return self._logits(self.model, "retain")

    @functools.cached_property
    def forget_ref_logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self._logits(self.ref_model, "forget")

    @functools.cached_property
    def retain_ref_logits(self) -> torch.Tensor:
        with torch.no_grad():
            return self._logits(self.ref_model, "retain")


def pad_right(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """Columns of `value` appended to a (rows x length) tensor up to `width`."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


LossFn = Callable[[Batch, "object"], torch.Tensor]


@dataclass(frozen=True)
class Component:
    """A registered loss term: whether it needs the frozen reference model or retain batches, and an
    optional `prepare(model, cfg)` run once before training (RMU freezes all but a few matrices)."""

    name: str
    fn: LossFn
    needs_ref: bool
    needs_retain: bool = False
    prepare: Callable | None = None
    options: type | None = None  # the dataclass of its options (fields of `UnlearnConfig`, CLI flags, YAML keys)


FORGET_LOSSES: Registry[Component] = Registry("forget loss", __package__, "@register_forget_loss")
REGULARIZERS: Registry[Component] = Registry("regularizer", __package__, "@register_regularizer")


def register_forget_loss(name: str, needs_ref: bool, needs_retain: bool = False, prepare: Callable | None = None,
                         options: type | None = None) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        FORGET_LOSSES.add(name, Component(name, fn, needs_ref, needs_retain, prepare, options))
        return fn

    return deco


def register_regularizer(name: str, needs_ref: bool, options: type | None = None) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        REGULARIZERS.add(name, Component(name, fn, needs_ref, options=options))
        return fn

    return deco


def registered_options() -> list[type]:
    """The option dataclasses of every registered loss (each once); `UnlearnConfig` is made of them."""
    return list(dict.fromkeys(c.options for c in (*FORGET_LOSSES.values(), *REGULARIZERS.values()) if c.options))


@dataclass
class NPOOptions:
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature"})


@dataclass
class RegularizerOptions:
    alpha: float = field(default=1.0, metadata={"help": "weight of the utility regularizer (GDR/KLR)"})


@register_forget_loss("ga", needs_ref=False)
def _ga(batch: Batch, cfg) -> torch.Tensor:
    return losses.ga_loss(batch.forget_logits, batch.labels("forget"))


@register_forget_loss("npo", needs_ref=True, options=NPOOptions)
def _npo(batch: Batch, cfg) -> torch.Tensor:
    return losses.npo_loss(batch.forget_logits, batch.forget_ref_logits, batch.labels("forget"), cfg.beta)


@register_regularizer("gdr", needs_ref=False, options=RegularizerOptions)
def _gdr(batch: Batch, cfg) -> torch.Tensor:
    return losses.gdr_loss(batch.retain_logits, batch.labels("retain"))


@register_regularizer("klr", needs_ref=True, options=RegularizerOptions)
def _klr(batch: Batch, cfg) -> torch.Tensor:
    return losses.klr_loss(batch.retain_logits, batch.retain_ref_logits, batch.labels("retain"))


@dataclass(frozen=True)
class Method:
    """A resolved method: forget loss, optional regularizer."""

    name: str
    forget: Component
    regularizer: Component | None

    @property
    def needs_ref(self) -> bool:
        return self.forget.needs_ref or bool(self.regularizer and self.regularizer.needs_ref)

    @property
    def needs_retain(self) -> bool:
        return self.forget.needs_retain or self.regularizer is not None


@dataclass(frozen=True)
class Wrapper:
    """A method that runs another (`--base`) differently; its defaults apply unless given."""

    name: str
    summary: str
    learning_rate: float | None = None  # its default learning rate (None: the usual default)
    saliency: str | None = None  # its default saliency level (SURE's masking)
    through: str | None = None  # its default fake-quantized schemes (quantization-aware unlearning)


WRAPPERS = {w.name: w for w in (
    Wrapper("sure", "the base method on the salient rows only, at a large learning rate (Zhang et al., ICLR 2025)",
            learning_rate=1e-4, saliency="row"),
    Wrapper("qat", "the base method's loss also through the fake-quantized model (straight-through gradients)",
            through="rtn-int4-g128"),
)}


def is_wrapper(name: str) -> bool:
    return name in WRAPPERS


def method_names() -> list[str]:
    """Every registered combination, e.g. ga, ga_gdr, ga_klr, npo, ..."""
    return [f + (f"_{r}" if r else "") for f in FORGET_LOSSES for r in ("", *REGULARIZERS)]


def resolve_method(name: str) -> Method:
    """'npo_klr' -> Method(npo, klr); unknown names are user errors listing the known ones."""
    forget, _, reg = name.partition("_")
    if forget not in FORGET_LOSSES or (reg and reg not in REGULARIZERS):
        raise UserError(f"unknown method '{name}'; choose one of {', '.join(method_names())}, or "
                        f"{' / '.join(WRAPPERS)} with --base")
    return Method(name, FORGET_LOSSES[forget], REGULARIZERS[reg] if reg else None)
