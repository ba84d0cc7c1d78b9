"""Batched MUSE evaluation vs MUSE's one-item-at-a-time loop, in the same run, on the tiny world.

    python bench/eval_speed.py [--people 100] [--threads N]

Trains (or fetches from cache) the default tiny target, evaluates VerbMem, KnowMem f/r and PrivLeak
both ways, asserts identical metric values and prints the speed-up ratio (goal: >= 5x on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.cli import quiet_libraries
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.evaluate.reference import reference_metrics
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.models.tiny import train_tiny


def best_of(repeat: int, fn):
    """(fastest wall time, result) over `repeat` runs: the first run pays one-off warm-up costs."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2, help="runs per method; the fastest counts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
        model_dir = train_tiny(corpus, "target", progress=False)
        model, tok = load_model(model_dir), load_tokenizer(model_dir)
        t_ref, ref = best_of(args.repeat, lambda: reference_metrics(model, tok, corpus))
        t_ours, ours = best_of(args.repeat, lambda: evaluate_model(model, tok, corpus, EvalConfig(), show=False))
        items = len(corpus.verbmem()) + len(corpus.knowmem("forget")) + len(corpus.knowmem("retain")) + \
            sum(len(corpus.privleak(s)) for s in ("forget", "retain", "holdout"))
    batched = {**{k: ours["metrics"][k] for k in ("verbmem_f", "knowmem_f", "knowmem_r")},
               "auc": ours["details"]["privleak"]["auc"]}
    print(f"{'metric':<10} {'reference':>10} {'batched':>10}")
    for k in ("verbmem_f", "knowmem_f", "knowmem_r", "auc"):
        print(f"{k:<10} {ref[k]:>10.4f} {batched[k]:>10.4f}")
        assert abs(ref[k] - batched[k]) < 1e-9, f"{k} differs: {ref[k]} vs {batched[k]}"
    print(f"\n{items} items, {torch.get_num_threads()} threads")
    print(f"MUSE per-item loop: {t_ref:7.2f} s (best of {args.repeat})")
    print(f"batched:            {t_ours:7.2f} s (best of {args.repeat})")
    print(f"speed-up:           {t_ref / t_ours:7.2f}x (identical metric values)")


if __name__ == "__main__":
    main()
