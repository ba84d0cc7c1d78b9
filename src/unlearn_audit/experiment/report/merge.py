"""Merging the run folders of one grid's shards (one per scheduler task) into one run folder.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ...utils.io import atomic_write_json, atomic_write_text, read_json
from ..ledger import Ledger, located


def merge_run_folders(out: str | Path, runs: list[str | Path]) -> Path:
    """`report --out OUT RUN...`: one run folder holding the cells of several (the shards of one grid):
    every finished or failed cell, the grid's config and the bins plots; refuses folders of other grids."""
    import dataclasses
    import shutil

    from ..config import load_grid
    from ..grid import plan

    out, runs = Path(out), [Path(r) for r in runs]
    configs = []
    for r in runs:
        if not (r / "ledger.sqlite").is_file() or not (r / "config.yaml").is_file():
            raise UserError(f"{r} is not a run folder of a grid (no ledger.sqlite or config.yaml)")
        if out.resolve() == r.resolve():
            raise UserError(f"--out {out} is one of the folders to merge; choose a new folder")
        configs.append(load_grid(r / "config.yaml"))
    if any(c != configs[0] for c in configs[1:]):
        raise UserError("the folders hold different grids (their config.yaml differ); merge shards of one grid only")
    order = {c.id: i for i, c in enumerate(plan(configs[0]))}
    merged = Ledger(out / "ledger.sqlite")
    for r in runs:
        for cell in Ledger(r / "ledger.sqlite").cells():
            if cell.status in ("done", "failed"):  # in the grid's own order, as one process would list them
                here = dataclasses.replace(cell, result=located(r.resolve(), cell.result) if cell.result else None)
                merged.copy_in(here, order.get(cell.id, len(order)))  # models stay in the shard's folder
        if (r / "bins").is_dir():
            shutil.copytree(r / "bins", out / "bins", dirs_exist_ok=True)
    atomic_write_text(out / "config.yaml", (runs[0] / "config.yaml").read_text())
    merge_environments(out, runs)
    return out


def merge_environments(out: Path, runs: list[Path]) -> None:
    """The merged folder's environment.json: each distinct environment the shards were computed in."""
    from ...utils.environment import ENVIRONMENT_FILE, numeric_part

    envs: list[dict] = []
    for r in runs:
        path = r / ENVIRONMENT_FILE
        for env in read_json(path)["environments"] if path.is_file() else []:
            if all(numeric_part(env) != numeric_part(e) for e in envs):
                envs.append(env)
    if envs:
        atomic_write_json(out / ENVIRONMENT_FILE, {"environments": envs})
