"""Run a grid: world -> tiny models -> unlearn -> quantize -> evaluate (+ bins), cell by cell.

The grid is planned as a list of cells with dependencies; each cell's id is a hash of its config (which
includes the ids of the cells it depends on), so re-running the same grid finds the same cells in the
ledger and skips the finished ones. Several worker processes may run one grid together: they claim
cells through the ledger and wait for dependencies another worker is computing.

Across machines a grid runs as shards (`grid --shard I/N`), one per task of the scheduler you have (a
SLURM array, submitit, Ray; examples/cluster/): each shard runs a deterministic share of the unlearning
runs into its own run folder, with everything they depend on, and `report --out MERGED RUN...` merges the
folders. No database is shared between machines.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..evaluate.runner import EvalConfig
from ..quantize.schemes import four_bit
from ..scoring import fmt
from ..utils.arithmetic import grid_threads
from ..utils.environment import record_environment
from ..utils.interrupt import check_interrupt
from ..utils.io import atomic_write_json, atomic_write_text, read_json, sha256_json
from ..utils.threads import torch_threads
from .config import GridConfig
from .ledger import Ledger, PlannedCells, located, portable

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
def unlearn_settings(cfg: GridConfig, method: str, lr: float, dtype: str, seed: int, axes: dict | None = None,
                     own: dict | None = None) -> dict:
    """The UnlearnConfig fields of one run: grid-wide options, the extra axes' values, then the method's
    overrides; the grid's learning-rate axis wins over `unlearn.learning_rate` but not over a method override.
    `own`: the options of an explicit run (`runs:`), which win over everything."""
    from ..unlearn.config import UnlearnConfig

    overrides = cfg.method_overrides.get(method, {})
    values = {**cfg.unlearn, **(axes or {}), **overrides, "method": method, "dtype": dtype, "seed": seed,
              "learning_rate": overrides.get("learning_rate", lr), **(own or {})}
    names = {f.name for f in dataclasses.fields(UnlearnConfig)}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown unlearning option(s) in the grid: {', '.join(sorted(unknown))}")
    return values


def run_points(cfg: GridConfig) -> list[tuple[dict, str]]:
    """Every unlearning run as (its settings, the label suffix of the extra axes): the grid's explicit
    `runs`, else the product methods x dtypes x learning rates x axes x seeds."""
    if cfg.runs:
        return [(unlearn_settings(cfg, r["method"], r["learning_rate"], r["dtype"], seed, own=run_options(r)), "")
                for r in cfg.runs for seed in r["seeds"]]
    varying = [name for name, values in cfg.axes.items() if len(values) > 1]
    return [(unlearn_settings(cfg, method, lr, dtype, seed, point), "".join(f" {k}={point[k]}" for k in varying))
            for method in cfg.methods for dtype in cfg.dtypes for lr in cfg.learning_rates
            for point in axis_points(cfg) for seed in cfg.seeds]


def run_options(run: dict) -> dict:
    """An explicit run's own unlearning options (everything but its method, dtype, rate and seeds)."""
    return {k: v for k, v in run.items() if k not in ("method", "dtype", "learning_rate", "seeds")}


def axis_points(cfg: GridConfig) -> list[dict]:
    """Every combination of the extra axes' values ([{}] when there are none)."""
    points: list[dict] = [{}]
    for name, values in cfg.axes.items():
        points = [{**p, name: v} for p in points for v in values]
    return points


def degrid_cells(cfg: GridConfig) -> list[CellSpec]:
    """The cells that move `base` off its quantization grid (none without `degrid`): the dithered base, or
    the world and the fine-tune on it."""
    if not cfg.degrid:
        return []
    if "dither" in cfg.degrid:
        return [spec("model", {"role": "target", "base": cfg.base, "dither": cfg.degrid["dither"],
                               "seed": cfg.degrid.get("seed", 0), "degrid": True}, [], "de-gridded base")]
    world = spec("corpus", {"world": cfg.degrid_world(), "folder": "corpus-degrid"}, [], "de-gridding world")
    options = {k: v for k, v in cfg.degrid.items() if k != "world_seed"}
    model = spec("model", {"role": "target", "base": cfg.base, "finetune": options, "corpus": world.id, "degrid": True},
                 [world.id], "de-gridded base")
    return [world, model]


def model_cells(cfg: GridConfig, corpus: CellSpec, seed: int) -> dict[str, CellSpec]:
    """The target and retrained model cells a run of this seed starts from."""
    recipe = {**cfg.recipe, "seed": seed} if cfg.seed_scope == "all" else cfg.recipe
    tag = f" seed={seed}" if cfg.seed_scope == "all" else ""
    degrid = [c for c in degrid_cells(cfg) if c.kind == "model"]
    out = {}
    for role in ("target", "retrained"):
        own = getattr(cfg, role)
        if own:
            config = {"role": role, "path": own}
        elif cfg.base:  # the seed of fine-tuning is the data order; seed_scope 'all' re-draws it
            config = {"role": role, "base": cfg.base, "finetune": {**cfg.finetune, **({"seed": seed} if tag else {})},
                      "corpus": corpus.id, **({"base_cell": degrid[0].id} if degrid else {})}
        elif role == "retrained" and cfg.target:  # trained with the recipe the user's tiny target records
            config = {"role": role, "matched_to": cfg.target, "corpus": corpus.id}
        else:
            config = {"role": role, "recipe": recipe, "corpus": corpus.id}
        out[role] = spec("model", config, [corpus.id, *(c.id for c in degrid if "base_cell" in config)], role + tag)
    return out


def plan(cfg: GridConfig) -> list[CellSpec]:
    """All cells of the grid in a runnable order."""
    cells: list[CellSpec] = []
    corpus = spec("corpus", {"path": cfg.corpus} if cfg.corpus else {"world": cfg.world}, [], "corpus")
    cells.append(corpus)
    cells.extend(degrid_cells(cfg))
    model_seeds = cfg.seeds if cfg.seed_scope == "all" else cfg.seeds[:1]
    models = {seed: model_cells(cfg, corpus, seed) for seed in model_seeds}
    for pair in models.values():
        cells.extend(pair.values())
    runs = []
    for settings, extra in run_points(cfg):
        seed = settings["seed"]
        model_seed = seed if cfg.seed_scope == "all" else model_seeds[0]
        pair = models[model_seed]
        run = spec("unlearn", {"settings": settings, "target": pair["target"].id,
                               "retrained": pair["retrained"].id, "corpus": corpus.id},
                   [corpus.id, pair["target"].id, pair["retrained"].id],
                   f"{settings['method']} {settings['dtype']} lr={settings['learning_rate']:g}{extra} seed={seed}")
        runs.append((run, model_seed))
    cells.extend(run for run, _ in runs)
    eval_common = {"corpus": corpus.id, "limit": cfg.eval_limit, "batch_size": cfg.eval_batch_size,
                   **({"eval": cfg.eval} if cfg.eval else {}), **({"benchmarks": cfg.benchmarks} if cfg.benchmarks else {}),
                   **({"metrics": [*EvalConfig().metrics, *cfg.extra_metrics]} if cfg.extra_metrics else {}),
                   **({"runtime": cfg.runtime} if cfg.runtime != "torch" else {})}
    refs = {}
    for seed, pair in models.items():
        refs[seed] = spec("eval", {**eval_common, "model": pair["retrained"].id, "scheme": "full"},
                          [corpus.id, pair["retrained"].id], f"{pair['retrained'].label} @ full")
        cells.append(refs[seed])
    evaluated = [(m, refs[seed]) for seed, pair in models.items() for m in pair.values()]
    evaluated += [(run, refs[model_seed]) for run, model_seed in runs]
    for model, auc_ref in evaluated:
        full = auc_ref if model.id == auc_ref.config["model"] else None
        for scheme in cfg.evaluated:
            if full and scheme == "full":
                continue
            config, deps = {**eval_common, "model": model.id, "scheme": scheme, "auc_ref": auc_ref.id}, []
            if scheme in cfg.attacks:
                config.update({"metrics": cfg.attack_metrics} if cfg.attack_metrics else {})

                if scheme.startswith("cast:"):  # identity on weights already in that format: the full cell's values
                    config["full_cell"] = full.id  # schemes (full first) come before attacks
                    deps = [full.id]
            cell = spec("eval", config, [corpus.id, model.id, auc_ref.id, *deps], f"{model.label} @ {scheme}")
            full = cell if scheme == "full" else full
            cells.append(cell)
    for run, model_seed in runs:
        target = models[model_seed]["target"].id
        for scheme in cfg.bins_schemes:
            cells.append(spec("bins", {"unlearned": run.id, "target": target, "scheme": scheme, "corpus": corpus.id},
                              [run.id, target, corpus.id], f"bins {run.label} @ {scheme}"))
    decisive = decisive_ids(cells, cfg)
    return [c for c in cells if c.id in decisive] + [c for c in cells if c.id not in decisive]


def is_contrast(settings: dict) -> bool:
    """A run of the paper's contrast to pure-bf16 unlearning: fp32 weights, or SURE."""
    return settings.get("dtype") != "bf16" or settings.get("method") == "sure"


def decisive_ids(cells: list[CellSpec], cfg: GridConfig) -> set[str]:
    """The cells a first verdict needs, with everything they depend on: the first bf16 run and the first
    contrast run (fp32 or SURE), their evaluations and the target's at full precision and under the 4-bit
    schemes the verdict reads, and the retrained model at full precision (PrivLeak's reference). `plan`
    runs them first, so the verdict lines exist long before the whole grid has run (issue 35)."""
    by_id = {c.id: c for c in cells}
    runs = [c for c in cells if c.kind == "unlearn"]
    first = [next((r for r in runs if is_contrast(r.config["settings"]) is contrast), None) for contrast in (False, True)]
    chosen = {r.id for r in first if r is not None}
    if not chosen:
        return set()
    pair = next(r for r in first if r is not None).config
    target, retrained = pair["target"], pair["retrained"]
    read = {"full", *four_bit(cfg.schemes)}  # what the verdict lines read (int8 and the attacks wait)
    for c in cells:
        if c.kind != "eval" or c.config["scheme"] not in read:
            continue
        model = c.config["model"]
        if model in chosen or model == target or (model == retrained and c.config["scheme"] == "full"):
            chosen.add(c.id)
    return with_dependencies(chosen, by_id)


def with_dependencies(ids: set[str], by_id: dict[str, CellSpec]) -> set[str]:
    """`ids` and every cell they depend on, directly or not."""
    closed, stack = set(ids), list(ids)
    while stack:
        for d in by_id[stack.pop()].deps:
            if d not in closed:
                closed.add(d)
                stack.append(d)
    return closed


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N (None stays None); anything else is a one-line user error."""
    if text is None:
        return None
    index, _, count = str(text).partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise UserError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of four), not {text!r}")
    return int(index), int(count)


def shard_cells(cells: list[CellSpec], index: int, count: int) -> list[CellSpec]:
    """The share of a grid shard `index` of `count` runs: every count-th unlearning run (ordered by cell
    id, so every machine draws the same split), the cells that evaluate or analyse them, and all they
    depend on (each shard trains or loads the target and retrained models itself); shard 0 also evaluates
    the target and retrained models under every scheme and attack."""
    by_id = {c.id: c for c in cells}
    runs = sorted(c.id for c in cells if c.kind == "unlearn")
    mine = {r for k, r in enumerate(runs) if k % count == index}

    def of_runs(c: CellSpec) -> set[str]:
        return {d for d in c.deps if by_id[d].kind == "unlearn"}

    keep = set(mine) | {c.id for c in cells if c.kind in ("eval", "bins") and (of_runs(c) & mine
                                                                                 or (index == 0 and not of_runs(c)))}
    keep = with_dependencies(keep, by_id)
    return [c for c in cells if c.id in keep]


def planned_cells(cfg: GridConfig, shard: tuple[int, int] | None = None) -> list[CellSpec]:
    """The cells a run folder of this grid (or of one shard of it) holds, in runnable order."""
    cells = plan(cfg)
    return shard_cells(cells, *shard) if shard else cells


def planned_ids(cfg: GridConfig, shard: tuple[int, int] | None = None) -> set[str]:
    return {c.id for c in planned_cells(cfg, shard)}


def folder_shard(run_dir: Path) -> tuple[int, int] | None:
    """The shard a run folder holds (None: the whole grid)."""
    path = run_dir / SHARD_FILE
    if not path.is_file():
        return None
    had = read_json(path, "shard record")
    return had["index"], had["count"]


def check_runs(cells: list[CellSpec]) -> None:
    """Every unlearning run's options as `unlearn` would refuse them (a bad --lora spec, SURE with LoRA,
    ...), before the first cell runs: one line naming the run."""
    from ..unlearn.config import UnlearnConfig

    for c in cells:
        if c.kind == "unlearn":
            try:
                UnlearnConfig(**c.config["settings"]).validate()
            except UserError as exc:
                raise UserError(f"{c.label}: {exc}") from None


# ------------------------------------------------------------------------------------------- execution
class GridRunner:
    """Executes the cells of one grid in one run folder (one process; run several for parallelism)."""

    def __init__(self, cfg: GridConfig, run_dir: str | Path, show: bool = True, worker: int = 0,
                 shard: tuple[int, int] | None = None):
        cfg.validate()
        self.cfg = cfg
        self.cells = planned_cells(cfg, shard)
        check_runs(self.cells)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir / "ledger.sqlite")
        self.by_id = {c.id: c for c in self.cells}
        self.show = show
        self.worker = worker
        for i, c in enumerate(self.cells):
            self.ledger.add(c.id, c.kind, c.config, c.deps, i)
        self.decisive = decisive_ids(self.cells, cfg)
        self.told = False  # the provisional verdict was given (or every cell had run)
        self.on_decisive: Callable[[int], None] | None = None  # called once with the cells left (run_grid)

    def say(self, text: str) -> None:
        if self.show:
            print(text, flush=True)

    def result(self, cell_id: str) -> dict:
        cell = self.ledger.get(cell_id)
        if cell.status != "done":
            raise RuntimeError(f"cell {cell_id} is not finished")
        return located(self.run_dir, cell.result)

    def run(self) -> dict[str, int]:
        """Run until every cell is done or failed; returns the ledger's status counts.

        A cell that fails in this run is not retried by it (the next run retries it)."""
        attempted: set[str] = set()
        while True:
            progressed = waiting = False
            for c in self.cells:
                if c.id in attempted:
                    continue
                check_interrupt()  # a swallowed Ctrl-C stops the grid between cells
                state = self.step(c)
                if state == "waiting":
                    waiting = True
                elif state in ("ran", "failed"):
                    attempted.add(c.id)
                    progressed = True
                    self.provisional()
            if not waiting:
                return self.counts()
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
        self.ledger.finish(c.id, portable(self.run_dir, result), seconds)
        done = self.counts().get("done", 0)  # counted at finish: right with long cells and several workers
        self.say(f"[{done}/{len(self.cells)}] {c.label}: {summary(c.kind, result)} ({seconds:.1f}s){self.eta()}")
        return "ran"

    def provisional(self) -> None:
        """Once the decisive cells (`decisive_ids`) are done and others are not, hand the number of cells
        left to `on_decisive` (the CLI renders the report and prints its verdict lines as provisional), once,
        in the main process only."""
        if self.worker or self.told or not self.decisive or self.on_decisive is None:
            return
        cells = PlannedCells(self.ledger, set(self.by_id)).cells()
        if not all(c.status == "done" for c in cells if c.id in self.decisive):
            return
        self.told = True
        left = sum(c.status not in ("done", "failed") for c in cells)
        if left:
            self.on_decisive(left)

    def eta(self) -> str:
        """Cells left and the time they will take (experiment/estimate.py: every kind estimated from the
        start, by its measured seconds per unit of work once cells of that kind have finished)."""
        from .estimate import cell_work, prior_scale, seconds_left

        cells = PlannedCells(self.ledger, set(self.by_id)).cells()
        left = sum(c.status not in ("done", "failed") for c in cells)
        if not left:
            return ""
        share = self.forget_share()
        work = [(*cell_work(c.kind, self.by_id[c.id].config, share),
                 c.seconds if c.status == "done" and c.seconds is not None else None)
                for c in cells if c.status != "failed"]
        seconds, guessed = seconds_left(work, prior_scale(self.cfg.base, self.cfg.target))
        if seconds is None:  # nothing to estimate from yet
            return f"; {left} cells left"
        rough = f" (the {', '.join(sorted(guessed))} cells estimated until one is timed)" if guessed else ""
        return f"; {left} cells left, about {clock(max(1.0, seconds / max(1, self.cfg.workers)))}{rough}"

    def forget_share(self) -> float:
        """The world's forget share (the estimate's unit of unlearning work); a corpus folder's is not
        known without reading it: the world's default then."""
        from ..data.synthetic import WorldConfig

        return float(self.cfg.world.get("forget_share", WorldConfig.forget_share))

    def counts(self) -> dict[str, int]:
        """Status counts of this grid's cells only (the run folder may hold cells of older configs)."""
        return PlannedCells(self.ledger, set(self.by_id)).counts()

    def failed(self, c: CellSpec, error: str) -> str:
        self.ledger.fail(c.id, error)
        self.say(f"FAILED {c.label}: {error.splitlines()[0]}")
        return "failed"

    def outputs_present(self, cell) -> bool:
        """A finished model cell whose folder was deleted (e.g. a cleared cache) must run again."""
        path = located(self.run_dir, cell.result).get("path")
        if cell.kind in ("model", "unlearn") and path and not Path(path).is_dir():
            self.ledger.reset(cell.id)
            return False
        return True


def summary(kind: str, result: dict) -> str:
    """One-line status of a finished cell."""
    if kind == "eval":
        m = result["metrics"]
        return " ".join(f"{k}={fmt(m[k])}" for k in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak") if k in m)
    if kind == "unlearn":
        return f"epoch {result['chosen_epoch']} kept"
    if kind == "bins":
        return result["verdict"]
    if kind == "model":
        q = result.get("quality")
        return f"{result['path']}" + (f" (KnowMem exact match forget {q['forget']['exact_match']:.2f}, "
                                      f"retain {q['retain']['exact_match']:.2f})" if q else "")
    return result.get("path", "")


def clock(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{sec:02d}s"


def worker_main(cfg_dict: dict, run_dir: str, worker: int, threads: int, shard: tuple[int, int] | None) -> None:
    """Entry point of an extra worker process (spawned)."""
    from ..utils.quiet import quiet_libraries

    quiet_libraries()
    os.environ["UNLEARN_AUDIT_THREADS"] = str(threads)
    signal.signal(signal.SIGTERM, interrupt)  # the main process stops its workers with SIGTERM
    cfg = GridConfig(**cfg_dict)
    try:
        with torch_threads(threads):
            GridRunner(cfg, run_dir, show=True, worker=worker, shard=shard).run()
    except KeyboardInterrupt:  # the cell it held was given back; the main process reports
        pass


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


SHARD_FILE = "shard.json"


def run_grid(cfg: GridConfig, run_dir: str | Path, show: bool = True, shard: tuple[int, int] | None = None,
             on_decisive: Callable[[int], None] | None = None) -> dict[str, int]:
    """Run a grid (or one shard of it) with `cfg.workers` processes sharing the ledger; returns status counts.
    `on_decisive(cells_left)`: called once when the cells of a first verdict are done (`decisive_ids`)."""
    import yaml

    run_dir = Path(run_dir)
    check_shard_folder(run_dir, shard)
    runner = GridRunner(cfg, run_dir, show, shard=shard)  # validates the grid before anything is written
    runner.on_decisive = on_decisive
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    workers = max(1, cfg.workers)
    threads = grid_threads(workers)
    record_environment(run_dir, threads)
    if shard:
        atomic_write_json(run_dir / SHARD_FILE, {"index": shard[0], "count": shard[1]})
    procs = []
    ctx = multiprocessing.get_context("spawn")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches only the main process, which
    try:                                                      # then stops the workers (stop_workers)
        for w in range(1, workers):
            p = ctx.Process(target=worker_main, args=(dataclasses.asdict(cfg), str(run_dir), w, threads, shard),
                            daemon=True)
            p.start()
            procs.append(p)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        with torch_threads(threads):
            runner.run()
    except KeyboardInterrupt:
        stop_workers(procs)
        counts = runner.counts()
        print(f"\ninterrupted: {counts.get('done', 0)} of {len(runner.cells)} cells are finished and kept in "
              f"{run_dir}; run the same command again to resume", flush=True)
        raise
    for p in procs:
        p.join()
    return runner.counts()


def check_shard_folder(run_dir: Path, shard: tuple[int, int] | None) -> None:
    """A run folder holds one shard (or the whole grid): refuse to mix them."""
    was = folder_shard(run_dir)
    if (run_dir / "ledger.sqlite").is_file() and was != shard:
        def name(s):
            return "the whole grid" if s is None else f"shard {s[0]}/{s[1]}"
        raise UserError(f"{run_dir} holds {name(was)}, not {name(shard)}; give each shard its own --out")


def stop_workers(procs: list, grace: float = 10.0) -> None:
    """Ask the worker processes to stop (SIGTERM: each gives its cell back), then kill any that do not."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join()
