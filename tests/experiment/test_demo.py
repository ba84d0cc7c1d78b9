"""The main job end to end: `unlearn-audit demo --quick` on a cold cache, as CI runs it (once per module)."""

import contextlib
import io
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from unlearn_audit.cli import main

    out_dir = tmp_path_factory.mktemp("demo") / "demo"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["demo", "--quick", "--out", str(out_dir), "--quiet"])
    return code, buffer.getvalue(), out_dir


def test_quick_demo_produces_the_paper_table(quick_demo):
    code, out, folder = quick_demo
    assert code == 0, out
    assert "| Target |" in out and "Retained share" in out
    rows = json.loads((folder / "results.json").read_text())
    cells = {(r["model"], r["dtype"], r["scheme"]) for r in rows}
    for scheme in ("full", "rtn-int8-channel", "rtn-int4-g128"):
        assert ("target", None, scheme) in cells and ("retrained", None, scheme) in cells
        assert ("ga", "bf16", scheme) in cells and ("npo", "bf16", scheme) in cells
    for r in rows:
        for key in ("verbmem_f", "knowmem_f", "knowmem_r"):
            assert r[key] is None or 0 <= r[key] <= 100
        assert r["privleak"] is None or r["privleak"] >= -100  # (AUC - AUC_retrain) / AUC_retrain, AUC >= 0
    target = next(r for r in rows if r["model"] == "target" and r["scheme"] == "full")
    retrained = next(r for r in rows if r["model"] == "retrained" and r["scheme"] == "full")
    assert retrained["privleak"] == 0.0 and target["privleak"] < -50  # the reference itself; the target leaks
    assert target["knowmem_f"] > retrained["knowmem_f"] + 50  # the target knows the forget set, retrained not
    report = (folder / "report.md").read_text()
    assert "Against the paper" in report and "Weight bins" in report
    assert (folder / "knowledge_vs_precision.png").stat().st_size > 10_000


def test_quick_demo_shows_forgotten_knowledge_returning_after_int4(quick_demo):
    """The phenomenon in its shallow form (the tiny models' bound, docs/findings.md), in CI: pure-bf16
    unlearning at a small learning rate forgets, and int4 brings part of it back for every method (more than
    scoring.HOLDS: the forgetting does not hold); bins sees it in the weights. The grid was chosen on model
    seeds 1 and 2, where the same runs kept 89-93% and int4 brought back 26-37%; seed 0 (tested here) keeps
    91-92% and brings back 47-53% (2026-12-06)."""
    from unlearn_audit.scoring import FORGOT_SOMETHING, HOLDS

    _, _, folder = quick_demo
    summary = json.loads((folder / "summary.json").read_text())
    bf16 = [v for v in summary["verdicts"] if v["dtype"] == "bf16"]
    assert bf16 and all(v["retained"]["mean"] < FORGOT_SOMETHING for v in bf16)  # something was forgotten
    assert all((v["recovery"]["rtn-int4-g128"]["pooled"] or 0) > HOLDS for v in bf16), \
        [(v["label"], v["recovery"]) for v in bf16]
    for v in bf16:  # predicted from the weights alone: what does not survive along the update comes back
        predicted = 1 - v["bins"]["projected_survival"]
        assert abs(predicted - (v["recovery"]["rtn-int4-g128"]["pooled"] or 0)) <= 0.25, (v["label"], predicted,
                                                                                         v["recovery"])
    assert all(abs(v["recovery"]["rtn-int8-channel"]["pooled"] or 0) < 0.5 for v in bf16)  # int8 brings back little


def test_quick_demo_shows_pruning_bring_the_knowledge_back_and_the_control_untouched(quick_demo):
    """Beyond quantization: 30% magnitude pruning zeroes the small weights the bf16 update lives in, so
    what unlearning removed returns (at least half, for at least one method); the retrained control
    gains nothing from the same attack."""
    _, out, folder = quick_demo
    summary = json.loads((folder / "summary.json").read_text())
    bf16 = [v for v in summary["verdicts"] if v["dtype"] == "bf16"]
    # None: the pruned target knows < 5 points more than the unlearned model (nothing measurable to return to)
    assert any((v["recovery"]["prune:magnitude:0.3"]["pooled"] or 0) >= 0.5 for v in bf16), [v["recovery"] for v in bf16]
    report = (folder / "report.md").read_text()
    control = next(line for line in report.splitlines() if line.startswith("| Retrained (control)"))
    gain = float(control.split("|")[3].strip().rstrip("%")) / 100
    assert abs(gain) < 0.1, control
    assert "other recovery attacks" in report and "recovery under the other attacks" in out
