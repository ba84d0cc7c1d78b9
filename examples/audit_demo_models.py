"""Run `audit` with a list of attacks on every unlearned model of a demo (or grid) run folder and print one
markdown table: per method and regime, the recovery under each attack (mean ± spread over seeds) and, in
the last row, what the same attack gives the retrained control.

It is how docs/attacks.md measured the attacks the grid cannot tabulate (relearn:forget-part, scored on
a held-out part). Each model pair is audited in RUN/attack-audits/<model>/, so a re-run resumes.

    python examples/audit_demo_models.py unlearn-audit-demo --attacks "relearn:forget-part:steps=20,lr=3e-4"

The tiny target and retrained models are found through each model's unlearn.json (source_model) and the
training.json beside them (role and seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.experiment.audit import AuditConfig, audit


def retrained_for(target: Path) -> Path:
    """The retrained model trained with the same seed as `target`, in the same cache folder."""
    seed = json.loads((target / "training.json").read_text())["recipe"]["seed"]
    for cand in sorted(target.parent.glob("retrained-*")):
        info = json.loads((cand / "training.json").read_text())
        if info["recipe"]["seed"] == seed:
            return cand
    raise SystemExit(f"no retrained model with seed {seed} next to {target}")


def spread(xs: list[float]) -> str:
    mean = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * mean:.0f}% ± {100 * sd:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--attacks", nargs="+", required=True)
    ap.add_argument("--metrics", default="verbmem_f,knowmem_f,knowmem_r")
    ap.add_argument("--by", nargs="*", default=[], help="unlearning options that also tell runs apart (e.g. alpha)")
    args = ap.parse_args()
    corpus = Corpus(args.run_dir / "corpus")
    recovery: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    gains: dict[tuple[str, str], float] = {}  # (target, attack) -> the control's gain, once per seed
    names: list[str] = []
    for model in sorted((args.run_dir / "models").glob("unlearn-*")):
        info = json.loads((model / "unlearn.json").read_text())
        target = Path(info["source_model"])
        cfg = AuditConfig(attacks=args.attacks, metrics=args.metrics.split(","))
        report = audit(str(target), str(model), corpus, cfg, str(retrained_for(target)),
                       args.run_dir / "attack-audits" / model.name, show=False, say=lambda _: None)
        key = (info["method"], info["config"]["dtype"], *(f"{k} {info['config'][k]}" for k in args.by))
        for row in report["attacks"]:
            names += [row["attack"]] if row["attack"] not in names else []
            if row["recovery"] is not None:
                recovery[key][row["attack"]].append(row["recovery"])
            if row["control_gain"] is not None:
                gains[(str(target), row["attack"])] = row["control_gain"]
        print(f"{model.name} {key[0]} {key[1]} seed {info['config']['seed']}: {report['verdict']}", flush=True)
    print("\n| Unlearned model | " + " | ".join(f"{a}: recovery" for a in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for (method, dtype, *extra), recs in sorted(recovery.items()):
        label = ", ".join([dtype, *extra])
        print(f"| {method.upper()} ({label}) | " + " | ".join(spread(recs[a]) if recs[a] else "-" for a in names) + " |")
    control = [[g for (_, a), g in gains.items() if a == name] for name in names]
    print("| Retrained (control): gain | " + " | ".join(spread(g) if g else "-" for g in control) + " |")

if __name__ == "__main__":
    main()
