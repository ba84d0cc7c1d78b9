"""The main job end to end: `unlearn-audit demo --quick` on a cold cache, as CI runs it."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_produces_the_paper_table(run_cli, tmp_path):
    code, out, _ = run_cli("demo", "--quick", "--out", tmp_path / "demo", "--quiet")
    assert code == 0, out
    assert "| Target |" in out and "Retained share" in out
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())
    cells = {(r["model"], r["dtype"], r["scheme"]) for r in rows}
    for scheme in ("full", "rtn-int8-channel", "rtn-int4-g128"):
        assert ("target", None, scheme) in cells and ("retrained", None, scheme) in cells
        assert ("ga_gdr", "bf16", scheme) in cells and ("npo_klr", "bf16", scheme) in cells
    for r in rows:
        for key in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak"):
            assert r[key] is None or 0 <= r[key] <= 100 or key == "privleak"
    target = next(r for r in rows if r["model"] == "target" and r["scheme"] == "full")
    retrained = next(r for r in rows if r["model"] == "retrained" and r["scheme"] == "full")
    assert target["knowmem_f"] > retrained["knowmem_f"] + 50  # the target knows the forget set, retrained not
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "Against the paper" in report and "Weight bins" in report
    assert (tmp_path / "demo" / "knowledge_vs_precision.png").stat().st_size > 10_000
