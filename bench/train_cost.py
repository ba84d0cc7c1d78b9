"""Seconds per optimizer step of `finetune` and of unlearning methods on any model, to size a real run.

    python bench/train_cost.py --model smollm2 --corpus ../shared/muse/news [--methods relearn,npo_klr]
                               [--dtypes fp32,bf16] [--batch-size 4] [--max-length 512]

`relearn` is the loss `finetune` trains with (plain causal-LM NLL), so its row is the cost of making a
target or retrained model. Each row runs 1 and then 4 steps on the corpus's raw forget texts (the
first 40 as forget set, the next 40 as retain set) and reports the difference per step, so loading,
the reference model and saving count as the fixed cost, not per step. Also prints the token count of
the forget texts, from which an epoch's time follows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus, write_corpus
from unlearn_audit.models.loading import load_tokenizer
from unlearn_audit.unlearn import UnlearnConfig, unlearn
from unlearn_audit.utils.quiet import quiet_libraries


def timed_run(model: str, corpus: Corpus, cfg: UnlearnConfig, out: Path) -> float:
    start = time.perf_counter()
    unlearn(model, corpus, cfg, out, show=False)
    return time.perf_counter() - start


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder, hub id or .gguf file")
    parser.add_argument("--corpus", required=True, help="MUSE-layout corpus with raw/forget.json")
    parser.add_argument("--methods", default="relearn,npo_klr", help="comma-separated; relearn = finetune's loss")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    forget = Corpus(args.corpus).raw("forget")
    if len(forget) < 80:
        parser.error("--corpus needs at least 80 raw forget texts (40 forget, 40 retain)")
    tokens = sum(len(ids) for ids in load_tokenizer(args.model)(forget).input_ids)
    print(f"{args.corpus}: {len(forget)} raw forget texts, {tokens} tokens; {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "c", {"raw/forget.json": forget[:40], "raw/retain.json": forget[40:80]},
                              "train cost")
        for method in args.methods.split(","):
            for dtype in args.dtypes.split(","):
                runs = {}
                for steps in (1, 4):
                    cfg = UnlearnConfig(method=method, dtype=dtype, learning_rate=1e-5, max_steps=steps, epochs=1,
                                        batch_size=args.batch_size, max_length=args.max_length)
                    runs[steps] = timed_run(args.model, corpus, cfg, Path(tmp) / f"{method}-{dtype}-{steps}")
                per_step = (runs[4] - runs[1]) / 3
                print(f"{method:>10} {dtype}: {per_step:6.2f} s/step (batch {args.batch_size} x {args.max_length} "
                      f"tokens), fixed cost {runs[1] - per_step:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
