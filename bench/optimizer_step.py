"""One AdamW step over a model's parameters, by implementation, in the precision the run trains in.

    python bench/optimizer_step.py [--model package:smollm2] [--dtype bf16] [--repeats 5]

Prints seconds per step for torch's per-tensor loop (`adamw_torch` on CPU), its foreach variant and the
fused kernel (`adamw_torch_fused`, what unlearning and fine-tuning use), with each one's ratio to the
fused step, and one forward + backward pass of a batch of 2 x 100 tokens for scale. The step costs the
same at any batch size, so on CPUs with small batches it is a large part of every unlearning step.
"""

from __future__ import annotations

import argparse
import time

import torch

from unlearn_audit.models.loading import load_model
from unlearn_audit.utils.quiet import quiet_libraries


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocates the optimizer state)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="package:smollm2", help="model spec (default: SmolLM2-135M)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="parameter precision")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
    args = parser.parse_args()
    quiet_libraries()
    torch.manual_seed(0)
    model = load_model(args.model, args.dtype)
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 100))

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    print(f"forward + backward, 2 x 100 tokens ({args.dtype}): {seconds(forward_backward, args.repeats):.3f} s")
    variants = {"per-tensor loop (adamw_torch on CPU)": {"foreach": False}, "foreach": {"foreach": True},
                "fused (adamw_torch_fused)": {"fused": True}}
    times = {}
    for name, kwargs in variants.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-7, **kwargs)
        times[name] = seconds(opt.step, args.repeats)
        del opt
    fused = times["fused (adamw_torch_fused)"]
    for name, t in times.items():
        print(f"AdamW step, {name}: {t:.3f} s ({t / fused:.1f}x the fused step)")


if __name__ == "__main__":
    main()
