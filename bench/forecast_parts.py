"""Why a bins forecast misses: quantization's effect on an unlearned model, split into its two parts.

    python bench/forecast_parts.py --target T --unlearned U [U ...] --corpus C [--scheme rtn-int4-g128]

For every tensor the quantizer rounds, Q(u) - u is the sum of

    Q(t) - t                      the rounding the target itself gets (noise, nothing to do with forgetting)
    (Q(u) - Q(t)) - (u - t)       what quantization does to the update (the fallback `bins` forecasts)

so two models, built tensor by tensor from the stored weights, take one part each:

    noise    = u + (Q(t) - t)     the unlearned model with the target's rounding and its update intact
    fallback = t + (Q(u) - Q(t))  the target plus the update as the quantizer leaves it, without the noise

(noise + fallback - u = Q(u) exactly; tensors the quantizer keeps keep u in all three). `bins`' forecast
reads the fallback part only: its recovery (fallback against the full-precision target) is what the
forecast predicts, and the measured recovery of Q(u) adds the noise part's. Both are printed with
scoring.knowledge_recovery, pooled over VerbMem_f and KnowMem_f as the report pools them. Q is the torch
twin `bins` uses (quantize.schemes.fake_quantize; RTN and bitsandbytes' codebooks: calibrated schemes are
refused). Models run in fp32; each evaluation is the grid's (VerbMem at the reference length).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize.bins import BinsOptions, quantized_by
from unlearn_audit.quantize.schemes import fake_quantize, parse_scheme
from unlearn_audit.scoring import knowledge_recovery, percent
from unlearn_audit.utils.quiet import quiet_libraries

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r"]


def rounded_names(model, opts: BinsOptions) -> list[str]:
    """The parameters RTN and bitsandbytes quantize (bins' rule: 2-D weights, not embeddings or the head)."""
    return [n for n, p in model.named_parameters() if quantized_by(n, p.shape, opts)]


@torch.no_grad()
def quantized(model, scheme, names: list[str]) -> dict[str, torch.Tensor]:
    """{name: Q(w)} for the tensors the quantizer rounds."""
    params = dict(model.named_parameters())
    return {name: fake_quantize(params[name].float(), scheme) for name in names}


@torch.no_grad()
def parts(target, q_target: dict, unlearned, scheme, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """{part: {name: tensor}} for the quantized tensors: q_unlearned, noise, fallback (Q(t) given once)."""
    wt, wu = dict(target.named_parameters()), dict(unlearned.named_parameters())
    out: dict[str, dict[str, torch.Tensor]] = {"q_unlearned": quantized(unlearned, scheme, names),
                                               "noise": {}, "fallback": {}}
    for name in names:
        t, u, qt, qu = wt[name].float(), wu[name].float(), q_target[name], out["q_unlearned"][name]
        out["noise"][name], out["fallback"][name] = u + (qt - t), t + (qu - qt)
    return out


@torch.no_grad()
def with_tensors(model, tensors: dict[str, torch.Tensor]):
    """`model` with the named parameters replaced (in place; the caller reloads for the next variant)."""
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        params[name].copy_(value)
    return model


def scores(model, tok, corpus: Corpus, cfg: EvalConfig) -> dict:
    return evaluate_model(model, tok, corpus, cfg, show=False)["metrics"]


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the target's model folder")
    parser.add_argument("--unlearned", required=True, nargs="+", help="unlearned model folders")
    parser.add_argument("--corpus", required=True, help="the corpus folder the models were evaluated on")
    parser.add_argument("--scheme", default="rtn-int4-g128")
    parser.add_argument("--verbmem-length", default="reference", choices=["reference", "muse"],
                        help="as the run being explained evaluated VerbMem (the grid's `eval: verbmem_length`)")
    args = parser.parse_args()
    missing = [p for p in (args.target, *args.unlearned, args.corpus) if not Path(p).is_dir()]
    if missing:
        parser.error(f"not a folder: {', '.join(missing)}")
    try:
        scheme = parse_scheme(args.scheme)
    except UserError as e:
        parser.error(str(e))
    if not scheme.analysable:
        parser.error(f"{scheme.name} depends on calibration data; this split needs a scheme bins can reproduce")
    corpus, cfg = Corpus(args.corpus), EvalConfig(metrics=METRICS, verbmem_length=args.verbmem_length)
    tok = load_tokenizer(args.target)
    target = load_model(args.target, "fp32")
    names = rounded_names(target, BinsOptions())
    t_full = scores(target, tok, corpus, cfg)
    q_target = quantized(target, scheme, names)  # the target's side is the same for every unlearned model
    t_q = scores(with_tensors(load_model(args.target, "fp32"), q_target), tok, corpus, cfg)
    print(f"{args.scheme}: recovery of Q(u) and of the noise part against the quantized target, of the fallback "
          "part against the full-precision one (what bins forecasts)", flush=True)
    head = f"{'unlearned model':<40} {'model':<10} {'VerbMem_f':>9} {'KnowMem_f':>9} {'KnowMem_r':>9}  recovery"
    for path in args.unlearned:
        print(head)
        split = parts(target, q_target, load_model(path, "fp32"), scheme, names)
        u_full = scores(load_model(path, "fp32"), tok, corpus, cfg)
        rows = {"target": (t_full, None), "target+Q": (t_q, None), "u": (u_full, None)}
        for part, against in (("q_unlearned", t_q), ("noise", t_q), ("fallback", t_full)):
            s = scores(with_tensors(load_model(path, "fp32"), split[part]), tok, corpus, cfg)
            rows[part] = (s, knowledge_recovery(u_full, s, against))
        for label, (s, rec) in rows.items():
            vals = " ".join(f"{s[k]:9.1f}" for k in METRICS)
            print(f"{Path(path).name:<40} {label:<10} {vals}  {percent(rec) if rec is not None else ''}", flush=True)


if __name__ == "__main__":
    main()
