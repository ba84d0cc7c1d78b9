"""Attack names: `family:positional:...:key=value,key=value`, parsed against each family's parameters.

    quant:rtn-int4-g128   cast:bf16   prune:magnitude:0.3   noise:rel=0.05
    relearn:retain:steps=20,lr=1e-5   relearn:forget-part:share=0.1,steps=20
    prompt:few-shot:k=5   prompt:paraphrase   prompt:prefix:name=role-play
    probe:logit-lens   probe:linear   steer:orthogonalize:layer=4

A family registers a class with `@register_attack`; its `params` declare name, type, default and a
check, so a wrong name, a missing value or an out-of-range one is a one-line user error that says what
the family accepts. Presets (`deploy`, `all`) expand to lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils.registry import Registry


@dataclass(frozen=True)
class Param:
    """One parameter of an attack family."""

    name: str
    type: Callable[[str], Any]
    default: Any = None
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""  # what `check` demands, for the error message
    positional: bool = False
    keyed_at_default: bool = True  # False for a parameter added later: at its default it stays out of the key,
    # so results cached under the family's earlier keys stay valid


@dataclass(frozen=True)
class Attack:
    """A parsed attack: the family's class and its parameter values.

    `name` is what the user wrote (labels in tables); `key` spells out every parameter (folder names,
    resume identity), so `prune:magnitude:0.3` and `prune:magnitude:share=0.3` share their results."""

    name: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        unkeyed = {p.name: p.default for p in self.impl.params if not p.keyed_at_default}
        return ":".join([self.family, *(f"{k}={v}" for k, v in self.params.items()
                                        if not (k in unkeyed and v == unkeyed[k]))])

    @property
    def impl(self):
        return FAMILIES[self.family]

    @property
    def trains(self) -> bool:
        """Relearning trains a new model; the other families transform the weights they load."""
        return self.impl.trains

    def __str__(self) -> str:
        return self.name


@dataclass
class Context:
    """What an attack needs to load a model: loading options, dtype/device to run in, the corpus (GPTQ/AWQ
    calibrate on its retain texts; relearning trains on it) and a folder for what it must keep."""

    corpus: Any
    load: Any = None
    dtype: str = "fp32"
    device: str | None = None
    tokenizer: Any = None
    show: bool = True


class AttackFamily:
    """Base of every family. Weight transforms override `transform` (in place, on the loaded model) or
    `load`; training families set `trains` and override `train`."""

    family: str = ""
    params: list[Param] = []
    usage: str = ""
    source: str = ""  # where the attack comes from, for docs and the scorecard
    trains = False
    changes_prompts = False  # the questions change, not the weights: the baseline stays the standard prompts
    reads_states = False  # a probe: `measure` reads the hidden states instead of the benchmark's metrics

    @classmethod
    def validate(cls, attack: Attack) -> None:
        """Checks that involve several parameters (single ones are checked by their Param)."""

    @classmethod
    def bins_scheme(cls, attack: Attack) -> str | None:
        """The scheme under which `bins` forecasts this attack from the weights alone, if any."""
        return None

    @classmethod
    def missing(cls, attack: Attack) -> str | None:
        """Why this attack cannot run here (a library is missing), or None."""
        return None

    @classmethod
    def check_corpus(cls, attack: Attack, corpus, bench) -> None:
        """Refuse, before any model is loaded, an attack the corpus cannot support (one-line UserError)."""

    @classmethod
    def reads_config(cls, attack: Attack) -> bool:
        """Whether `check_model` needs the model's config (loaded once, before any evaluation)."""
        return "layer" in attack.params

    @classmethod
    def check_model(cls, attack: Attack, config) -> None:
        """Refuse, from the model's config alone, a `layer` parameter beyond the model's blocks."""
        layer, layers = attack.params.get("layer"), getattr(config, "num_hidden_layers", None)
        if layer is not None and isinstance(layers, int) and layer >= layers:
            raise UserError(f"{attack.name}: layer {layer} is out of range; the model has blocks 0-{layers - 1}")

    @classmethod
    def load(cls, spec: str, attack: Attack, ctx: Context):
        """The model at `spec` under the attack, ready to evaluate."""
        from ..models.loading import load_model

        model = load_model(spec, ctx.dtype, ctx.load, ctx.device)
        if not (cls.changes_prompts or cls.reads_states):  # those keep the weights as they are
            cls.transform(model, attack)
        return model

    @classmethod
    def transform(cls, model, attack: Attack) -> None:
        raise NotImplementedError


FAMILIES: Registry[type[AttackFamily]] = Registry("attack family", __package__, "@register_attack")


def register_attack(cls: type) -> type:
    """Class decorator: an attack family, found by its `family` name (a file of this folder)."""
    FAMILIES.add(cls.family, cls)
    return cls


def families() -> list[str]:
    return FAMILIES.names()


def _convert(fam: str, p: Param, text: str) -> Any:
    try:
        value = p.type(text)
    except (TypeError, ValueError):
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or not p.check(value):
        raise UserError(f"{fam}: {p.name}={text!r} is invalid; {p.name} must be {p.rule or p.type.__name__}")
    return value


def parse_attack(spec: str) -> Attack:
    """`prune:magnitude:0.3` -> Attack('prune:magnitude:0.3', 'prune', {'method': 'magnitude', 'share': 0.3})."""
    name = spec.strip()
    fam, *parts = name.split(":")
    if fam not in FAMILIES:
        raise UserError(f"unknown attack '{name}'; families: {', '.join(sorted(FAMILIES))} "
                        f"(e.g. quant:rtn-int4-g128, cast:bf16, prune:magnitude:0.3, relearn:retain:steps=20, prompt:few-shot:k=5)")
    params: list[Param] = FAMILIES[fam].params
    by_name = {p.name: p for p in params}
    positional = [p for p in params if p.positional]
    given: dict[str, str] = {}
    for i, part in enumerate(parts):
        if "=" not in part:
            if i >= len(positional) or any("=" in q for q in parts[:i]):
                raise UserError(f"{name}: unexpected '{part}'; {FAMILIES[fam].usage}")
            given[positional[i].name] = part
            continue
        for item in filter(None, part.split(",")):
            key, _, value = item.partition("=")
            if key not in by_name:
                raise UserError(f"{name}: unknown parameter '{key}'; {FAMILIES[fam].usage}")
            if key in given:
                raise UserError(f"{name}: '{key}' is given twice")
            given[key] = value
    values = {}
    for p in params:
        if p.name in given:
            values[p.name] = _convert(name, p, given[p.name])
        elif p.default is None:
            raise UserError(f"{name}: '{p.name}' is required; {FAMILIES[fam].usage}")
        else:
            values[p.name] = p.default
    attack = Attack(name, fam, values)
    FAMILIES[fam].validate(attack)
    return attack


def as_attack(name: str) -> Attack:
    """An attack name, or a bare quantization scheme (`rtn-int4-g128` means `quant:rtn-int4-g128`)."""
    return parse_attack(name if ":" in name else f"quant:{name}")


def target_reference(name: str) -> str:
    """Where the target's knowledge is measured for a column: under the same weight transform, but at
    full precision for relearning (which degrades every model at a harmful learning rate)."""
    return "full" if name != "full" and as_attack(name).trains else name


def load_attacked(spec: str, attack: Attack | None, ctx: Context, work: Path):
    """The model at `spec` as it is (attack None) or under `attack`; relearning attacks train into `work`
    (cached there, resumed after a kill)."""
    from ..models.loading import load_model

    if attack is None:
        return load_model(spec, ctx.dtype, ctx.load, ctx.device)
    if attack.trains:
        folder = attack.impl.train(spec, attack, ctx, work)
        return load_model(folder, ctx.dtype, ctx.load, ctx.device)
    return attack.impl.load(spec, attack, ctx)


def runtime_scheme(attack: Attack) -> str | None:
    """The gguf-* scheme llama.cpp runs itself for a quant attack, else None."""
    from ..quantize.llamacpp import runs_scheme

    return attack.params["scheme"] if attack.family == "quant" and runs_scheme(attack.params["scheme"]) else None


def load_in_runtime(spec, attack: Attack | None, ctx: Context, work: Path, runtime: str = "torch",
                    llama_work: Path | None = None, fingerprint: str | None = None):
    """The model at `spec` under `attack` where it runs: with runtime "llama.cpp", the model as it is and its
    gguf-* quantizations in llama.cpp itself (files kept in `llama_work`); every other attack, and every model
    with runtime "torch", through `load_attacked` on its weights."""
    scheme = "full" if attack is None else runtime_scheme(attack)
    if runtime != "llama.cpp" or scheme is None:
        return load_attacked(spec, attack, ctx, work)
    from ..quantize.llamacpp import runtime_model

    return runtime_model(spec, scheme, llama_work, fingerprint=fingerprint, corpus=ctx.corpus)


PRESETS: dict[str, list[str]] = {
    # what models are served in today (docs/quantization.md): llama.cpp's Q4_K_M and Q8_0 files (Ollama, LM
    # Studio), bitsandbytes NF4 (QLoRA-style loading), AWQ int4, FP8 and NVFP4 (vLLM, TensorRT-LLM)
    "deploy": ["quant:gguf-q4_k_m", "quant:gguf-q8_0", "quant:bnb-nf4", "quant:awq-int4-g128", "quant:fp8-e4m3",
               "quant:nvfp4"],
    # the quantizers of Zhang et al. (ICLR 2025) and the 16-bit casts: the `deploy` preset until 2026-12-06
    "paper": ["quant:rtn-int8-channel", "quant:rtn-int4-g128", "quant:bnb-nf4", "quant:bnb-fp4",
              "quant:gptq-int4-g128", "cast:bf16", "cast:fp16"],
    "quick": ["quant:rtn-int8-channel", "quant:rtn-int4-g128", "cast:bf16", "prune:magnitude:0.3",
              "relearn:retain"],
}
PRESETS["prompts"] = ["prompt:few-shot", "prompt:paraphrase", "prompt:prefix:name=role-play"]
PRESETS["hidden"] = ["probe:logit-lens", "probe:linear", "steer:orthogonalize"]
PRESETS["all"] = [*PRESETS["deploy"], *PRESETS["paper"], "prune:magnitude:0.3", "noise:rel=0.05", "relearn:retain",
                  "relearn:forget-part"]  # without repeats (parse_attacks)


def parse_attacks(text: str | list[str], say: Callable[[str], None] = print) -> list[Attack]:
    """A comma-free list (CLI: separated by spaces or ';') or YAML list of attacks and presets, in order,
    without repeats. Quantizers of presets whose library is missing are skipped with a note; one named
    explicitly is an error (it was asked for)."""
    items = text.replace(";", " ").split() if isinstance(text, str) else list(text)
    out: list[Attack] = []
    for item in items:
        if item in PRESETS:
            for spec in PRESETS[item]:
                attack = parse_attack(spec)
                missing = attack.impl.missing(attack)
                if missing:
                    say(f"note: preset '{item}' skips {spec} ({missing})")
                    continue
                out.append(attack)
            continue
        attack = parse_attack(item)
        missing = attack.impl.missing(attack)
        if missing:
            raise UserError(f"{attack.name}: {missing}")
        out.append(attack)
    unique: dict[str, Attack] = {}
    for a in out:
        unique.setdefault(a.key, a)
    if not unique:
        raise UserError("no attack to run; e.g. --attacks deploy, or --attacks 'quant:rtn-int4-g128 cast:bf16'")
    return list(unique.values())
