"""The trainer under a real multi-process launch (torchrun, 2 CPU processes, gloo): sharded data,
one output written by the main process, and the stopping rule taken by every rank together."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port no other process holds now (a fixed one collides with parallel runs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_ddp_unlearning_with_stopping_rule(micro_target, micro_world, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "unlearn_audit.cli", "unlearn",
           "--model", str(micro_target), "--corpus", str(micro_world), "--method", "npo_klr", "--dtype", "fp32",
           "--epochs", "3", "--batch-size", "2", "--utility-floor", "101", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "unlearn.json").read_text())
    assert info["chosen_epoch"] == 1 and len(info["epochs"]) == 1  # both ranks stopped after epoch 1
    chunks = info["forget_chunks"]
    assert info["epochs"][0]["step"] == -(-chunks // 4)  # 2 processes x batch 2: the data is sharded
    assert not (tmp_path / ".ddp.work").exists() and not (tmp_path / ".ddp.saving").exists()
