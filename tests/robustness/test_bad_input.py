"""Every sub-command against classes of bad input: exit code 2, one `error:` line, no traceback, and no
new or changed output. A new command or input class joins by adding a row to CASES."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

BAD_MODEL_MISSING = "/nonexistent/model"


@pytest.fixture(scope="module")
def inputs(micro_world, micro_target, micro_retrained, tmp_path_factory) -> dict[str, Path]:
    """Good inputs and broken copies of them, made once."""
    root = tmp_path_factory.mktemp("bad inputs")  # a path with a space, on purpose
    truncated = root / "truncated model"
    shutil.copytree(micro_target, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    not_safetensors = root / "garbage model"
    shutil.copytree(micro_target, not_safetensors)
    (not_safetensors / "model.safetensors").write_bytes(b"\x00" * 64)
    bad_qa = root / "corpus bad qa"
    shutil.copytree(micro_world, bad_qa)
    (bad_qa / "knowmem" / "forget_qa.json").write_text('[{"question": "Where?"}]')  # no answer field
    bad_raw = root / "corpus bad raw"
    shutil.copytree(micro_world, bad_raw)
    (bad_raw / "raw" / "forget.json").write_text("[1, 2")  # malformed JSON
    empty_dir = root / "empty"
    empty_dir.mkdir()
    other = root / "other architecture"
    shutil.copytree(micro_target, other)
    from safetensors.torch import load_file, save_file

    state = load_file(str(other / "model.safetensors"))
    name = next(n for n in state if n.endswith("q_proj.weight"))
    state[name] = state[name][:64].contiguous()  # a narrower layer: not the same architecture
    save_file(state, str(other / "model.safetensors"))
    wrong_tokenizer = root / "wrong tokenizer"
    shutil.copytree(micro_target, wrong_tokenizer)
    config = json.loads((wrong_tokenizer / "config.json").read_text())
    config["vocab_size"] = 64  # the tokenizer's ids go far beyond: config and tokenizer disagree
    (wrong_tokenizer / "config.json").write_text(json.dumps(config))
    nonfinite = root / "nan model"
    shutil.copytree(micro_target, nonfinite)
    state = load_file(str(nonfinite / "model.safetensors"))
    state[name] = state[name].clone()
    state[name][0, 0] = float("nan")
    save_file(state, str(nonfinite / "model.safetensors"))
    no_perturbed = root / "tofu without perturbed answers"
    shutil.copytree(micro_world, no_perturbed)
    items = json.loads((no_perturbed / "tofu" / "forget.json").read_text())
    (no_perturbed / "tofu" / "forget.json").write_text(json.dumps([{"question": i["question"], "answer": i["answer"]}
                                                                    for i in items]))
    three_options = root / "wmdp with three options"
    shutil.copytree(micro_world, three_options)
    items = json.loads((three_options / "wmdp" / "forget" / "world.json").read_text())
    items[2]["choices"] = items[2]["choices"][:3]
    (three_options / "wmdp" / "forget" / "world.json").write_text(json.dumps(items))
    muse_only = root / "muse only"
    shutil.copytree(micro_world, muse_only)
    shutil.rmtree(muse_only / "tofu")
    no_tokenizer = root / "model without tokenizer"
    shutil.copytree(micro_target, no_tokenizer)
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    own = root / "own model"
    shutil.copytree(micro_target, own)
    a_file = root / "a file"
    a_file.write_text("not a folder")
    grid = root / "grid with unknown method.yaml"
    grid.write_text(yaml.safe_dump({"methods": ["gradient_magic"]}))
    return {"world": micro_world, "target": micro_target, "retrained": micro_retrained, "truncated": truncated,
            "garbage": not_safetensors, "bad_qa": bad_qa, "bad_raw": bad_raw, "empty": empty_dir, "grid": grid,
            "other": other, "a_file": a_file, "nonfinite": nonfinite, "own": own,
            "wrong_tokenizer": wrong_tokenizer, "no_perturbed": no_perturbed, "three_options": three_options,
            "muse_only": muse_only, "no_tokenizer": no_tokenizer}


# (sub-command with placeholders, what the error must mention). {out} is a fresh output path.
CASES = {
    "eval: model folder missing": ("eval --model {missing} --corpus {world} --out {out}", "not found"),
    "eval: truncated weights": ("eval --model {truncated} --corpus {world} --out {out}", "truncated"),
    "eval: not safetensors": ("eval --model {garbage} --corpus {world} --out {out}", "not a readable safetensors"),
    "eval: QA item without answer": ("eval --model {target} --corpus {bad_qa} --out {out}", "lacks the field 'answer'"),
    "eval: corpus missing": ("eval --model {target} --corpus {missing} --out {out}", "not found"),
    "eval: tokenizer of another model": ("eval --model {wrong_tokenizer} --corpus {world} --out {out}",
                                         "belongs to another model"),
    "eval: empty folder as model": ("eval --model {empty} --corpus {world} --out {out}", "config.json"),
    "eval: TOFU set without perturbed answers": (
        "eval --model {target} --corpus {no_perturbed} --benchmark tofu --out {out}", "lacks the field 'paraphrased_answer'"),
    "eval: WMDP item with three options": (
        "eval --model {target} --corpus {three_options} --benchmark wmdp --out {out}", "has 3 choices"),
    "eval: a benchmark the corpus lacks": (
        "eval --model {target} --corpus {muse_only} --benchmark tofu --out {out}", "holds no TOFU files"),
    "eval: no benchmark in the folder": ("eval --model {target} --corpus {empty} --out {out}", "holds no benchmark"),
    "eval: --tokenizer of another vocabulary": (
        "eval --model {wrong_tokenizer} --tokenizer {target} --corpus {world} --out {out}", "is another model's tokenizer"),
    "eval: checkpoint without a tokenizer": ("eval --model {no_tokenizer} --corpus {world} --out {out}", "--tokenizer"),
    "eval: reference log on MUSE": (
        "eval --model {target} --corpus {world} --reference-log {a_file} --out {out}", "TOFU retain-model log"),
    "audit: TOFU reference log that is not one": (
        "audit --target {target} --unlearned {target} --corpus {world} --benchmark tofu --reference-log {a_file} "
        "--out {out}", "malformed JSON"),
    "quantize: truncated weights": ("quantize --model {truncated} --scheme rtn-int4-g128 --out {out}", "truncated"),
    "quantize: 9-bit scheme": ("quantize --model {target} --scheme rtn-int9-g128 --out {out}", "2 to 8 bits"),
    "quantize: group size does not divide the layers": (
        "quantize --model {target} --scheme gptq-int4-g96 --calibration {world} --out {out}", "not a multiple of 96"),
    "bins: model folder missing": ("bins --target {target} --unlearned {missing} --out {out}", "not found"),
    "bins: truncated weights": ("bins --target {target} --unlearned {truncated} --out {out}", "truncated"),
    "bins: pair of different architectures": ("bins --target {target} --unlearned {other} --out {out}",
                                               "differ in shape"),
    "quantize: output inside a file": ("quantize --model {target} --scheme rtn-int8-channel --out {a_file}/q",
                                       "a file"),
    "unlearn: truncated weights": ("unlearn --model {truncated} --corpus {world} --method ga --out {out}", "truncated"),
    "unlearn: malformed forget texts": (
        "unlearn --model {target} --corpus {bad_raw} --method ga --out {out}", "malformed JSON"),
    "unlearn: unknown method": ("unlearn --model {target} --corpus {world} --method gradient_magic --out {out}",
                                "method"),
    "audit: QA item without answer": (
        "audit --target {target} --unlearned {target} --corpus {bad_qa} --out {out}", "lacks the field 'answer'"),
    "audit: target knows nothing to forget": (
        "audit --target {retrained} --unlearned {retrained} --retrained {retrained} --corpus {world} "
        "--metrics knowmem_f --schemes full,rtn-int4-g128 --limit 6 --out {out}", "nothing to forget"),
    "grid: unknown method": ("grid --config {grid} --out {out}", "unknown method"),
    "finetune: truncated weights": ("finetune --model {truncated} --corpus {world} --out {out}", "truncated"),
    "finetune: malformed retain texts": ("finetune --model {target} --corpus {bad_raw} --out {out}", "malformed JSON"),
    "convert: not a gguf file": ("convert --model {target} --out {out}", "convert reads .gguf files"),
    "unlearn: training through GPTQ": (
        "unlearn --model {target} --corpus {world} --method qat --through gptq-int4-g128 --out {out}",
        "only rtn-* and bnb-fp4/bnb-nf4"),
    "report: not a run folder": ("report {empty}", "not a run folder"),
    "grid: shard spec out of range": ("grid --config {grid} --shard 4/3 --out {out}", "--shard must be I/N"),
    "report: shards merged without --out": ("report {empty} {empty}", "give --out"),
    "train-tiny: corpus missing": ("train-tiny --corpus {missing} --role target", "not found"),
    "world: no people": ("world --out {out} --people 0", "people"),
    "eval: weights holding NaN": ("eval --model {nonfinite} --corpus {world} --out {out}", "NaN/inf"),
    "quantize: output is the input model": ("quantize --model {own} --scheme rtn-int8-channel --out {own}",
                                            "is the input --model"),
    "finetune: output inside the input model": ("finetune --model {own} --corpus {world} --out {own}/ft",
                                                "lies inside the input --model"),
    "unlearn: output contains the input model": ("unlearn --model {own} --corpus {world} --method ga --out {own}/..",
                                                 "contains the input --model"),
}


def expand(template: str, inputs: dict, out: Path) -> list[str]:
    values = {**{k: str(v) for k, v in inputs.items()}, "missing": BAD_MODEL_MISSING, "out": str(out)}
    return [part.format(**values) for part in template.split()]


def visible_lines(text: str) -> list[str]:
    """The lines a terminal shows: a carriage return (progress bars) overwrites what came before it."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_exit_2_and_no_output(case, inputs, run_cli, tmp_path):
    template, mention = CASES[case]
    out = tmp_path / "out folder"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = run_cli(*expand(template, inputs, out))
    assert code == 2, (stdout[-500:], stderr[-500:])
    lines = visible_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert mention in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
    if "audit" not in template:  # audit writes its finished evaluations so a re-run resumes them
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, not even scratch space


def test_an_output_onto_its_input_leaves_the_input_untouched(inputs, run_cli):
    before = {p.name: p.read_bytes() for p in inputs["own"].iterdir()}
    for case in ("quantize: output is the input model", "finetune: output inside the input model"):
        assert run_cli(*expand(CASES[case][0], inputs, inputs["own"]))[0] == 2
    assert {p.name: p.read_bytes() for p in inputs["own"].iterdir()} == before


def test_nonfinite_weights_load_on_request(inputs):
    from unlearn_audit.models.loading import LoadOptions, load_model

    model = load_model(inputs["nonfinite"], opts=LoadOptions(allow_nonfinite=True))
    assert any(not p.isfinite().all() for p in model.parameters())


def test_audit_refuses_a_target_with_nothing_to_forget_before_quantized_evaluations(inputs, run_cli, tmp_path):
    template, _ = CASES["audit: target knows nothing to forget"]
    out = tmp_path / "audit"
    code, _, _ = run_cli(*expand(template, inputs, out))
    assert code == 2
    evaluated = {p.parent.name + "/" + p.name for p in out.glob("evals/*/*") if p.is_dir()}
    assert evaluated <= {"retrained/full", "target/full"}, evaluated  # nothing quantized, no unlearned model


def test_outputs_respect_the_umask(inputs, run_cli, tmp_path):
    old = os.umask(0o022)
    try:
        code, _, _ = run_cli("quantize", "--model", inputs["target"], "--scheme", "rtn-int8-channel",
                             "--out", tmp_path / "q")
    finally:
        os.umask(old)
    assert code == 0
    folder = stat.S_IMODE((tmp_path / "q").stat().st_mode)
    files = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "q").iterdir()}
    assert folder == 0o755 and files == {0o644}, (oct(folder), [oct(m) for m in files])
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["scheme"] == "rtn-int8-channel"


def test_failed_unlearn_leaves_no_scratch_folder(inputs, run_cli, tmp_path):
    code, _, _ = run_cli("unlearn", "--model", inputs["truncated"], "--corpus", inputs["world"], "--method", "ga",
                         "--out", tmp_path / "u")
    assert code == 2
    assert list(tmp_path.iterdir()) == []  # no u, no hidden .u.work


def test_demo_with_a_missing_grid_file_is_one_error_line(run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("UNLEARN_AUDIT_DEMO_CONFIG", str(tmp_path / "no such grid.yaml"))
    code, _, stderr = run_cli("demo", "--out", tmp_path / "demo")
    assert code == 2 and visible_lines(stderr)[0].startswith("error: ") and len(visible_lines(stderr)) == 1
    assert not (tmp_path / "demo").exists()


def test_sigint_mid_training_stops_cleanly_keeps_the_work_and_writes_no_model(inputs, tmp_path):
    """Ctrl-C during `unlearn`: exit 130, an 'interrupted' line, no traceback, no half-written model, and
    the scratch folder kept so the same command resumes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "unlearn_audit.cli",
            *expand("unlearn --model {target} --corpus {world} --method ga --epochs 400 --out {out}", inputs, out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "UNLEARN_AUDIT_THREADS": "1"})
    work = tmp_path / ".out.work"
    deadline = time.time() + 120
    while time.time() < deadline and not list(work.glob("checkpoints/checkpoint-*")):
        time.sleep(0.2)  # wait until training has finished an epoch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stdout + stderr
    assert "interrupted: finished work is kept; run the same command again to resume" in stderr
    assert not out.exists() and work.is_dir()
