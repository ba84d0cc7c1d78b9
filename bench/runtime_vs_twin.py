"""llama.cpp itself against the torch twin: do they give the same answers? (issue 33 item 6)

    python bench/runtime_vs_twin.py --model M [M ...] --corpus C --scheme gguf-q4_k_m --out DIR

Per model, four evaluations of the grid's MUSE metrics (VerbMem at the reference length, PrivLeak's
forget and holdout texts): torch fp32 and an F32 GGUF in llama.cpp (the floor: llama.cpp's CPU matrix
products quantize the activations, so even unquantized weights give other logits), then the torch twin of
`--scheme` (quantize/gguf.py) and llama.cpp's own quantization of the same model to that type. Printed per
pair: the share of KnowMem questions answered identically (forget and retain), the metrics of both and their
difference, the per-text mean NLL difference of PrivLeak's texts (median and largest), and the
seconds each evaluation took. Evaluations are kept in DIR (a re-run reuses them).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_to_folder
from unlearn_audit.models.loading import LoadOptions
from unlearn_audit.models.spec import ModelSpec
from unlearn_audit.quantize import QuantizeOptions
from unlearn_audit.utils.quiet import quiet_libraries

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak"]


def evaluation(model: str, corpus: Corpus, scheme: str, runtime: str, out: Path, limit: int | None) -> dict:
    """One evaluation, kept in `out` (metrics.json read back when it is there)."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    cfg = EvalConfig(metrics=METRICS, limit=limit, verbmem_length="reference", privleak_scope="metric")
    return evaluate_to_folder(ModelSpec.of(model), corpus, cfg, out, scheme, "fp32", "cpu", LoadOptions(),
                              QuantizeOptions(), show=False, runtime=runtime)


def answers(folder: Path, metric: str) -> list[str]:
    return [row["response"] for row in json.loads((folder / metric / "log.json").read_text())]


def text_scores(folder: Path) -> list[float]:
    """Each PrivLeak text's mean NLL (MUSE's "PPL" score), forget then holdout."""
    log = json.loads((folder / "privleak" / "log.json").read_text())
    return [row["PPL"] for split in sorted(log) for row in log[split]]


def compare(name: str, a: tuple[str, dict, Path], b: tuple[str, dict, Path]) -> list[str]:
    (la, ra, fa), (lb, rb, fb) = a, b
    lines = [f"{name}: {la} vs {lb}"]
    for metric in ("knowmem_f", "knowmem_r"):
        x, y = answers(fa, metric), answers(fb, metric)
        same = sum(p == q for p, q in zip(x, y))
        lines.append(f"  {metric} answers identical: {same}/{len(x)} ({same / len(x):.1%})")
    for metric in METRICS:
        lines.append(f"  {metric}: {ra[metric]:.2f} vs {rb[metric]:.2f} (difference {rb[metric] - ra[metric]:+.2f})")
    diffs = [abs(p - q) for p, q in zip(text_scores(fa), text_scores(fb))]
    lines.append(f"  PrivLeak texts' mean NLL difference: median {statistics.median(diffs):.4f}, "
                 f"largest {max(diffs):.4f} ({len(diffs)} texts)")
    lines.append(f"  seconds: {ra['seconds']['total']:.0f} vs {rb['seconds']['total']:.0f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--scheme", default="gguf-q4_k_m")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        from unlearn_audit.quantize.llamacpp import runtime_source

        corpus = Corpus.open(args.corpus)
        for model in args.model:
            runtime_source(model, args.scheme)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    quiet_libraries()
    out = Path(args.out)
    for i, model in enumerate(args.model):
        runs = {}
        for label, scheme, runtime in (("torch fp32", "full", "torch"), ("llama.cpp F32", "full", "llama.cpp"),
                                       (f"torch twin {args.scheme}", args.scheme, "torch"),
                                       (f"llama.cpp {args.scheme}", args.scheme, "llama.cpp")):
            folder = out / f"model{i}" / f"{scheme}-{runtime}"
            runs[label] = (label, evaluation(model, corpus, scheme, runtime, folder, args.limit), folder)
        labels = list(runs)
        print("\n".join(compare(f"{model} (floor)", runs[labels[0]], runs[labels[1]])))
        print("\n".join(compare(f"{model} ({args.scheme})", runs[labels[2]], runs[labels[3]])))
        record = runs[labels[3]][1].get("runtime") or {}
        print(f"  llama.cpp applied: {record.get('ftype')} ({record.get('system_info', '')[:80]})")


if __name__ == "__main__":
    main()
