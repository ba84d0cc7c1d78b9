"""Run a grid: world -> tiny models -> unlearn -> quantize -> evaluate (+ bins), cell by cell.

The grid is planned as a list of cells with dependencies; each cell's id is a hash of its config (which
includes the ids of the cells it depends on), so re-running the same grid finds the same cells in the
ledger and skips the finished ones. Several worker processes may run one grid together: they claim
cells through the ledger and wait for dependencies another worker is computing.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..utils.io import atomic_write_text, sha256_json
from ..utils.threads import default_threads, torch_threads
from .config import GridConfig
from .ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellSpec:
    id: str
    kind: str
    config: dict
    deps: list[str]
    label: str


def cell_id(kind: str, config: dict) -> str:
    return f"{kind}-{sha256_json(config)[:12]}"


def spec(kind: str, config: dict, deps: list[str], label: str) -> CellSpec:
    return CellSpec(cell_id(kind, config), kind, config, deps, label)


# ------------------------------------------------------------------------------------------- planning
def unlearn_settings(cfg: GridConfig, method: str, lr: float, dtype: str, seed: int) -> dict:
    """The UnlearnConfig fields of one run: grid-wide options, then the method's overrides; the grid's
    learning-rate axis wins over `unlearn.learning_rate` but not over a method override."""
    from ..unlearn.trainer import UnlearnConfig

    overrides = cfg.method_overrides.get(method, {})
    values = {**cfg.unlearn, **overrides, "method": method, "dtype": dtype, "seed": seed,
              "learning_rate": overrides.get("learning_rate", lr)}  # the grid axis, unless the method overrides it
    names = {f.name for f in dataclasses.fields(UnlearnConfig)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown unlearning option(s) in the grid: {', '.join(sorted(unknown))}")
    return values


def plan(cfg: GridConfig) -> list[CellSpec]:
    """All cells of the grid in a runnable order."""
    cells: list[CellSpec] = []
    corpus = spec("corpus", {"path": cfg.corpus} if cfg.corpus else {"world": cfg.world}, [], "corpus")
    cells.append(corpus)
    models = {}
    for role in ("target", "retrained"):
        own = getattr(cfg, role)
        config = {"role": role, "path": own} if own else {"role": role, "recipe": cfg.recipe, "corpus": corpus.id}
        models[role] = spec("model", config, [corpus.id], role)
        cells.append(models[role])
    runs = []
    for method in cfg.methods:
        for dtype in cfg.dtypes:
            for lr in cfg.learning_rates:
                for seed in cfg.seeds:
                    settings = unlearn_settings(cfg, method, lr, dtype, seed)
                    run = spec("unlearn", {"settings": settings, "target": models["target"].id,
                                           "retrained": models["retrained"].id, "corpus": corpus.id},
                               [corpus.id, models["target"].id, models["retrained"].id],
                               f"{method} {dtype} lr={settings['learning_rate']:g} seed={seed}")
                    runs.append(run)
    cells.extend(runs)
    eval_common = {"corpus": corpus.id, "limit": cfg.eval_limit, "batch_size": cfg.eval_batch_size}
    auc_ref = spec("eval", {**eval_common, "model": models["retrained"].id, "scheme": "full"},
                   [corpus.id, models["retrained"].id], "retrained @ full")
    cells.append(auc_ref)
    for model in [models["target"], models["retrained"], *runs]:
        for scheme in cfg.schemes:
            if model is models["retrained"] and scheme == "full":
                continue
            cells.append(spec("eval", {**eval_common, "model": model.id, "scheme": scheme, "auc_ref": auc_ref.id},
                              [corpus.id, model.id, auc_ref.id], f"{model.label} @ {scheme}"))
    for run in runs:
        for scheme in cfg.bins_schemes:
            cells.append(spec("bins", {"unlearned": run.id, "target": models["target"].id, "scheme": scheme},
                              [run.id, models["target"].id], f"bins {run.label} @ {scheme}"))
    return cells


# ------------------------------------------------------------------------------------------- execution
class GridRunner:
    """Executes the cells of one grid in one run folder (one process; run several for parallelism)."""

    def __init__(self, cfg: GridConfig, run_dir: str | Path, show: bool = True, worker: int = 0):
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir / "ledger.sqlite")
        self.cells = plan(cfg)
        self.by_id = {c.id: c for c in self.cells}
        self.show = show
        self.worker = worker
        for i, c in enumerate(self.cells):
            self.ledger.add(c.id, c.kind, c.config, c.deps, i)

    def say(self, text: str) -> None:
        if self.show:
            print(text, flush=True)

    def result(self, cell_id: str) -> dict:
        cell = self.ledger.get(cell_id)
        if cell.status != "done":
            raise RuntimeError(f"cell {cell_id} is not finished")
        return cell.result

    def run(self) -> dict[str, int]:
        """Run until every cell is done or failed; returns the ledger's status counts.

        A cell that fails in this run is not retried by it (the next run retries it)."""
        attempted: set[str] = set()
        while True:
            progressed = waiting = False
            for c in self.cells:
                if c.id in attempted:
                    continue
                state = self.step(c)
                if state == "waiting":
                    waiting = True
                elif state in ("ran", "failed"):
                    attempted.add(c.id)
                    progressed = True
            if not waiting:
                return self.ledger.counts()
            if not progressed:
                time.sleep(0.5)

    def step(self, c: CellSpec) -> str:
        """Try to run one cell: 'skip' (finished), 'waiting' (deps or another worker), 'ran' or 'failed'."""
        from .cells import run_cell

        cell = self.ledger.get(c.id)
        if cell.status == "done" and self.outputs_present(cell):
            return "skip"
        deps = [self.ledger.get(d) for d in c.deps]
        if any(d.status == "failed" for d in deps):
            self.ledger.fail(c.id, "a cell it depends on failed")
            return "failed"
        if not all(d.status == "done" for d in deps) or not self.ledger.claim(c.id):
            return "waiting"
        position = self.ledger.counts().get("done", 0) + 1
        started = time.time()
        try:
            result = run_cell(self, c)
        except KeyboardInterrupt:
            self.ledger.release(c.id)
            raise
        except UserError as exc:
            return self.failed(c, str(exc))
        except Exception as exc:  # a bug: keep the traceback in the ledger and go on with the other cells
            return self.failed(c, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        seconds = time.time() - started
        self.ledger.finish(c.id, result, seconds)
        self.say(f"[{position}/{len(self.cells)}] {c.label}: {summary(c.kind, result)} ({seconds:.1f}s)")
        return "ran"

    def failed(self, c: CellSpec, error: str) -> str:
        self.ledger.fail(c.id, error)
        self.say(f"FAILED {c.label}: {error.splitlines()[0]}")
        return "failed"

    def outputs_present(self, cell) -> bool:
        """A finished model cell whose folder was deleted (e.g. a cleared cache) must run again."""
        path = (cell.result or {}).get("path")
        if cell.kind in ("model", "unlearn") and path and not Path(path).is_dir():
            self.ledger.reset(cell.id)
            return False
        return True


def summary(kind: str, result: dict) -> str:
    """One-line status of a finished cell."""
    if kind == "eval":
        m = result["metrics"]
        return " ".join(f"{k}={fmt(m.get(k))}" for k in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak"))
    if kind == "unlearn":
        return f"epoch {result['chosen_epoch']} kept"
    if kind == "bins":
        return result["verdict"]
    if kind == "model":
        q = result.get("quality")
        return f"{result['path']}" + (f" (KnowMem exact match forget {q['forget']['exact_match']:.2f}, "
                                      f"retain {q['retain']['exact_match']:.2f})" if q else "")
    return result.get("path", "")


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def worker_main(cfg_dict: dict, run_dir: str, worker: int, threads: int) -> None:
    """Entry point of an extra worker process (spawned)."""
    from ..cli import quiet_libraries

    quiet_libraries()
    os.environ["UNLEARN_AUDIT_THREADS"] = str(threads)
    cfg = GridConfig(**cfg_dict)
    with torch_threads(threads):
        GridRunner(cfg, run_dir, show=True, worker=worker).run()


def run_grid(cfg: GridConfig, run_dir: str | Path, show: bool = True) -> dict[str, int]:
    """Run a grid with `cfg.workers` processes sharing the ledger; returns status counts."""
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    workers = max(1, cfg.workers)
    threads = max(1, default_threads() // workers)
    runner = GridRunner(cfg, run_dir, show)
    procs = []
    ctx = multiprocessing.get_context("spawn")
    for w in range(1, workers):
        p = ctx.Process(target=worker_main, args=(dataclasses.asdict(cfg), str(run_dir), w, threads), daemon=True)
        p.start()
        procs.append(p)
    try:
        with torch_threads(threads):
            counts = runner.run()
    finally:
        for p in procs:
            p.join(timeout=None if not p.is_alive() else 3600)
    return runner.ledger.counts() if procs else counts
