"""FP8 E4M3, MXFP4 and NVFP4 as weight-only fake quantization (quantize/floats.py), each checked bit for bit
against the library that defines what is deployed (compressed-tensors, gguf-py) and against references
written here from the formats' definitions (value tables, not torch's float8 cast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model
from unlearn_audit.quantize import floats, parse_scheme, quantized_model

F32 = np.float32
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def weights(rows=64, cols=256, seed=0) -> torch.Tensor:
    """Gaussian rows with an all-zero row, a zero block, an outlier, exact ties of the FP4 grids and values
    beyond the largest code of their block."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen) * 0.02
    x[3] = 0
    x[5, :32] = 0
    x[7, 3] = 1.0
    x[9, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5] * 4) / 8  # MX ties (X = 1/8)
    x[11, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 2) / 6  # NVFP4 ties at its max
    x[13] = -x[13].abs()
    return x


# ----------------------------------------------------------------------------- references from the definitions


def e4m3_table() -> tuple[np.ndarray, np.ndarray]:
    """Every finite non-negative E4M3 value (bias 7, 3 mantissa bits, S.1111.111 is NaN) and its code."""
    codes = np.arange(127)
    e, m = codes >> 3, codes & 7
    values = np.where(e == 0, m / 8 * 2.0**-6, (1 + m / 8) * 2.0 ** (e - 7))
    return values, codes


def nearest(a: np.ndarray, values: np.ndarray, codes: np.ndarray, ties: str) -> np.ndarray:
    """The value of `values` (ascending) nearest to each a >= 0, ties to the even code or to the smaller."""
    i = np.clip(np.searchsorted(values, a), 1, len(values) - 1)
    lo, hi = values[i - 1], values[i]
    up = (hi - a < a - lo) | ((hi - a == a - lo) & (codes[i] % 2 == 0) & (ties == "even"))
    return np.where(a >= values[-1], values[-1], np.where(up, hi, lo))


def e4m3_ref(r: np.ndarray) -> np.ndarray:
    values, codes = e4m3_table()
    return (np.sign(r) * nearest(np.abs(r.astype(np.float64)), values, codes, "even")).astype(F32)


def e2m1_ref(r: np.ndarray, ties: str) -> np.ndarray:
    return (np.sign(r) * nearest(np.abs(r.astype(np.float64)), E2M1, np.arange(8), ties)).astype(F32)


def fp8_ref(x: np.ndarray, per_tensor: bool) -> np.ndarray:
    amax = np.abs(x).max() if per_tensor else np.abs(x).max(axis=1, keepdims=True)
    s = np.maximum(amax / F32(448), np.finfo(F32).eps).astype(F32)
    return (e4m3_ref((x / s).astype(F32)) * s).astype(F32)


def mxfp4_ref(x: np.ndarray) -> np.ndarray:
    """OCP MX: X = 2^(floor(log2 amax) - emax_elem), emax_elem = 2 for E2M1; elements nearest, ties to the
    smaller magnitude (llama.cpp), saturating; all in exact float64."""
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 32):
            block = x[r, b:b + 32].astype(np.float64)
            amax = np.abs(block).max()
            if amax == 0:
                continue
            scale = 2.0 ** (np.frexp(amax)[1] - 1 - 2)
            out[r, b:b + 32] = e2m1_ref(block / scale, "smaller") * scale
    return out


def nvfp4_ref(x: np.ndarray) -> np.ndarray:
    """NVFP4: g = 448 * 6 / amax (float32), E4M3 block scale of g * amax(16) / 6 (0 -> 0.125), elements E2M1
    nearest even of w / (s / g), times s / g, in float32 as compressed-tensors orders the operations."""
    g = (F32(2688) / np.abs(x).max()).astype(F32)
    blocks = x.reshape(x.shape[0], -1, 16)
    s = e4m3_ref((g * (np.abs(blocks).max(axis=2) / F32(6))).astype(F32))
    eff = (np.where(s == 0, F32(0.125), s) / g).astype(F32)[..., None]
    r = np.clip((blocks / eff).astype(F32), -6, 6)
    return (e2m1_ref(r, "even") * eff).astype(F32).reshape(x.shape)


# ----------------------------------------------------------------------------- against the references


def test_ties_round_to_even_codes_except_llama_cpps_mxfp4_which_rounds_them_down():
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.75, -0.1])
    assert floats.e2m1_even(ties).tolist() == [0, 1, 1, 2, 2, 4, 4, 6, -1, -0.0]
    assert floats.e2m1_down(ties).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, 0]
    assert e2m1_ref(ties.numpy(), "even").tolist() == floats.e2m1_even(ties).tolist()
    e4m3_ties = torch.tensor([1.0625, 1.1875, 2.0**-10, 3 * 2.0**-10, 500.0, -464.0])  # S.1111.111 is NaN: saturate
    assert floats.e4m3(e4m3_ties).tolist() == [1.0, 1.25, 0.0, 2.0**-8, 448.0, -448.0]
    assert e4m3_ref(e4m3_ties.clamp(-448, 448).numpy()).tolist() == floats.e4m3(e4m3_ties).tolist()


@pytest.mark.parametrize("per_tensor", [False, True])
def test_fp8_equals_the_e4m3_definition(per_tensor):
    x = weights()
    assert torch.equal(floats.fp8(x, per_tensor)[1], torch.from_numpy(fp8_ref(x.numpy(), per_tensor)))


def test_mxfp4_equals_the_ocp_definition_and_gguf_py_bit_for_bit():
    x = weights()
    codes, ours, _ = floats.mxfp4(x)
    assert torch.equal(ours, torch.from_numpy(mxfp4_ref(x.numpy())))
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    blocks = quantize(x.numpy(), GGMLQuantizationType.MXFP4)
    assert torch.equal(ours, torch.from_numpy(dequantize(blocks, GGMLQuantizationType.MXFP4)))
    shared = torch.from_numpy(blocks.reshape(-1, 17)[:, 0].astype(np.int64)) - 127  # the E8M0 byte of each block
    nonzero = x.reshape(-1, 32).abs().amax(1) > 0
    scale = (ours / torch.where(codes == 0, torch.nan, codes)).reshape(-1, 32).nanmean(1)
    assert torch.equal(torch.exp2(shared.float())[nonzero], scale[nonzero])
    assert ours[9, :8].tolist() == [0.0, 0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.75]  # ties down, 6.5 -> 6


def test_nvfp4_equals_the_definition_and_compressed_tensors_bit_for_bit():
    x = weights()
    ours = floats.nvfp4(x)[1]
    assert torch.equal(ours, torch.from_numpy(nvfp4_ref(x.numpy())))
    ct = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = ct.preset_name_to_scheme("NVFP4A16", ["Linear"]).weights
    gs = generate_gparam(x.min().reshape(1), x.max().reshape(1))
    groups = x.reshape(x.shape[0], -1, 16)
    scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gs)
    assert torch.equal(ours, fake_quantize(x, scale, zero, args, global_scale=gs))


@pytest.mark.parametrize("preset, per_tensor", [("FP8_DYNAMIC", False), ("FP8", True)])
def test_fp8_weights_equal_compressed_tensors(preset, per_tensor):
    ct = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    x = weights()
    args = ct.preset_name_to_scheme(preset, ["Linear"]).weights
    lo, hi = (x.min().reshape(1), x.max().reshape(1)) if per_tensor else (x.amin(1, keepdim=True), x.amax(1, keepdim=True))
    scale, zero = calculate_qparams(lo, hi, args)
    assert torch.equal(floats.fp8(x, per_tensor)[1], fake_quantize(x, scale, zero, args))


def test_fp8_dynamic_activations_equal_compressed_tensors_per_token():
    ct = pytest.importorskip("compressed_tensors.quantization")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(3))
    x[1, 2] = 0
    args = ct.preset_name_to_scheme("FP8_DYNAMIC", ["Linear"]).input_activations
    scale, zero = compute_dynamic_scales_and_zp(x, args, module=torch.nn.Linear(256, 4))
    assert torch.equal(floats.activation_hook(None, (x,))[0], fake_quantize(x, scale, zero, args))


def test_steps_are_the_spacing_of_the_code_times_its_scale():
    x = weights()
    for kind in ("e4m3", "mxfp4", "nvfp4"):
        codes, deq, step = floats.quantize_rows(x, kind)
        scale = torch.where(codes != 0, deq / codes, 0)
        spacing = floats.e4m3_spacing(codes) if kind == "e4m3" else floats.e2m1_spacing(codes)
        nz = codes != 0
        assert torch.allclose(step[nz], (spacing * scale)[nz], rtol=1e-6, atol=0), kind


# ----------------------------------------------------------------------------- on a model


def test_a_model_gets_its_linears_quantized_and_nvfp4_shares_fused_global_scales(make_llama):
    folder = make_llama()
    base = load_model(folder)
    model = quantized_model(folder, "nvfp4")
    attn = base.model.layers[0].self_attn
    amax = max(float(m.weight.detach().abs().max()) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    expected = floats.nvfp4(attn.q_proj.weight.detach(), amax)[1]
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, expected)
    o = attn.o_proj.weight.detach()  # not fused: its own absmax
    assert torch.equal(model.model.layers[0].self_attn.o_proj.weight, floats.nvfp4(o)[1])
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)  # the head and embeddings stay
    assert torch.equal(model.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert model.quantization_record["formats"]["model.layers.1.mlp.down_proj.weight"] == "nvfp4"


def test_fp8_dynamic_quantizes_each_linear_input_at_run_time(make_llama):
    folder = make_llama()
    model = quantized_model(folder, "fp8-dynamic")
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(1, 3, layer.in_features)
    expected = torch.nn.functional.linear(floats.activation_hook(None, (x,))[0], layer.weight)
    assert torch.equal(layer(x), expected)
    w = load_model(folder).model.layers[0].mlp.down_proj.weight.detach()
    assert torch.equal(layer.weight, floats.fp8(w, False)[1])


def test_widths_the_block_does_not_divide_are_refused_in_one_line(make_llama):
    folder = make_llama(hidden=128, intermediate=200)
    for scheme in ("mxfp4", "nvfp4"):
        with pytest.raises(UserError) as err:
            quantized_model(folder, scheme)
        assert "model.layers.0.mlp.down_proj.weight has input width 200" in str(err.value)
    quantized_model(folder, "fp8-e4m3")  # per-channel FP8 has no blocks


def test_activation_formats_cannot_be_written_or_forecast(make_llama, run_cli, tmp_path):
    code, _, err = run_cli("quantize", "--model", make_llama(), "--scheme", "fp8-dynamic", "--out", tmp_path / "q")
    assert code == 2 and "casts activations at run time" in err and len(err.strip().splitlines()) == 1
    assert not parse_scheme("fp8-dynamic").analysable
    assert all(parse_scheme(s).analysable for s in ("fp8-e4m3", "fp8-e4m3-tensor", "mxfp4", "nvfp4"))
