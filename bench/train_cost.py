"""Seconds per optimizer step and peak memory of unlearning (and `finetune`'s loss) per memory mode, on
any model, to size a real run and to see which mode fits a GPU.

    python bench/train_cost.py --model smollm2 --corpus ../shared/muse/news [--methods relearn,npo_klr]
                               [--modes fp32,bf16,mixed,fp32+gc,fp32+8bit,lora,bf16+lora] [--batch-size 4]

Modes: a precision (fp32, bf16 = pure bf16 with native bf16 arithmetic as on a GPU, mixed = fp32 masters
+ bf16 autocast) joined with `+gc`
(gradient checkpointing), `+8bit` (bitsandbytes' 8-bit AdamW) and `+lora` (a rank-16 LoRA adapter on every
linear layer; a bare `lora` is fp32+lora). `relearn` is the loss `finetune` trains with. Each (method,
mode) runs in its own process, 1 and then 4 steps on the corpus's raw forget texts (the first 40 as forget
set, the next 40 as retain set); the difference per step is the step time, so loading, the reference model
and saving count as the fixed cost. Memory: the process's peak resident set (CPU; it includes Python and
torch themselves, so compare modes against each other) or torch's peak allocation (CUDA), the trainable
parameters and the optimizer state the run recorded. Ratios are against the first mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus, write_corpus
from unlearn_audit.models.loading import load_tokenizer
from unlearn_audit.unlearn import UnlearnConfig, unlearn
from unlearn_audit.utils.quiet import quiet_libraries


def mode_options(mode: str) -> dict:
    """'bf16+gc+lora' -> UnlearnConfig fields."""
    parts = mode.split("+")
    dtype = parts[0] if parts[0] in ("fp32", "bf16", "mixed") else "fp32"
    unknown = [p for p in parts if p not in ("fp32", "bf16", "mixed", "gc", "8bit", "lora")]
    if unknown:
        raise SystemExit(f"unknown mode part {unknown[0]!r} in {mode!r}")
    return {"dtype": dtype, "gradient_checkpointing": "gc" in parts, "lora": "r=16" if "lora" in parts else None,
            "optim": "adamw-8bit" if "8bit" in parts else "adamw",
            "arithmetic": "native"}  # pure bf16 as a GPU runs it (emulation keeps fp32 copies: a CPU speed trick)


def child(args) -> None:
    """One (method, mode): 1 and 4 steps; prints a JSON line."""
    quiet_libraries()
    corpus = Corpus(args.child_corpus)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (1, 4):
            cfg = UnlearnConfig(method=args.methods, learning_rate=1e-5, max_steps=steps, epochs=1,
                                batch_size=args.batch_size, max_length=args.max_length, **mode_options(args.modes))
            start = time.perf_counter()
            folder = unlearn(args.model, corpus, cfg, Path(tmp) / f"run{steps}", show=False)
            out[steps] = time.perf_counter() - start
            memory = json.loads((folder / "unlearn.json").read_text())["memory"]
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"per_step": (out[4] - out[1]) / 3, "fixed": out[1] - (out[4] - out[1]) / 3,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_cuda_mb": peak_cuda, **memory}))


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder, hub id or .gguf file")
    parser.add_argument("--corpus", required=True, help="MUSE-layout corpus with raw/forget.json")
    parser.add_argument("--methods", default="relearn,npo_klr", help="comma-separated; relearn = finetune's loss")
    parser.add_argument("--modes", default="fp32,bf16,mixed,fp32+gc,fp32+8bit,lora,bf16+lora")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child-corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_corpus:
        return child(args)
    for mode in args.modes.split(","):
        mode_options(mode)  # refuse a bad mode before any run
    forget = Corpus(args.corpus).raw("forget")
    if len(forget) < 80:
        parser.error("--corpus needs at least 80 raw forget texts (40 forget, 40 retain)")
    tokens = sum(len(ids) for ids in load_tokenizer(args.model)(forget).input_ids)
    print(f"{args.corpus}: {len(forget)} raw forget texts, {tokens} tokens; {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "c", {"raw/forget.json": forget[:40], "raw/retain.json": forget[40:80]},
                              "train cost")
        for method in args.methods.split(","):
            first = None
            print(f"| {method} mode | s/step | fixed s | peak memory MiB | x first | trainable | optimizer state MiB |")
            print("|---|---|---|---|---|---|---|")
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--model", args.model, "--corpus", args.corpus, "--methods", method,
                       "--modes", mode, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
                       "--child-corpus", str(corpus.root)] + (["--threads", str(args.threads)] if args.threads else [])
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    print(f"| {mode} | failed: {(run.stderr.strip().splitlines() or ['?'])[-1]} |||||")
                    continue
                r = json.loads(run.stdout.strip().splitlines()[-1])
                peak = r["peak_cuda_mb"] if r["peak_cuda_mb"] is not None else r["peak_rss_mb"]
                first = first or peak
                print(f"| {mode} | {r['per_step']:.2f} | {r['fixed']:.1f} | {peak:.0f} | {peak / first:.2f} | "
                      f"{r['trainable_parameters']:,} | {r['optimizer_state_bytes'] / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
