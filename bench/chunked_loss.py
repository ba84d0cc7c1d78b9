"""What the chunked loss (`finetune --loss-chunk`, training/nll.chunked_mean_nll) saves and costs: peak
memory and seconds per training step (forward, backward, fp32) with the batch's full logits against the
output head run a chunk of positions at a time, on a real model, at several batch sizes. Each measurement
runs in its own process (peak resident memory is per process); the loss values are printed to show they
agree.

    python bench/chunked_loss.py [--model package:gemma3-270m] [--batches 4,8,16] [--tokens 128]
                                 [--chunk 256] [--steps 3] [--threads 2]

Prints one line per batch size: the full logits' size, peak memory over the loaded model for both ways,
their ratio, and seconds per step for both ways with their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(model_id: str, batch: int, tokens: int, chunk: int, steps: int, threads: int) -> dict:
    import torch

    from unlearn_audit.models.loading import load_model
    from unlearn_audit.training.nll import chunked_mean_nll, mean_nll
    from unlearn_audit.utils.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(threads)
    model = load_model(model_id, "fp32")
    model.train()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux reports KiB)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (batch, tokens), generator=gen)
    mask = torch.ones_like(ids)
    seconds, losses = [], []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        if chunk:
            loss = chunked_mean_nll(model, ids, mask, ids, chunk)
        else:
            loss = mean_nll(model(input_ids=ids, attention_mask=mask).logits, ids)
        loss.backward()
        seconds.append(time.perf_counter() - started)
        losses.append(loss.item())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"loaded_gib": loaded, "peak_gib": peak, "seconds": min(seconds[1:] or seconds), "loss": losses[0],
            "vocab": model.config.vocab_size}


def measure(args, batch: int, chunk: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([args.model, batch, args.tokens, chunk,
                                                                            args.steps, args.threads])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="package:gemma3-270m")
    p.add_argument("--batches", default="4,8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    print(f"{args.model}: {args.tokens} tokens a text, chunks of {args.chunk} positions, fp32 forward + backward, "
          f"{args.threads} threads; memory over the loaded model, best of {args.steps} steps after the first")
    for batch in (int(b) for b in args.batches.split(",")):
        full, chunked = measure(args, batch, 0), measure(args, batch, args.chunk)
        logits = batch * args.tokens * full["vocab"] * 4 / 2**30
        extra_full, extra_chunked = full["peak_gib"] - full["loaded_gib"], chunked["peak_gib"] - chunked["loaded_gib"]
        print(f"batch {batch:3d}: full logits {logits:.2f} GiB | peak over the model: full {extra_full:.2f} GiB, "
              f"chunked {extra_chunked:.2f} GiB (full / chunked {extra_full / extra_chunked:.1f}x) | s/step: full "
              f"{full['seconds']:.2f}, chunked {chunked['seconds']:.2f} ({chunked['seconds'] / full['seconds']:.2f}x) "
              f"| loss {full['loss']:.5f} vs {chunked['loss']:.5f}", flush=True)


if __name__ == "__main__":
    main()
