"""Seconds per attack family on a tiny pair (the target, a GA_GDR-unlearned model, the retrained control):
what one attack adds to an audit once the full-precision evaluations are done.

    python bench/attack_cost.py [--threads 2] [--attacks prompt:few-shot probe:linear ...]

Each family is audited alone into the same folder, so the three models' full-precision evaluations are
computed once (first, timed separately) and every later line is the family's own cost: its evaluation of
the unlearned model, the target and the retrained control (goal: <= 30 s per family).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.experiment.audit import AuditConfig, audit
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.unlearn.trainer import UnlearnConfig, unlearn
from unlearn_audit.utils.quiet import quiet_libraries

FAMILIES = ["prompt:few-shot", "prompt:paraphrase", "prompt:prefix:name=role-play", "probe:logit-lens",
            "probe:linear", "steer:orthogonalize", "quant:rtn-int4-g128"]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attacks", nargs="+", default=FAMILIES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
        target, retrained = (train_tiny(corpus, role, progress=False) for role in ("target", "retrained"))
        unlearned = unlearn(target, corpus, UnlearnConfig(method="ga_gdr", learning_rate=2e-4, epochs=3, dtype="fp32"),
                            Path(tmp) / "ga_gdr", show=False)
        out = Path(tmp) / "audit"

        def run(attacks: list[str]) -> tuple[float, dict]:
            cfg = AuditConfig(attacks=attacks, metrics=["verbmem_f", "knowmem_f", "knowmem_r"], device="cpu")
            started = time.perf_counter()
            report = audit(str(target), str(unlearned), corpus, cfg, str(retrained), out, show=False, say=lambda _: None)
            return time.perf_counter() - started, report

        first, _ = run(["cast:bf16"])
        print(f"{torch.get_num_threads()} threads; tiny pair on the {args.people}-people world")
        print(f"full-precision evaluations of the three models (and cast:bf16): {first:.1f} s")
        print(f"{'attack':<32}{'seconds':>10}{'retained':>10}{'recovery':>10}{'control gain':>14}")
        for attack in args.attacks:
            seconds, report = run([attack])
            row = report["attacks"][0]

            def pct(x):
                return "-" if x is None else f"{100 * x:.0f}%"

            print(f"{attack:<32}{seconds:>10.1f}{pct(row['retained']):>10}{pct(row['recovery']):>10}"
                  f"{pct(row['control_gain']):>14}")


if __name__ == "__main__":
    main()
