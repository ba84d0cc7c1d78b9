"""How much forgetting can hide inside the quantizer's zero bins of the tiny target? (docs/findings.md)

    python bench/zero_bin_capacity.py [--schemes rtn-int4-g128,rtn-int3-g128,rtn-int2-g128]

For each scheme: one signed step that moves every target weight lying in the zero bin (|w| < Delta/2;
for bitsandbytes' FP4/NF4 the bin that rounds to code 0) to 98% of the bin's half-width, in the
direction that raises the forget-set NLL (the largest change a quantizer erases
completely), then KnowMem/VerbMem on the forget set at full precision and after quantization. If
full-precision knowledge survives even this, no unlearning update confined to the zero bin can forget,
and quantization has nothing to restore at this model size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.models.tiny import TinyRecipe
from unlearn_audit.quantize import parse_scheme
from unlearn_audit.quantize.schemes import group_views, quantize_groups
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.utils.quiet import quiet_libraries

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r"]
SHORT = {"verbmem_f": "VerbMem_f", "knowmem_f": "KnowMem_f", "knowmem_r": "KnowMem_r"}


def zero_bin_step(model_dir: Path, corpus: Corpus, scheme, whole_bins: bool = False) -> torch.nn.Module:
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    model.train()
    for text in corpus.raw("forget"):
        ids = torch.tensor([tok(text).input_ids + [tok.eos_token_id]])
        model(ids, labels=ids).loss.backward()
    moved = total = 0
    with torch.no_grad():
        for mod in linears(model):
            w, g = mod.weight.detach().clone(), mod.weight.grad
            for view, grad in zip(group_views(w, scheme), group_views(g, scheme)):
                _, deq, step, half = quantize_groups(view, scheme)
                if whole_bins:  # every weight but the group maximum (it sets the scale) to its bin's edge
                    zero = view.abs() < view.abs().amax(dim=1, keepdim=True)
                    view.copy_(torch.where(zero, deq + torch.sign(grad) * 0.49 * step, view))
                else:  # only the weights that round to zero
                    zero = view.abs() < half
                    view.copy_(torch.where(zero, torch.sign(grad) * 0.98 * half, view))
                moved += int(zero.sum())
                total += zero.numel()
            mod.weight.copy_(w)
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, moved / total


def linears(model) -> list[torch.nn.Linear]:
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


@torch.no_grad()
def fake_quantize(model, scheme):
    """Quantize-dequantize every Linear weight (RTN or bitsandbytes' codebooks), in place."""
    for mod in linears(model):
        w = mod.weight.detach().clone()
        for view in group_views(w, scheme):
            view.copy_(quantize_groups(view, scheme)[1])
        mod.weight.copy_(w)
    return model


def scores(model, tok, corpus) -> dict:
    return evaluate_model(model, tok, corpus, EvalConfig(metrics=METRICS), show=False)["metrics"]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="rtn-int4-g128,bnb-fp4,rtn-int4-tensor,rtn-int3-g128,rtn-int2-g128")
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=128, help="tiny-model width (try 256, 512 for scale)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--weight-decay", type=float, default=None, help="target recipe: AdamW weight decay")
    parser.add_argument("--epochs", type=int, default=None, help="target recipe: training epochs")
    parser.add_argument("--forget-share", type=float, default=0.1, help="world: share of people to forget")
    parser.add_argument("--whole-bins", action="store_true",
                        help="RTN only: move every weight to the edge of its own bin, not just the zero bin")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = WorldConfig(people=args.people, forget_share=args.forget_share)
        corpus = Corpus(write_world(world, Path(tmp) / "world"))
        extra = {k: v for k, v in (("weight_decay", args.weight_decay), ("epochs", args.epochs)) if v is not None}
        recipe = TinyRecipe(hidden_size=args.hidden, num_layers=args.layers, intermediate_size=args.intermediate,
                            **extra)
        target = train_tiny(corpus, "target", recipe, progress=False)
        tok = load_tokenizer(target)
        base = scores(load_model(target), tok, corpus)
        print("target, full precision: " + " ".join(f"{k}={base[k]:.1f}" for k in METRICS))
        print(f"{'scheme':<16} {'moved share':>14} | {'stepped model @ full':>46} | {'stepped model @ scheme':>46}")
        for name in args.schemes.split(","):
            scheme = parse_scheme(name)
            stepped, share = zero_bin_step(target, corpus, scheme, args.whole_bins)
            full = scores(stepped, tok, corpus)
            quant = scores(fake_quantize(stepped, scheme), tok, corpus)
            fmt = lambda m: " ".join(f"{SHORT[k]}={m[k]:5.1f}" for k in METRICS)  # noqa: E731
            print(f"{name:<16} {share:>14.1%} | {fmt(full):>46} | {fmt(quant):>46}")


if __name__ == "__main__":
    main()
