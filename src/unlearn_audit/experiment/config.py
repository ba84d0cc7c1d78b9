"""Grid configuration: methods x learning rates x dtypes x seeds, evaluated at several precisions.

A YAML file holds a `GridConfig`; `unlearn-audit grid --config FILE` runs it and `demo` runs the
embedded demo grids (demo.yaml, demo_quick.yaml next to this module).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import build_config, load_yaml
from ..errors import UserError

HERE = Path(__file__).parent


@dataclass
class GridConfig:
    """Everything a grid run needs; each list is one axis of the grid."""

    name: str = field(default="grid", metadata={"help": "run name shown in the report"})
    corpus: str | None = field(default=None, metadata={"help": "corpus folder; unset: generate the world"})
    world: dict = field(default_factory=dict, metadata={"help": "world options (see `world --help`)"})
    recipe: dict = field(default_factory=dict, metadata={"help": "tiny-model recipe options"})
    target: str | None = field(default=None, metadata={"help": "your own target model instead of the tiny one"})
    retrained: str | None = field(default=None, metadata={"help": "your own retrained model"})
    methods: list[str] = field(default_factory=lambda: ["ga_gdr", "npo_klr"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-5])
    dtypes: list[str] = field(default_factory=lambda: ["bf16"])
    seeds: list[int] = field(default_factory=lambda: [0])
    schemes: list[str] = field(default_factory=lambda: ["full", "rtn-int8-channel", "rtn-int4-g128"])
    bins_schemes: list[str] = field(default_factory=lambda: ["rtn-int4-g128"])
    unlearn: dict = field(default_factory=dict, metadata={"help": "unlearning options for every run"})
    method_overrides: dict = field(default_factory=dict, metadata={"help": "per-method unlearning options"})
    eval_limit: int | None = None
    eval_batch_size: int | None = None
    workers: int = 1

    def validate(self) -> None:
        from ..quantize import parse_scheme
        from ..unlearn.methods import resolve_method
        from ..unlearn.trainer import PRECISIONS

        if not self.methods or not self.learning_rates or not self.dtypes or not self.seeds:
            raise UserError("a grid needs at least one method, learning rate, dtype and seed")
        for m in self.methods:
            if m != "sure":
                resolve_method(m)
        bad = [d for d in self.dtypes if d not in PRECISIONS]
        if bad:
            raise UserError(f"unknown dtype(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
        if "full" not in self.schemes:
            raise UserError("schemes must include 'full' (retention is measured against full precision)")
        for s in self.schemes:
            if s != "full":
                parse_scheme(s)
        for s in self.bins_schemes:
            if not parse_scheme(s).analysable:
                raise UserError(f"bins_schemes: {s} depends on calibration data; use rtn-* or bnb-* schemes")
        unknown = set(self.method_overrides) - set(self.methods)
        if unknown:
            raise UserError(f"method_overrides names method(s) not in the grid: {', '.join(sorted(unknown))}")
        if self.workers < 1:
            raise UserError("workers must be at least 1")
        if (self.target is None) != (self.retrained is None):
            raise UserError("give both target and retrained models, or neither (the tiny ones are then trained)")


def load_grid(path: str | Path) -> GridConfig:
    """Read and validate a grid YAML file."""
    return build_config(GridConfig, load_yaml(path), source=str(path))


def demo_config(quick: bool) -> GridConfig:
    """The embedded demo grid (quick: the CI-sized one); $UNLEARN_AUDIT_DEMO_CONFIG replaces it."""
    override = os.environ.get("UNLEARN_AUDIT_DEMO_CONFIG")
    if override:
        return load_grid(override)
    return load_grid(HERE / ("demo_quick.yaml" if quick else "demo.yaml"))
