"""`audit --attacks`: every family scored against the retrained control, and a re-run resumes."""

import json

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.experiment import audit as audit_mod

RELEARN = "steps=8,lr=1e-3"


def test_audit_scores_attacks_against_the_control_and_resumes(run_cli, micro_target, micro_retrained, ga_model,
                                                             micro_world, tmp_path, monkeypatch):
    attacks = ["cast:bf16", "prune:magnitude:0.2", f"relearn:retain:{RELEARN}",
               f"relearn:forget-part:share=0.5,{RELEARN}"]
    argv = ["audit", "--target", micro_target, "--unlearned", ga_model, "--retrained", micro_retrained,
            "--corpus", micro_world, "--metrics", "verbmem_f,knowmem_f,knowmem_r", "--out", tmp_path, "--quiet",
            "--attacks", *attacks]
    code, out, _ = run_cli(*argv)
    assert code in (0, 1), out
    report = json.loads((tmp_path / "audit.json").read_text())
    rows = {r["attack"]: r for r in report["attacks"]}
    assert list(rows) == attacks
    retain = rows[f"relearn:retain:{RELEARN}"]
    assert retain["unlearned"]["knowmem_f"] != retain["unlearned_full"]["knowmem_f"] or \
        retain["unlearned"]["verbmem_f"] != retain["unlearned_full"]["verbmem_f"]  # relearning moved it
    assert retain["control"] != retain["control_full"] and retain["control_gain"] is not None
    part = rows[f"relearn:forget-part:share=0.5,{RELEARN}"]
    assert part["evaluated_on"].startswith("held-out part")
    held = Corpus(part["evaluated_on"].split("(", 1)[1].rstrip(")"))
    assert len(held.knowmem("forget")) < len(Corpus(micro_world).knowmem("forget"))
    table = (tmp_path / "audit.md").read_text()
    assert all(f"| {a} |" in table for a in attacks) and "control gain" in table

    def no_loading(*args, **kwargs):
        raise AssertionError("a resumed audit must not load models again")

    monkeypatch.setattr(audit_mod, "load_attacked", no_loading)
    monkeypatch.setattr(audit_mod, "load_tokenizer", no_loading)
    code2, out2, _ = run_cli(*argv)
    assert code2 == code and json.loads((tmp_path / "audit.json").read_text())["attacks"] == report["attacks"]
