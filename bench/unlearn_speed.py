"""Throughput of every unlearning method against plain fine-tuning on the same batches.

    python bench/unlearn_speed.py [--steps 40] [--dtype fp32] [--model FOLDER] [--methods ga_gdr,npo_klr]
                                  [--compile] [--padding]

Runs each method's loss + backward + AdamW step on identical paired forget/retain batches of the
default tiny target (or the model folder given, e.g. the demo's SmolLM2 target) and prints tokens/s and
the ratio to plain fine-tuning (NLL on the forget batch). Methods with a reference model (NPO, KLR) pay
one extra forward pass; nothing else should cost more. For regularized methods the last column is the
speed of `--joint-pass` (forget and retain in one forward pass per network) over the separate passes.

`--compile` adds the speed of the same steps with the networks under `torch.compile` (inductor, CPU) over
eager, measured after the compiling steps, with the seconds the compilation took and how far the losses
of the two drift over the steps (another kernel sums in another order). `--padding` prints the share of
the batches' positions that are padding: the most that packing the short texts into full rows can save.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.core import PairedChunks, PartsCollator, chunk_ids, training_dtype
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.unlearn.losses import mean_nll
from unlearn_audit.unlearn.methods import Batch, method_names, resolve_method
from unlearn_audit.unlearn.trainer import UnlearnConfig
from unlearn_audit.utils.quiet import quiet_libraries

METHODS = ["finetune"] + [m for m in method_names() if m.split("_")[0] in ("ga", "npo")]


def batches(tokenizer, corpus: Corpus, batch_size: int, steps: int) -> list[dict]:
    forget = chunk_ids(tokenizer, corpus.raw("forget"), 512)
    retain = chunk_ids(tokenizer, corpus.raw("retain"), 512)
    data = PairedChunks(forget, retain, seed=0)
    collate = PartsCollator(tokenizer.pad_token_id)
    out = []
    while len(out) < steps:
        for i in range(0, len(data), batch_size):
            out.append(collate([data[j] for j in range(i, min(i + batch_size, len(data)))]))
    return out[:steps]


def run(method: str, model_dir: Path, inputs: list[dict], dtype: str, joint: bool = False,
        compiled: bool = False, record: dict | None = None) -> float:
    """Tokens per second of `steps` optimizer steps (tokens = forget + retain tokens the step reads); with
    `compiled`, the networks run under torch.compile and the clock starts after the first step (which
    compiles: its seconds go to `record["compiling"]`); each step's loss goes to `record["losses"]`."""
    cfg = UnlearnConfig(method=method if method != "finetune" else "ga_gdr")
    model = load_model(model_dir, training_dtype(dtype))
    model.train()
    m = None if method == "finetune" else resolve_method(method)
    ref = load_model(model_dir, training_dtype(dtype)) if m and m.needs_ref else None
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True)
        if ref is not None:
            ref.forward = torch.compile(ref.forward, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = 0
    started = time.perf_counter()
    for i, x in enumerate(inputs):
        if compiled and i == 1:  # the first step compiled the graphs; time the rest
            if record is not None:
                record["compiling"] = time.perf_counter() - started
            tokens, started = 0, time.perf_counter()
        batch = Batch(model, ref, x, joint=joint)
        if m is None:
            loss = mean_nll(batch.forget_logits, batch.labels("forget"))
            tokens += int(x["forget_attention_mask"].sum())
        else:
            loss = m.forget.fn(batch, cfg)
            tokens += int(x["forget_attention_mask"].sum())
            if m.regularizer:
                loss = loss + m.regularizer.fn(batch, cfg)
                tokens += int(x["retain_attention_mask"].sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if record is not None:
            record.setdefault("losses", []).append(float(loss))
    return tokens / (time.perf_counter() - started)


def padding_share(inputs: list[dict]) -> float:
    """Padded positions over all positions of the batches' forget and retain parts."""
    real = total = 0
    for x in inputs:
        for part in ("forget", "retain"):
            mask = x.get(f"{part}_attention_mask")
            if mask is not None:
                real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / total


def compiled_ratio(method: str, model_dir: Path, inputs: list[dict], dtype: str) -> str:
    """'compiled / eager tokens per second (compile seconds, largest loss difference)' for one method."""
    eager, compiled = {}, {}
    speed = run(method, model_dir, inputs, dtype, record=eager)
    fast = run(method, model_dir, inputs, dtype, compiled=True, record=compiled)
    drift = max(abs(a - b) for a, b in zip(eager["losses"], compiled["losses"]))
    return f"{fast / speed:.2f} (compiling {compiled['compiling']:.0f} s; losses differ by up to {drift:.1e})"


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--model", help="a model folder to unlearn (default: a tiny target trained here)")
    parser.add_argument("--methods", help="comma-separated methods (default: GA and NPO with each regularizer)")
    parser.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    parser.add_argument("--padding", action="store_true", help="print the batches' padding share and stop")
    args = parser.parse_args()
    methods = ["finetune", *args.methods.split(",")] if args.methods else METHODS
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(), Path(tmp) / "world"))
        model_dir = Path(args.model) if args.model else train_tiny(corpus, "target", progress=False)
        inputs = batches(load_tokenizer(model_dir), corpus, args.batch_size, args.steps)
        if args.padding:
            print(f"{model_dir}, batch {args.batch_size}: {padding_share(inputs):.1%} of the positions are padding")
            return
        if args.compile:
            print(f"{model_dir}, {args.dtype}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads")
            for method in methods:
                print(f"{method:<10} torch.compile / eager: {compiled_ratio(method, model_dir, inputs, args.dtype)}",
                      flush=True)
            return
        run("finetune", model_dir, inputs[:5], args.dtype)  # warm-up
        base = run("finetune", model_dir, inputs, args.dtype)
        print(f"{model_dir}, {args.dtype}, batch {args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads")
        print(f"{'method':<10} {'tokens/s':>9} {'ratio':>6}  {'passes':>6}  joint pass / separate")
        for method in methods:
            speed = base if method == "finetune" else run(method, model_dir, inputs, args.dtype)
            m = None if method == "finetune" else resolve_method(method)
            passes = 1 if m is None else 1 + bool(m.regularizer) + m.forget.needs_ref + bool(
                m.regularizer and m.regularizer.needs_ref)
            joint = f"{run(method, model_dir, inputs, args.dtype, joint=True) / speed:.2f}" if m and m.regularizer else ""
            print(f"{method:<10} {speed:>9.0f} {speed / base:>6.2f}  {passes:>6}  {joint}", flush=True)
    print("\nratio = tokens/s of the method / tokens/s of plain fine-tuning on the same batches "
          "(tokens counted: forget + retain texts read by the step).")


if __name__ == "__main__":
    main()
