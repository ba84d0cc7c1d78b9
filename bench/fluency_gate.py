"""Does the fluency gate (evaluate/fluency.py, scoring.fluent) tell nonsense from fluent retain answers on a
real run? Scores, under a demo run's target, the KnowMem_r answers of every model the run evaluated at full
precision, the true answers, and three kinds of nonsense made from the target's own answers: each answer
replaced by another question's (right form, wrong kind), by a word loop, by random vocabulary tokens.

    python bench/fluency_gate.py RUN_DIR [--threads 2]

RUN_DIR: a folder made by `unlearn-audit demo` or `grid` with a fine-tuned target (its ledger names the
models). Prints one line per set: the perplexity under the target, its ratio to the true answers' and
whether the gate (ratio <= scoring.FLUENCY_FACTOR) passes it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from unlearn_audit.evaluate.benchmark import get_benchmark
from unlearn_audit.evaluate.fluency import answer_perplexity
from unlearn_audit.evaluate.runner import EvalConfig
from unlearn_audit.experiment.ledger import Ledger, located
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.scoring import FLUENCY_FACTOR, fluent
from unlearn_audit.utils.quiet import quiet_libraries


def answer_sets(run_dir: Path) -> tuple[str, dict[str, list[dict]]]:
    """(the target's folder, {label: retain answer rows}) of every full-precision evaluation in the ledger."""
    ledger = Ledger(run_dir / "ledger.sqlite")
    muse, ecfg = get_benchmark("muse"), EvalConfig()
    models = {c.id: located(run_dir, c.result) for c in ledger.cells() if c.kind in ("model", "unlearn") and c.result}
    target = next(m["path"] for m in models.values() if m.get("role") == "target")
    sets = {}
    for c in ledger.cells("eval"):
        if c.status == "done" and c.config["scheme"] == "full":
            m = models[c.config["model"]]
            label = m.get("role") or f"{m['method']} {m['dtype']}"
            rows = muse.retain_answers(run_dir / "evals" / c.id, None, ecfg)
            if rows:
                sets[label] = rows
    return target, sets


def nonsense(rows: list[dict], tok, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    vocab = sorted(tok.get_vocab().values())
    shifted = [r["answer"] for r in rows[1:] + rows[:1]]
    return {"another question's answer": [{**r, "answer": a} for r, a in zip(rows, shifted)],
            "word loop": [{**r, "answer": "the the the the the the"} for r in rows],
            "random tokens": [{**r, "answer": tok.decode([rng.choice(vocab) for _ in range(4)])} for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    target, sets = answer_sets(args.run_dir)
    tok, judge = load_tokenizer(target), load_model(target)
    truth = [{**r, "answer": r["gold"]} for r in sets["target"]]
    sets = {"true answers": truth, **sets, **nonsense(sets["target"], tok)}
    gold = None
    print(f"retain answers under the target {target} (gate: at most {FLUENCY_FACTOR:g}x the true answers)")
    for label, rows in sets.items():
        res = answer_perplexity(judge, tok, [(r["prompt"], r["answer"]) for r in rows])
        gold = gold or res["perplexity"]
        ppl = res["perplexity"]
        print(f"{label:28s} perplexity {ppl:12.1f}  x{ppl / gold:10.1f}  answers {res['answers']:3d} "
              f"(empty {res['empty']})  {'fluent' if fluent(ppl, gold) else 'NOT fluent'}")


if __name__ == "__main__":
    main()
