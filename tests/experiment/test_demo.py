"""The main job end to end: `unlearn-audit demo --quick` on a cold cache, as CI runs it (once per module), in a
process of its own as a user starts it, so it computes with the portable arithmetic (utils/arithmetic.py)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "demo"
    from unlearn_audit.utils.threads import default_threads

    workers = str(min(2, default_threads()))  # the demo's 2, or 1 where a parallel test run gives this file 1 core
    done = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", "demo", "--quick", "--out", str(out_dir),
                           "--workers", workers, "--quiet"], capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr, out_dir


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
    from unlearn_audit.utils.arithmetic import portable_available

    arithmetic = {e["arithmetic"] for e in json.loads((folder / "environment.json").read_text())["environments"]}
    if portable_available():  # x86-64 with AVX2 (CI): the same numbers on every such CPU
        assert arithmetic == {"portable"} and "arithmetic: portable" in out


def test_quick_demo_shows_int4_undoing_part_of_every_bf16_update(quick_demo):
    """The paper's mechanism in the weights, in CI: pure-bf16 unlearning at a small learning rate forgets
    something, and int4 erases most of each update's mass (the small weights it moved fall back into the
    target's bins) and undoes more than 15% of it along its direction; int8 brings back little. Whether
    the knowledge itself returns is not asserted: at this size it is a wide distribution over model seeds
    (the quick demo's grid, chosen by a written rule on seeds 1-3 under the portable arithmetic, brought back
    14-64% there and 0% / -11% on seed 0, the one tested here; docs/findings.md section 21). The thresholds
    hold on every selection run with margin (erased mass 85-89%, projected survival 0.63-0.75, int8 0-3%)."""
    from unlearn_audit.scoring import FORGOT_SOMETHING, HOLDS

    _, _, folder = quick_demo
    summary = json.loads((folder / "summary.json").read_text())
    bf16 = [v for v in summary["verdicts"] if v["dtype"] == "bf16"]
    assert len(bf16) == 2 and all(v["retained"]["mean"] < FORGOT_SOMETHING for v in bf16)  # something was forgotten
    for v in bf16:
        assert v["bins"]["scheme"] == "rtn-int4-g128" and v["bins"]["erased_mass_share"] > 0.75, v["bins"]
        assert 1 - v["bins"]["projected_survival"] > 1.5 * HOLDS, v["bins"]  # int4 undoes a part of it
        assert v["recovery"]["rtn-int4-g128"]["pooled"] is not None  # measured: the target had more to return to
    assert all(abs(v["recovery"]["rtn-int8-channel"]["pooled"] or 0) < 0.25 for v in bf16)  # int8 brings back little


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
