"""`bins` and the first-order forecast on the deployment formats that need no data: the gguf file types and
FP8 / MXFP4 / NVFP4. The forecast streams row chunks and resolves each tensor itself (gguf types, the
converted file's type, tensor-wide absmax, NVFP4's fused global scales); it must see exactly the weights the
model twin deploys."""

from __future__ import annotations

import pytest

from unlearn_audit.errors import UserError
from unlearn_audit.quantize import quantized_model
from unlearn_audit.quantize.bins import BinsOptions, analyse, table

SCHEMES = ["gguf-q4_k_m", "gguf-q8_0", "gguf-q4_1", "fp8-e4m3", "fp8-e4m3-tensor", "mxfp4", "nvfp4"]


def survival_from_the_twin(target, unlearned, scheme: str, names: list[str]) -> float:
    """<Q(u) - Q(t), u - t> / |u - t|^2 over `names`, with Q the model twin (whole tensors, float64 sums)."""
    from unlearn_audit.models.loading import load_model

    t, u = dict(load_model(target).named_parameters()), dict(load_model(unlearned).named_parameters())
    qt, qu = dict(quantized_model(target, scheme).named_parameters()), dict(quantized_model(unlearned, scheme).named_parameters())
    dot = sq = 0.0
    for n in names:
        d = (u[n] - t[n]).detach().double()
        dot += float(((qu[n] - qt[n]).detach().double() * d).sum())
        sq += float((d * d).sum())
    return dot / sq


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bins_sees_what_the_twin_deploys(make_llama, nudged, scheme):
    target = make_llama(tied=True)
    unlearned = nudged(target, scale=0.3)
    small_chunks = BinsOptions(chunk_elements=3000)  # many row chunks: tensor-wide scales must hold across them
    result = analyse(target, unlearned, scheme, opts=small_chunks)
    names = list(result["layers"])
    if scheme.startswith("gguf"):
        assert "model.embed_tokens.weight" in names  # llama.cpp quantizes it (here also as the tied head)
        assert result["applied"].startswith(f"{scheme} (applied: ")
        assert result["gguf_types"]["model.embed_tokens.weight"] == ("q8_0" if scheme == "gguf-q8_0" else "q6_k")
        assert "llama.cpp quantizes that tensor as the head" in result["coverage"]["tied_output_head"]
    else:
        assert not any("embed" in n for n in names)  # weight-only formats quantize the Linear layers
    expected = survival_from_the_twin(target, unlearned, scheme, names)
    assert result["projected_survival_quantized"] == pytest.approx(expected, rel=1e-5)
    default = analyse(target, unlearned, scheme)
    for key in ("projected_survival_quantized", "same_value_share", "erased_mass_share"):
        assert result[key] == pytest.approx(default[key], rel=1e-6), key
    assert "quantization" in result["verdict"] and result["verdict"] in table(result)


def test_an_identical_pair_is_erased_and_a_large_update_survives(make_llama, nudged):
    target = make_llama()
    same = analyse(target, target, "nvfp4")
    assert same["verdict"] == "no weight changed: the models are identical"
    big = analyse(target, nudged(target, scale=3.0, seed=2), "gguf-q4_k_m")
    assert big["projected_survival"] > 0.9 and big["verdict"].startswith("update survives Q4_K_M quantization")


def test_the_first_order_forecast_resolves_tensors_as_bins_does(make_llama, nudged):
    from unlearn_audit.quantize.forecast import first_order_forecast

    target = make_llama(tied=True)
    unlearned = nudged(target, scale=0.3)
    texts = ["Person 3 was born in town 8.", "Person 7 likes the colour number 2."]
    for scheme in ("gguf-q4_k_m", "nvfp4"):
        result = first_order_forecast(target, unlearned, scheme, texts)
        assert result["scheme"] == scheme and result["first_order_survival"] is not None


def test_formats_with_activations_or_calibration_are_refused(make_llama):
    for scheme, why in (("fp8-dynamic", "quantizes activations at run time"),
                        ("gguf-q8_0-imatrix-retain", "depends on calibration data")):
        with pytest.raises(UserError, match=why):
            analyse(make_llama(), make_llama(), scheme)


def test_bins_cli_on_a_gguf_scheme(make_llama, nudged, run_cli, tmp_path):
    target = make_llama()
    code, out, err = run_cli("bins", "--target", target, "--unlearned", nudged(target), "--scheme", "gguf-q4_k_m",
                             "--out", tmp_path, "--quiet")
    assert code == 0, err
    assert "verdict (gguf-q4_k_m)" in out and (tmp_path / "bins.json").is_file()
