"""How long the cells a grid has left will take, for the progress line: every kind of cell gets an
estimate from the first line on, and measured times replace the guess as cells finish (issue 35).

A cell's *work* comes from its config alone (nothing is loaded), in passes over the world's texts:

- model: fine-tuning epochs x the share of the world's texts its role trains on (the target all of them,
  the retrained model all but the forget share); a model cell that trains nothing (a folder given, a
  dithered base) is a cell of its own kind, `load`, 1 unit;
- unlearn: budget epochs x forget share x passes per step (the forget batch's forward and backward 1, a
  retain term 1 more, each reference forward REF_PASS; QAT's second, fake-quantized pass doubles it). A run
  under the schedule rule is counted at its budget: its measured rate then carries how early such runs stop;
- eval: 1 per evaluation, attacks that train or sort scaled by EVAL_WORK, each extra benchmark 1 more;
- bins: 1 per pair.

Seconds per unit of work are measured per kind (sum of seconds over sum of work of its finished cells).
A kind not timed yet takes PRIOR, the seconds per unit each kind took on the developers' machine
(SmolLM2-135M, 2 cores; the study's ledgers of docs/findings.md section 14), times how much slower or
faster this grid's finished cells ran than PRIOR predicted for them. Before any cell is timed that factor
is the base model's parameter count over SmolLM2's, when the grid knows it without loading a model.
"""

from __future__ import annotations

import json
from pathlib import Path

SMOLLM2_PARAMETERS = 134_515_008
PRIOR = {"model": 90.0, "load": 10.0, "unlearn": 85.0, "eval": 14.0, "bins": 60.0}  # s per unit, SmolLM2, 2 cores
REF_PASS = 1 / 3  # a forward pass without backward, as a share of one training pass
EVAL_WORK = {"relearn": 3.0, "prune": 3.0, "probe": 3.0, "steer": 3.0}  # attack family -> evaluations' worth


def cell_work(kind: str, config: dict, forget_share: float) -> tuple[str, float]:
    """(the kind it is estimated as, its work in units of one pass over the world's texts; 0 for cells
    that take no time)."""
    if kind == "model":
        work = model_work(config, forget_share)
        return ("model", work) if work is not None else ("load", 1.0)
    if kind == "unlearn":
        return kind, unlearn_work(config["settings"], forget_share)
    if kind == "eval":
        family = str(config.get("scheme", "full")).split(":")[0]
        return kind, EVAL_WORK.get(family, 1.0) + len(config.get("benchmarks") or [])
    return kind, 1.0 if kind == "bins" else 0.0


def model_work(config: dict, forget_share: float) -> float | None:
    """Epochs x share of texts of a model cell that trains (None: it trains nothing)."""
    options = config.get("finetune") if "base" in config else config.get("recipe")
    if options is None:
        return None  # a target or retrained model given as a folder, a dithered base
    from ..models.tiny import TinyRecipe
    from ..training.finetune import FinetuneConfig

    default = FinetuneConfig.epochs if "base" in config else TinyRecipe.epochs
    share = 1 - forget_share if config.get("role") == "retrained" and not config.get("degrid") else 1.0
    return options.get("epochs", default) * share


def unlearn_work(settings: dict, forget_share: float) -> float:
    from ..unlearn.config import UnlearnConfig
    from ..unlearn.methods import is_wrapper, resolve_method

    name, factor = settings["method"], 1.0
    if is_wrapper(name):
        factor = 2.0 if name == "qat" else 1.0
        name = settings.get("base", UnlearnConfig.base)
    method = resolve_method(name)
    passes = 1.0 + (REF_PASS if method.forget.needs_ref else 0.0)
    if method.needs_retain:
        passes += 1.0 + (REF_PASS if method.regularizer and method.regularizer.needs_ref else 0.0)
    return settings.get("epochs", UnlearnConfig.epochs) * forget_share * passes * factor


def seconds_left(cells: list[tuple[str, float, float | None]], scale: float | None) -> tuple[float | None, set[str]]:
    """(seconds, kinds estimated from PRIOR) for the cells left; seconds None when no cell left could be
    estimated (a small total is an estimate too: the tiny models' cells take well under a second).
    `cells`: (kind, work, measured seconds or None for a cell not finished); `scale`: PRIOR's factor
    before anything is timed (None: unknown)."""
    done = [(k, w, s) for k, w, s in cells if s is not None and w > 0]
    rate: dict[str, list[float]] = {}
    for kind, work, seconds in done:
        rate.setdefault(kind, [0.0, 0.0])
        rate[kind][0] += seconds
        rate[kind][1] += work
    predicted = sum(PRIOR.get(k, 0.0) * w for k, w, _ in done)
    if predicted > 0 and sum(s for _, _, s in done) >= 1:
        scale = sum(s for _, _, s in done) / predicted
    total, guessed, estimated = 0.0, set(), False
    for kind, work, seconds in cells:
        if seconds is not None or work <= 0:
            continue
        if kind in rate and rate[kind][1] > 0 and rate[kind][0] >= 1:
            total += work * rate[kind][0] / rate[kind][1]
        elif scale is not None and kind in PRIOR:
            total += work * PRIOR[kind] * scale
            guessed.add(kind)
        else:
            continue
        estimated = True
    return (total if estimated else None), guessed


def prior_scale(base: str | None, target: str | None) -> float | None:
    """PRIOR's factor before any cell is timed: the model's parameters over SmolLM2's (None: unknown
    without loading, e.g. a hub id or the tiny models, whose cells take seconds)."""
    params = model_parameters(base or target)
    return params / SMOLLM2_PARAMETERS if params else None


def model_parameters(model: str | None) -> float | None:
    """Parameters of a packaged model or of a folder's config.json (attention with grouped KV heads, a
    gated MLP, the embedding tied or not), without loading it; None when unknown."""
    if not model:
        return None
    from ..models.packaged import PACKAGED, PREFIX

    if str(model).startswith(PREFIX):
        found = PACKAGED.get(str(model)[len(PREFIX):])
        return found.parameters if found else None
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        c = json.loads(path.read_text())
        h, layers, vocab, inter = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    except (KeyError, ValueError, TypeError, OSError):
        return None
    heads = c.get("num_attention_heads", 1)
    head_dim = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads", heads)
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    embedding = vocab * h * (1 if c.get("tie_word_embeddings", True) else 2)
    return float(embedding + layers * (attention + 3 * h * inter))
