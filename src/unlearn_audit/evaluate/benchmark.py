"""Benchmarks behind one registry: MUSE, TOFU and WMDP each declare what they measure, and everything
above them (`eval`, `audit`, their scorecards and verdicts) asks the benchmark, never MUSE by name.

A benchmark declares
- `metrics`: what it computes by default, in table order, with a label each; `known_metrics` adds the
  opt-in ones (`Metric.optional`: computed only when asked for by name, so no default list, table or
  scorecard grows a column for them);
- `knowledge`: the metrics that say how well a model knows the forget set, on a 0-100 scale (retained
  shares and recovery are computed on these: `unlearn_audit.scoring`);
- `utility`: the metric whose ratio to the target's is "utility kept";
- `parts`: the corpus folder it reads (MUSE: the corpus root; TOFU: `tofu/`; WMDP: `wmdp/`), so a corpus
  speaks a benchmark when its parts are there (`benchmarks_in`);
- a reference: what the retrained (never-saw-the-forget-set) model contributes to the others' scores
  (MUSE: the AUC PrivLeak is relative to; TOFU: the truth ratios forget quality compares against).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils.io import sha256_files
from ..utils.registry import Registry


@dataclass(frozen=True)
class Metric:
    """One metric as every table, plot and scorecard shows it, declared once beside its benchmark:
    its label, what unlearning should do to it (`goal`: 'down' for the forget set's knowledge, 'up' for a
    score that rises as the model stops telling a fact from its perturbations, 'keep' for utility,
    'reference' for a score relative to the retrained model: PrivLeak 0, forget quality 1) and its scale
    (a 0-1 fraction, else x100); `optional`: opt-in, computed only when asked for by name."""

    label: str
    goal: str
    fraction: bool = False
    optional: bool = False


class Benchmark:
    """Base of every benchmark (see the module docstring); one subclass per file, registered by name."""

    name: str = ""
    title: str = ""
    source: str = ""
    parts: str = ""  # corpus sub-folder holding the benchmark's files ("" = the corpus root)
    specs: dict[str, Metric] = {}  # metric -> its declaration, in table order
    knowledge: tuple[str, ...] = ()
    utility: str = ""
    reference_metric: str | None = None  # the metric whose value on the retrained model is fixed by definition
    forget_items: dict[str, str] = {}  # knowledge metric -> the corpus part of forget items it reads

    @property
    def metrics(self) -> tuple[str, ...]:
        """The default metrics, in table order (what every table and scorecard shows)."""
        return tuple(k for k, m in self.specs.items() if not m.optional)

    @property
    def known_metrics(self) -> tuple[str, ...]:
        """Every metric a user may ask for: the defaults, then the opt-in ones."""
        return tuple(self.specs)

    @property
    def labels(self) -> dict[str, str]:
        return {k: m.label for k, m in self.specs.items()}

    @property
    def fractions(self) -> tuple[str, ...]:
        """The metrics reported on a 0-1 scale (the others: x100)."""
        return tuple(k for k, m in self.specs.items() if m.fraction)

    def label(self, metric: str) -> str:
        return self.labels.get(metric, metric)

    def present(self, corpus) -> bool:
        """Whether the corpus holds this benchmark's files."""
        raise NotImplementedError

    def check(self, corpus, metrics: list[str]) -> None:
        """Parse every corpus part the metrics will read (one-line error naming the file, item, field)."""
        raise NotImplementedError

    def check_setup(self, metrics: list[str], reference_model: bool, scheme: str) -> None:
        """Refuse, before any model is loaded, metrics this run cannot compute (a missing reference model, a
        scheme they cannot run on)."""

    def check_model(self, model, metrics: list[str]) -> None:
        """Refuse, before any metric is evaluated, metrics the loaded model cannot be evaluated on."""

    def retain_answers(self, eval_dir: Path, tokenizer, cfg) -> list[dict] | None:
        """The model's own answers to the retain questions as its evaluation in `eval_dir` logged them, each
        with its prompt and the true answer ({prompt, answer, gold}); None where the benchmark generates
        none (multiple choice) or the log is absent (`evaluate.fluency`)."""
        return None

    def chance(self, corpus, metric: str) -> float | None:
        """A knowledge metric's score by guessing (multiple choice), None where guessing has no fixed score."""
        return None

    def wants_reference(self, metrics: list[str]) -> bool:
        """Whether these metrics use what the retrained model contributes (`reference`)."""
        return self.reference_metric in metrics

    def parts_hash(self, corpus) -> str:
        """Hash of the files this benchmark reads (what a stored evaluation must match)."""
        folder = corpus.root / self.parts
        return sha256_files(sorted(folder.rglob("*.json")), corpus.root) if self.parts else corpus.content_hash

    def reference(self, model, tokenizer, corpus, cfg, show: bool):
        """The reference measured on the retrained model (`eval --retrained`)."""
        return None

    def run_metric(self, name: str, model, tokenizer, corpus, cfg, ref, show: bool):
        """(value, extra fields, {file name: content}) of one metric."""
        raise NotImplementedError

    def default_reference(self, corpus):
        """The reference (a dataclass with a `source`) without a retrained model (None: none needed)."""
        return None

    def reference_from(self, details: dict):
        """The reference read from the retrained model's own evaluation details."""
        return None

    def reference_value(self) -> Any:
        """The value `reference_metric` takes on the retrained model itself (PrivLeak 0, forget quality 1)."""
        return None


BENCHMARKS: Registry[Benchmark] = Registry("benchmark", __package__, "@register_benchmark")


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: one instance of the benchmark, found by its `name` (a file of this folder)."""
    BENCHMARKS.add(cls.name, cls())
    return cls


def benchmark_names() -> list[str]:
    return BENCHMARKS.names()


def get_benchmark(name: str) -> Benchmark:
    return BENCHMARKS.get(name)


def benchmarks_in(corpus) -> list[str]:
    """The benchmarks whose files the corpus holds (the built-in world holds all three)."""
    return [name for name, b in BENCHMARKS.items() if b.present(corpus)]


def resolve_benchmark(name: str | None, corpus) -> Benchmark:
    """`name`, checked against the corpus, or ('auto'/None) the one the corpus holds (MUSE first)."""
    found = benchmarks_in(corpus)
    if name in (None, "", "auto"):
        if not found:
            raise UserError(f"{corpus.root} holds no benchmark's files: MUSE (knowmem/, verbmem/, privleak/), "
                            "TOFU (tofu/forget.json ...) or WMDP (wmdp/forget/*.json); see docs/benchmarks.md")
        return get_benchmark(found[0])
    bench = get_benchmark(name)
    if name not in found:
        hint = (" (a world written before TOFU/WMDP support: write it again with `unlearn-audit world`)"
                if (Path(corpus.root) / "world").is_dir() else "")
        raise UserError(f"{corpus.root} holds no {bench.title} files (expected under {bench.parts or 'the corpus root'}/)"
                        f"{hint}; it holds: {', '.join(found) or 'none'}")
    return bench
