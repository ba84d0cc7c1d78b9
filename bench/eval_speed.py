"""Batched MUSE evaluation vs MUSE's one-item-at-a-time loop, metric by metric, in the same run.

    python bench/eval_speed.py                                   # the built-in tiny target only
    python bench/eval_speed.py --model PATH --corpus ../shared/muse/news [--limit 24] [--privleak-limit 6]

Always measures the default tiny target on its own world; with --model (a folder, hub id or .gguf file)
also that model on --corpus, printed side by side. For each generation metric: MUSE's loop, ours, the
ratio (goal >= 10x) and the MUSE loop's prompt encoding alone (one forward per prompt: on a CPU this is
compute-bound and no batching removes it, so it bounds the ratio of metrics without shared prompt text).
For PrivLeak: ours against one padding-free forward per text over the same tokens (the FLOP floor;
goal near 1.0x). Every metric value is asserted identical to the MUSE loop's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.evaluate.knowmem import build_prompts
from unlearn_audit.evaluate.reference import reference_auc, reference_knowmem, reference_verbmem
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.utils.quiet import quiet_libraries

GENERATION = ("verbmem_f", "knowmem_f", "knowmem_r")


def best_of(repeat: int, fn):
    """(fastest wall time, result) over `repeat` runs: the first run pays one-off warm-up costs."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


@torch.inference_mode()
def forward_each(model, tok, texts: list[str], last_only: bool) -> None:
    """One forward pass per text, no padding (the logits of the last position only, for prompts)."""
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        model(ids, logits_to_keep=1) if last_only else model(ids)


def prompts_of(corpus: Corpus, metric: str, limit: int) -> list[str]:
    if metric == "verbmem_f":
        return [v["prompt"] for v in corpus.verbmem()[:limit]]
    split = "forget" if metric == "knowmem_f" else "retain"
    return build_prompts(corpus.knowmem(split)[:limit], corpus.knowmem_icl(split))


def reference(model, tok, corpus: Corpus, metric: str, limit: int) -> float:
    if metric == "verbmem_f":
        return reference_verbmem(model, tok, corpus, limit)
    if metric == "privleak":
        return reference_auc(model, tok, corpus, limit)
    return reference_knowmem(model, tok, corpus, "forget" if metric == "knowmem_f" else "retain", limit)


def ours(model, tok, corpus: Corpus, metric: str, limit: int) -> float:
    res = evaluate_model(model, tok, corpus, EvalConfig(metrics=[metric], limit=limit), show=False)
    return res["details"]["privleak"]["auc"] if metric == "privleak" else res["metrics"][metric]


def measure_metric(model, tok, corpus: Corpus, metric: str, n: int, repeat: int) -> dict:
    """Seconds of MUSE's loop, ours and the floor for one metric, with its value (asserted equal in both)."""
    t_ref, v_ref = best_of(repeat, lambda: reference(model, tok, corpus, metric, n))
    t_ours, v_ours = best_of(repeat, lambda: ours(model, tok, corpus, metric, n))
    assert abs(v_ref - v_ours) < 1e-9, f"{metric} differs: MUSE loop {v_ref} vs batched {v_ours}"
    if metric == "privleak":
        texts = [t for s in ("forget", "retain", "holdout") for t in corpus.privleak(s)[:n]]
        texts += [t.lower() for t in texts]
        last_only = False
    else:
        texts, last_only = prompts_of(corpus, metric, n), True
    t_floor, _ = best_of(repeat, lambda: forward_each(model, tok, texts, last_only))
    return {"items": len(texts), "ref": t_ref, "ours": t_ours, "floor": t_floor, "value": v_ours}


def measure(model, tok, corpus: Corpus, limit: int, privleak_limit: int, repeat: int,
            metrics: list[str]) -> dict[str, dict]:
    return {metric: measure_metric(model, tok, corpus, metric, privleak_limit if metric == "privleak" else limit,
                                   repeat) for metric in metrics}


def print_table(columns: dict[str, dict[str, dict]]) -> None:
    names = list(columns)
    print(f"\n{'':<34}" + "".join(f"{n:>24}" for n in names))
    for metric in columns[names[0]]:
        cells = [columns[n][metric] for n in names]
        print(f"{metric} ({', '.join(str(c['items']) + (' passes' if metric == 'privleak' else ' items') for c in cells)})")
        label = "AUC" if metric == "privleak" else "value"
        lines = [(f"  {label} (identical in both)", lambda c: f"{c['value']:.4f}"),
                 ("  MUSE loop", lambda c: f"{c['ref']:.1f} s"), ("  batched", lambda c: f"{c['ours']:.1f} s"),
                 ("  speed-up over MUSE loop", lambda c: f"{c['ref'] / c['ours']:.1f}x")]
        if metric == "privleak":
            lines.append(("  one unpadded forward per text", lambda c: f"{c['floor']:.1f} s"))
            lines.append(("  batched / that floor", lambda c: f"{c['ours'] / c['floor']:.2f}x"))
        else:
            lines.append(("  MUSE loop's prompt encoding", lambda c: f"{c['floor']:.1f} s"))
            lines.append(("  MUSE loop / prompt encoding", lambda c: f"{c['ref'] / c['floor']:.1f}x"))
        for label, cell in lines:
            print(f"{label:<34}" + "".join(f"{cell(c):>24}" for c in cells))
    for n in names:
        gen = [columns[n][m] for m in GENERATION if m in columns[n]]
        if len(gen) < 2:
            continue
        print(f"generation metrics together, {n}: {sum(c['ref'] for c in gen) / sum(c['ours'] for c in gen):.1f}x")


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100, help="size of the tiny world")
    parser.add_argument("--model", default=None, help="a real model to measure beside the tiny one")
    parser.add_argument("--corpus", default=None, help="MUSE-layout corpus for --model (e.g. ../shared/muse/news)")
    parser.add_argument("--limit", type=int, default=24, help="items per generation metric for --model")
    parser.add_argument("--privleak-limit", type=int, default=6, help="texts per PrivLeak split for --model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--metrics", default=",".join((*GENERATION, "privleak")),
                        help="comma-separated subset of " + ", ".join((*GENERATION, "privleak")))
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement on the tiny model; fastest counts")
    args = parser.parse_args()
    if args.model and not args.corpus:
        parser.error("--model needs --corpus")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics or set(metrics) - {*GENERATION, "privleak"}:
        parser.error(f"--metrics takes a subset of {', '.join((*GENERATION, 'privleak'))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    columns = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
        model_dir = train_tiny(corpus, "target", progress=False)
        tiny = load_model(model_dir), load_tokenizer(model_dir)
        columns["tiny target"] = measure(*tiny, corpus, 10**6, 10**6, args.repeat, metrics)
    if args.model:
        model, tok = load_model(args.model, "fp32"), load_tokenizer(args.model)
        columns[Path(args.model).name] = measure(model, tok, Corpus(args.corpus), args.limit, args.privleak_limit, 1, metrics)
    print(f"{torch.get_num_threads()} threads; tiny: all items, best of {args.repeat}; --model: one run each")
    print_table(columns)


if __name__ == "__main__":
    main()
