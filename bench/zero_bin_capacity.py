"""How much forgetting can hide inside the quantizer's zero bins of the tiny target? (docs/findings.md)

    python bench/zero_bin_capacity.py [--schemes rtn-int4-g128,rtn-int3-g128,rtn-int2-g128]

For each scheme: one signed step that moves every target weight lying in the zero bin (|w| < Delta/2)
to +-0.49 Delta in the direction that raises the forget-set NLL (the largest change a quantizer erases
completely), then KnowMem/VerbMem on the forget set at full precision and after quantization. If
full-precision knowledge survives even this, no unlearning update confined to the zero bin can forget,
and quantization has nothing to restore at this model size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from unlearn_audit.cli import quiet_libraries
from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.models.tiny import train_tiny
from unlearn_audit.quantize import apply_rtn, parse_scheme
from unlearn_audit.quantize.rtn import quantize

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r"]
SHORT = {"verbmem_f": "VerbMem_f", "knowmem_f": "KnowMem_f", "knowmem_r": "KnowMem_r"}


def zero_bin_step(model_dir: Path, corpus: Corpus, scheme) -> torch.nn.Module:
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    model.train()
    for text in corpus.raw("forget"):
        ids = torch.tensor([tok(text).input_ids + [tok.eos_token_id]])
        model(ids, labels=ids).loss.backward()
    moved = total = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod is not model.get_output_embeddings():
                _, _, delta = quantize(mod.weight, scheme.rtn)
                zero = mod.weight.abs() < delta / 2
                mod.weight.copy_(torch.where(zero, torch.sign(mod.weight.grad) * 0.49 * delta, mod.weight))
                moved += int(zero.sum())
                total += zero.numel()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, moved / total


def scores(model, tok, corpus) -> dict:
    return evaluate_model(model, tok, corpus, EvalConfig(metrics=METRICS), show=False)["metrics"]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="rtn-int4-g128,rtn-int3-g128,rtn-int2-g128")
    parser.add_argument("--people", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
        target = train_tiny(corpus, "target", progress=False)
        tok = load_tokenizer(target)
        base = scores(load_model(target), tok, corpus)
        print("target, full precision: " + " ".join(f"{k}={base[k]:.1f}" for k in METRICS))
        print(f"{'scheme':<16} {'zero-bin share':>14} | {'stepped model @ full':>46} | {'stepped model @ scheme':>46}")
        for name in args.schemes.split(","):
            scheme = parse_scheme(name)
            stepped, share = zero_bin_step(target, corpus, scheme)
            full = scores(stepped, tok, corpus)
            quant = scores(apply_rtn(stepped, scheme), tok, corpus)
            fmt = lambda m: " ".join(f"{SHORT[k]}={m[k]:5.1f}" for k in METRICS)  # noqa: E731
            print(f"{name:<16} {share:>14.1%} | {fmt(full):>46} | {fmt(quant):>46}")


if __name__ == "__main__":
    main()
