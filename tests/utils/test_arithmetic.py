"""The portable arithmetic (utils/arithmetic.py): asked for before a process computes, it is in effect and its
workers inherit it; asked for too late, it changes nothing; and it computes the recorded numbers."""

import json
import subprocess
import sys

import pytest

from unlearn_audit.utils.arithmetic import portable_available

pytestmark = pytest.mark.skipif(not portable_available(), reason="needs an x86-64 CPU with AVX2 and torch with MKL")

CHECK = """
import json, os, sys
import torch
from unlearn_audit.utils import arithmetic, environment
if sys.argv[1] == "late":
    torch.ones(8, 8) @ torch.ones(8, 8)
asked = arithmetic.use_portable_arithmetic()
print(json.dumps({"asked": asked, "arithmetic": arithmetic.arithmetic(), "mkl": arithmetic.mkl_branch(),
                  "aten": torch.backends.cpu.get_cpu_capability(), "threads": arithmetic.grid_threads(2),
                  "key": environment.numerics_key(1)["arithmetic"],
                  "env": {k: os.environ.get(k) for k in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", arithmetic.MARK)}}))
"""

# A tiny attention block trained for three AdamW steps in fp32, then rounded to bf16: matrix products (MKL),
# softmax, reductions and the optimizer (ATen's vectorized kernels), as tiny training and unlearning use them.
TRAIN = """
import hashlib, sys
import torch
from unlearn_audit.utils import arithmetic
if sys.argv[1] == "portable":
    assert arithmetic.use_portable_arithmetic()
torch.set_num_threads(1)
torch.manual_seed(0)
emb, qkv, out = torch.nn.Embedding(300, 64), torch.nn.Linear(64, 192), torch.nn.Linear(64, 300)
params = [*emb.parameters(), *qkv.parameters(), *out.parameters()]
opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
ids = torch.randint(0, 300, (8, 33))
for _ in range(3):
    h = emb(ids[:, :-1])
    q, k, v = qkv(h).split(64, dim=-1)
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    loss = torch.nn.functional.cross_entropy(out(torch.nn.functional.silu(a + h)).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad()
print(hashlib.sha256(b"".join(p.detach().to(torch.bfloat16).view(torch.int16).numpy().tobytes() for p in params)).hexdigest())
"""

# measured 2026-12-07 on an AMD EPYC (Zen 4, AVX-512) under the portable arithmetic; the claim is that every
# x86-64 CPU with AVX2 computes exactly this (an Intel Xeon's native arithmetic computes other weights)
PORTABLE_SHA256 = "021c968750ade670520d3350a1ca9949fa0b7255962a865766fc2fa7e0fcb35c"


def run(code: str, arg: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_asked_before_any_computation_it_is_in_effect_for_the_process_and_its_workers():
    got = json.loads(run(CHECK, "early"))
    assert got["asked"] and got["arithmetic"] == "portable"
    assert got["mkl"] == 3 and got["aten"] == "AVX2" and got["threads"] == 1
    assert got["key"] == "portable"  # tiny models trained so are cached apart from native ones
    assert got["env"] == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "UNLEARN_AUDIT_ARITHMETIC": "portable"}


def test_asked_after_a_computation_it_changes_nothing():
    """MKL has already chosen its branch: the process stays native, and its workers are not told otherwise."""
    got = json.loads(run(CHECK, "late"))
    assert not got["asked"] and got["arithmetic"] == "native" and got["mkl"] != 3 and got["key"] == "native"
    assert got["env"] == {"MKL_CBWR": None, "ATEN_CPU_CAPABILITY": None, "UNLEARN_AUDIT_ARITHMETIC": None}


def test_portable_training_computes_the_recorded_weights():
    """The promise of the built-in world's numbers on any CPU: three training steps give the weights measured
    on another machine, to the bit (fails where a kernel still sums in a CPU-dependent order)."""
    assert run(TRAIN, "portable") == PORTABLE_SHA256


def test_the_command_line_knows_which_commands_compute_in_the_built_in_world(tmp_path):
    """Read from the raw arguments, before the parser imports transformers' trainer (which runs a kernel)."""
    from unlearn_audit.cli import computes_in_the_built_in_world as built_in

    (tmp_path / "tiny.yaml").write_text("name: t\nmethods: [ga]\n")
    (tmp_path / "own.yaml").write_text("name: o\nbase: HuggingFaceTB/SmolLM2-135M\n")
    assert built_in(["demo", "--quick"]) and built_in(["-v", "demo", "--tiny", "--out", "x"])
    assert built_in(["train-tiny", "--corpus", "w", "--role", "target"])
    assert built_in(["grid", "--config", str(tmp_path / "tiny.yaml"), "--out", "x"])
    assert built_in(["grid", f"--config={tmp_path / 'tiny.yaml'}", "--out", "x"])
    assert not built_in(["demo"]) and not built_in(["demo", "--targets", "3"])
    assert not built_in(["grid", "--config", str(tmp_path / "own.yaml"), "--out", "x"])
    assert not built_in(["grid", "--config", str(tmp_path / "missing.yaml")]) and not built_in(["eval", "--quick"])
    assert not built_in([])
