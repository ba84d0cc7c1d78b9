"""Batched TOFU evaluation vs an item-by-item loop (one forward pass per scored answer, one `generate`
per question, as open-unlearning's per-sample evaluation does at batch size 1), in the same run.

    python bench/tofu_speed.py [--people 100] [--threads 2] [--model package:smollm2 --people 20]

Measures the tiny target of the built-in world (trained or taken from the cache), or the model `--model`
names, on every TOFU metric of the world: the loop's time, ours, the ratio (goal >= 10x) and every metric
value of both, asserted equal.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unlearn_audit.data.corpus import TOFU_UNPARAPHRASED, Corpus
from unlearn_audit.data.synthetic import WorldConfig, write_world
from unlearn_audit.evaluate import tofu
from unlearn_audit.evaluate.knowmem import STOP_WORDS, cut_answer
from unlearn_audit.evaluate.rouge import rouge_l_recall_stemmed
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.generation import continuation_logprobs, greedy_generate
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.tiny import train_tiny
from unlearn_audit.utils.quiet import quiet_libraries


def loop_set(model, tok, items: list[dict], split: str, heal: bool) -> dict:
    """Every per-item quantity of one TOFU set, one forward pass or one `generate` call at a time."""
    correct = "answer" if split in TOFU_UNPARAPHRASED else "paraphrased_answer"
    out = {"answer": [], "correct": [], "perturbed": [], "hits": [], "rouge": []}

    def loss(prompt: str, text: str, hits: list | None = None) -> float:
        (lp,), _ = continuation_logprobs(model, tok, [(prompt, text)], batch_size=1, hits=hits)
        return float(-lp.mean())

    for it in items:
        prompt = tofu.build_prompt(tok, it["question"], "qa")
        hits: list = []
        out["answer"].append(loss(prompt, it["answer"], hits))
        out["hits"].append(hits[0])
        out["correct"].append(loss(prompt, it[correct]))
        out["perturbed"].append([loss(prompt, p) for p in it["perturbed_answer"]])
        (text,), _ = greedy_generate(model, tok, [prompt], 200, stop_strings=STOP_WORDS, batch_size=1, heal_space=heal)
        out["rouge"].append(rouge_l_recall_stemmed(it["answer"], cut_answer(text).strip()))
    return out


def loop_metrics(model, tok, corpus: Corpus) -> dict:
    """The TOFU metrics from the loop's per-item values (the formulas of evaluate/tofu.py)."""
    sets = {s: loop_set(model, tok, corpus.tofu(s), s, True) for s in corpus.tofu_splits()}
    f = sets["forget"]
    tr = tofu.truth_ratio(f["correct"], f["perturbed"])
    parts = []
    for split in (s for s in tofu.UTILITY_SETS if s in sets):
        v = sets[split]
        p = tofu.normalised_probability(v["answer"], v["perturbed"]) if split in TOFU_UNPARAPHRASED \
            else tofu.probability(v["answer"])
        parts += [float(np.mean(p)), float(np.mean(v["rouge"])),
                  tofu.utility_truth_ratio(tofu.truth_ratio(v["correct"], v["perturbed"]))]
    return {"forget_quality": tofu.forget_quality(tr, tr), "model_utility": tofu.harmonic_mean(parts),
            "forget_prob": 100 * float(np.mean(tofu.probability(f["answer"]))),
            "forget_rouge": 100 * float(np.mean(f["rouge"])), "forget_truth_ratio": tofu.forget_truth_ratio(tr),
            "extraction_strength": 100 * float(np.mean([tofu.extraction_strength(h) for h in f["hits"]])),
            "exact_memorization": 100 * float(np.mean([tofu.exact_memorization(h) for h in f["hits"]]))}


def batched_metrics(model, tok, corpus: Corpus) -> dict:
    model.__dict__.pop("_unlearn_audit_tofu", None)  # no per-model memory from an earlier run
    cfg = EvalConfig().for_benchmark("tofu")
    ref = cfg.bench.reference(model, tok, corpus, cfg, False)
    return evaluate_model(model, tok, corpus, cfg, ref, show=False)["metrics"]


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=100, help="size of the tiny world")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="a model spec (folder, .gguf, package:smollm2) instead of "
                                                      "the tiny target")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(write_world(WorldConfig(people=args.people), Path(tmp) / "world"))
        model_dir = args.model or train_tiny(corpus, "target", progress=False)
        model, tok = load_model(model_dir), load_tokenizer(model_dir)
        t_loop, loop = timed(lambda: loop_metrics(model, tok, corpus))
        t_ours, ours = timed(lambda: batched_metrics(model, tok, corpus))
        splits = corpus.tofu_splits()
        items = sum(len(corpus.tofu(s)) for s in splits)
    print(f"{torch.get_num_threads()} threads; {args.model or 'tiny target'}, {items} TOFU items "
          f"({', '.join(splits)}), each with its paraphrased and 5 perturbed answers")
    print(f"{'metric':<22}{'item loop':>14}{'batched':>14}")
    for key, value in loop.items():
        print(f"{key:<22}{value:>14.6f}{ours[key]:>14.6f}")
        assert abs(value - ours[key]) < 1e-6 * max(1.0, abs(value)), f"{key} differs: loop {value} vs batched {ours[key]}"
    print(f"item-by-item loop {t_loop:.1f} s, batched {t_ours:.1f} s: {t_loop / t_ours:.1f}x (values identical)")


if __name__ == "__main__":
    main()
