"""Tokens/s and wall time of the default tiny target and retrained models (fresh cache, no reuse).

    python bench/train_tiny.py [--threads 1,2] [--people 100]

Prints one row per (role, threads) and the ratio of each time to the issue's 5-minute budget.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.models.tiny import TinyRecipe
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.utils.quiet import quiet_libraries

BUDGET_S = 300


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="2", help="comma-separated thread counts to compare")
    parser.add_argument("--people", type=int, default=100)
    args = parser.parse_args()
    print(f"{'role':<10} {'threads':>7} {'params':>8} {'tokens/s':>9} {'wall s':>7} {'/5 min':>7}")
    for threads in [int(t) for t in args.threads.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["UNLEARN_AUDIT_CACHE"] = str(Path(tmp) / "cache")
            corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
            for role in ("target", "retrained"):
                started = time.perf_counter()
                folder = train_tiny(corpus, role, TinyRecipe(), threads=threads, progress=False)
                wall = time.perf_counter() - started
                info = json.loads((folder / "training.json").read_text())
                print(f"{role:<10} {threads:>7} {info['parameters'] / 1e6:>7.2f}M {info['tokens_per_second']:>9.0f} "
                      f"{wall:>7.1f} {wall / BUDGET_S:>7.2f}")


if __name__ == "__main__":
    main()
