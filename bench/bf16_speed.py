"""Pure-bf16 unlearning: native bf16 arithmetic vs emulated (bf16 weights and state, fp32 matmuls) vs fp32.

    python bench/bf16_speed.py [--epochs 5] [--threads 1,2]

Runs the whole `unlearn()` (HF Trainer, checkpoints, saving) on the demo's target for GA_GDR and
NPO_KLR (which also runs a bf16 reference model), once per arithmetic and thread count, and prints the
wall time and the ratio native / emulated. The update itself is compared in tests/training/test_bf16.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.models.tiny import TinyRecipe
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.unlearn import UnlearnConfig, unlearn
from unlearn_audit.utils.quiet import quiet_libraries
from unlearn_audit.utils.threads import torch_threads

RUNS = [("bf16", "native"), ("bf16", "emulated"), ("fp32", "auto")]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--methods", default="ga_gdr,npo_klr")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=100), Path(tmp) / "world"))
        target = train_tiny(corpus, "target", TinyRecipe(epochs=12, weight_decay=0.1), progress=False)
        print(f"{'method':<8} {'threads':>7} | " + " | ".join(f"{d} {a:>8}" for d, a in RUNS) + " | native/emulated")
        for method in args.methods.split(","):
            for threads in map(int, args.threads.split(",")):
                seconds = []
                for dtype, arithmetic in RUNS:
                    cfg = UnlearnConfig(method=method, dtype=dtype, arithmetic=arithmetic, learning_rate=3e-5,
                                        epochs=args.epochs, batch_size=4)
                    with torch_threads(threads):
                        started = time.perf_counter()
                        unlearn(target, corpus, cfg, Path(tmp) / f"{method}-{dtype}-{arithmetic}-{threads}",
                                show=False)
                        seconds.append(time.perf_counter() - started)
                cells = " | ".join(f"{s:>13.1f}s" for s in seconds)
                print(f"{method:<8} {threads:>7} | {cells} | {seconds[0] / seconds[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
