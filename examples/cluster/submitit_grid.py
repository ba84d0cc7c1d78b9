"""One grid across the machines of a cluster through submitit (`pip install -e ".[cluster]"`): each job runs one
shard into its own run folder; when all are done the shards are merged into one report.

    python examples/cluster/submitit_grid.py my_grid.yaml runs/my_grid --shards 8 --partition gpu
    python examples/cluster/submitit_grid.py my_grid.yaml runs/my_grid --shards 2 --local   # this machine

Nothing is shared between the jobs but the grid file; re-running the script resumes every shard.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def run_shard(grid: str, out: str, index: int, count: int) -> int:
    from unlearn_audit.cli import main

    return main(["grid", "--config", grid, "--shard", f"{index}/{count}", "--out", str(Path(out) / f"shard-{index}"),
                 "--quiet"])


def main() -> None:
    import submitit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("out")
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--local", action="store_true", help="run the shards as local processes (a test run)")
    args = parser.parse_args()

    executor = submitit.AutoExecutor(folder=Path(args.out) / "submitit", cluster="local" if args.local else None)
    params = {"timeout_min": args.hours * 60}
    if not args.local:
        params.update(gpus_per_node=args.gpus, slurm_partition=args.partition)
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    jobs = [executor.submit(run_shard, args.grid, args.out, i, args.shards) for i in range(args.shards)]
    codes = [job.result() for job in jobs]
    from unlearn_audit.cli import main as cli

    cli(["report", *(str(Path(args.out) / f"shard-{i}") for i in range(args.shards)), "--out",
         str(Path(args.out) / "merged")])
    print(f"shards finished with exit codes {codes}; merged report in {Path(args.out) / 'merged'}")


if __name__ == "__main__":
    main()
