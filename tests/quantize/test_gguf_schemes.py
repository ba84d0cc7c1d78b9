"""GGUF file types as schemes: names, the per-tensor type mix llama-quantize applies to a Llama-style model
(k-quant fallbacks for widths 256 does not divide, the quantized token embedding, the tied head), values
equal to the numpy port of ggml-quants.c tensor by tensor, the record of what was applied, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model
from unlearn_audit.quantize import parse_scheme, quantized_model
from unlearn_audit.quantize.ggml_quants import fake_quantize as ggml_fake_quantize
from unlearn_audit.quantize.gguf import FTYPES, applied_label, types_of_model

pytest.importorskip("gguf")

NAMES = ["gguf-q4_0", "gguf-q4_1", "gguf-q5_0", "gguf-q5_1", "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_k_s",
         "gguf-q5_k_m", "gguf-q6_k"]


@pytest.mark.parametrize("name", NAMES)
def test_every_file_type_is_a_scheme_forecastable_without_an_importance_matrix(name):
    s = parse_scheme(name)
    assert (s.family, s.kind, s.imatrix, s.analysable) == ("gguf", name[5:], None, True)
    for part in ("retain", "forget"):
        calibrated = parse_scheme(f"{name}-imatrix-{part}")
        assert (calibrated.kind, calibrated.imatrix, calibrated.analysable) == (name[5:], part, False)


def test_an_imatrix_file_is_a_source_and_a_missing_one_is_refused(tmp_path):
    path = tmp_path / "imatrix.gguf"
    path.write_bytes(b"GGUF")
    assert parse_scheme(f"gguf-q4_k_m-imatrix-{path}").imatrix == str(path)
    with pytest.raises(UserError, match="-imatrix-retain, -imatrix-forget or an existing llama.cpp imatrix file"):
        parse_scheme("gguf-q4_k_m-imatrix-holdout")


@pytest.mark.parametrize("name, listed", [
    ("gguf-q3_k", ", ".join(f"gguf-{f}" for f in FTYPES)),
    ("gguf", "families: awq, bnb, cast, fp8, gguf, gptq, hqq, mxfp4, nvfp4, rtn"),
    ("q4_k_m", "families: awq, bnb, cast, fp8, gguf, gptq, hqq, mxfp4, nvfp4, rtn"),
])
def test_a_bad_name_lists_what_exists(name, listed):
    with pytest.raises(UserError) as err:
        parse_scheme(name)
    assert listed in str(err.value) and "\n" not in str(err.value)


# widths: hidden 256 (k-quant blocks fit), intermediate 384 (down_proj's rows do not: Q4_K -> Q5_0,
# Q6_K -> Q8_0); two layers: use_more_bits picks layer 1 for attn_v / ffn_down of Q4_K_M
Q4_K_M_UNTIED = {
    "model.embed_tokens.weight": "q4_k", "lm_head.weight": "q6_k", "model.norm.weight": "f32",
    **{f"model.layers.{i}.{n}.weight": t for i in (0, 1) for n, t in (
        ("self_attn.q_proj", "q4_k"), ("self_attn.k_proj", "q4_k"), ("self_attn.o_proj", "q4_k"),
        ("self_attn.v_proj", "q6_k" if i else "q4_k"), ("mlp.gate_proj", "q4_k"), ("mlp.up_proj", "q4_k"),
        ("mlp.down_proj", "q8_0" if i else "q5_0"), ("input_layernorm", "f32"),
        ("post_attention_layernorm", "f32"))},
}


def test_q4_k_m_mix_and_values_on_a_tiny_llama(make_llama):
    folder = make_llama()
    before = dict(load_model(folder).named_parameters())
    model = quantized_model(folder, "gguf-q4_k_m")
    record = model.quantization_record
    assert record["gguf_types"] == Q4_K_M_UNTIED
    assert record["applied"] == "gguf-q4_k_m (applied: q4_k x12, q6_k x2, q5_0 x1, q8_0 x1)"
    assert record["gguf_source_type"] == "f16"  # convert_hf_to_gguf --outtype auto writes fp32 weights as f16
    after = dict(model.named_parameters())
    for name, qtype in Q4_K_M_UNTIED.items():
        w = before[name].detach()
        if qtype == "f32":
            assert torch.equal(after[name], w), name
        else:  # the token embedding and the head too
            expected = ggml_fake_quantize(w.half().float().numpy(), qtype)
            assert torch.equal(after[name].detach(), torch.from_numpy(expected)), name


def test_the_tied_head_is_the_embedding_quantized_as_the_output(make_llama):
    folder = make_llama(tied=True)
    model = quantized_model(folder, "gguf-q4_k_m")
    types = model.quantization_record["gguf_types"]
    assert "lm_head.weight" not in types and types["model.embed_tokens.weight"] == "q6_k"
    emb = load_model(folder).get_input_embeddings().weight.detach()
    expected = torch.from_numpy(ggml_fake_quantize(emb.half().float().numpy(), "q6_k"))
    assert torch.equal(model.get_input_embeddings().weight, expected)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("scheme, expected", [
    ("gguf-q4_k_m", {"q5_0", "q8_0"}),  # every 128-wide row: Q4_K -> Q5_0, Q6_K -> Q8_0
    ("gguf-q6_k", {"q8_0"}),
    ("gguf-q5_k_m", {"q5_1", "q8_0"}),
])
def test_rows_256_does_not_divide_fall_back_to_legacy_types(make_llama, scheme, expected):
    folder = make_llama(hidden=128, intermediate=384)
    types = quantized_model(folder, scheme).quantization_record["gguf_types"]
    assert {t for t in types.values() if t != "f32"} == expected


def test_a_bf16_checkpoint_is_quantized_as_stored(make_llama):
    folder = make_llama(dtype=torch.bfloat16)
    w = load_model(folder).model.layers[0].self_attn.q_proj.weight.detach()
    model = quantized_model(folder, "gguf-q8_0")
    assert model.quantization_record["gguf_source_type"] == "bf16"
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, torch.from_numpy(ggml_fake_quantize(w.numpy(), "q8_0")))


def test_the_label_names_what_was_applied_and_is_readable_from_the_config(make_llama):
    assert applied_label("gguf-q4_k_m", {"a": "q5_0", "b": "q8_0", "c": "q5_0", "d": "f32"}) == \
        "gguf-q4_k_m (applied: q5_0 x2, q8_0 x1)"
    folder = make_llama()
    assert types_of_model(folder, "gguf-q4_k_m") == Q4_K_M_UNTIED


def test_quantize_writes_the_types_and_the_dequantized_weights(make_llama, run_cli, tmp_path):
    folder = make_llama(tied=True)
    out = tmp_path / "q"
    code, stdout, _ = run_cli("quantize", "--model", folder, "--scheme", "gguf-q5_k_m", "--out", out)
    assert code == 0, stdout
    record = json.loads((out / "quantization.json").read_text())
    assert record["gguf_types"]["model.embed_tokens.weight"] == "q6_k"
    assert record["applied"].startswith("gguf-q5_k_m (applied: ") and record["llama_cpp_commit"] == "0c1e570"
    assert record["embeddings_quantized"] and record["lm_head_quantized"]
    written, twin = load_model(out), quantized_model(folder, "gguf-q5_k_m")
    for (name, a), (_, b) in zip(written.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def gpt2_folder(make_llama, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from unlearn_audit.models.loading import load_tokenizer

    folder = tmp_path_factory.mktemp("gpt2") / "model"
    GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=64, n_layer=1, n_head=2)).save_pretrained(folder)
    load_tokenizer(make_llama()).save_pretrained(folder)
    return folder


def test_a_model_llama_cpps_converter_does_not_know_is_refused_before_any_work(gpt2_folder, run_cli, tmp_path,
                                                                                monkeypatch):
    import unlearn_audit.quantize.backends as backends

    monkeypatch.setattr(backends, "load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    code, _, err = run_cli("quantize", "--model", gpt2_folder, "--scheme", "gguf-q4_k_m", "--out", tmp_path / "q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Llama-style" in err and "transformer.wte.weight and 5 more" in err and "rtn-*" in err
    assert not (tmp_path / "q").exists()


def test_the_attack_takes_gguf_schemes_and_checks_the_model_from_its_config(gpt2_folder):
    from transformers import AutoConfig

    from unlearn_audit.attacks import parse_attack
    from unlearn_audit.attacks.registry import as_attack

    assert as_attack("gguf-q4_k_m-imatrix-forget").params["scheme"] == "gguf-q4_k_m-imatrix-forget"
    attack = parse_attack("quant:gguf-q4_k_m")
    assert attack.impl.bins_scheme(attack) == "gguf-q4_k_m"
    assert attack.impl.bins_scheme(parse_attack("quant:gguf-q4_k_m-imatrix-retain")) is None
    with pytest.raises(UserError, match="Llama-style"):
        attack.impl.check_model(attack, AutoConfig.from_pretrained(gpt2_folder))
    assert attack.impl.reads_config(attack) and not attack.impl.reads_config(parse_attack("quant:rtn-int4-g128"))


def test_audit_refuses_a_gguf_attack_on_a_model_the_converter_does_not_know_before_evaluating(
        gpt2_folder, micro_world, run_cli, tmp_path, monkeypatch):
    import unlearn_audit.experiment.audit as audit_mod

    monkeypatch.setattr(audit_mod, "evaluate_model", lambda *a, **k: pytest.fail("a model was evaluated"))
    code, _, err = run_cli("audit", "--target", gpt2_folder, "--unlearned", gpt2_folder, "--corpus", micro_world,
                           "--attacks", "quant:gguf-q4_k_m", "--out", tmp_path / "a")
    assert code == 2 and "Llama-style" in err and len(err.strip().splitlines()) == 1


def test_a_grid_takes_the_formats_as_schemes_and_forecasts_the_weight_only_ones(tmp_path):
    import yaml

    from unlearn_audit.experiment.config import load_grid

    schemes = ["full", "gguf-q4_k_m", "gguf-q8_0-imatrix-forget", "fp8-e4m3", "fp8-dynamic", "mxfp4", "nvfp4"]
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"methods": ["ga"], "schemes": schemes,
                                                     "bins_schemes": ["gguf-q4_k_m", "nvfp4", "fp8-e4m3-tensor"]}))
    assert load_grid(tmp_path / "g.yaml").schemes == schemes
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"methods": ["ga"], "bins_schemes": ["gguf-q4_k_m-imatrix-retain"]}))
    with pytest.raises(UserError, match="calibration"):
        load_grid(tmp_path / "g.yaml")


def test_eval_quantizes_on_the_fly_with_an_importance_matrix_of_the_forget_texts(run_cli, micro_target, micro_world,
                                                                                  tmp_path):
    code, _, err = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--quantize",
                           "gguf-q4_k_m-imatrix-forget", "--metrics", "knowmem_f", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["scheme"] == "gguf-q4_k_m-imatrix-forget" and metrics["knowmem_f"] >= 0


@pytest.mark.parametrize("qtype, sub", [("q4_0", 32), ("q4_1", 32), ("q5_0", 32), ("q5_1", 32), ("q8_0", 32),
                                        ("q4_k", 32), ("q5_k", 32), ("q6_k", 16)])
def test_the_step_bins_reads_is_the_spacing_of_each_sub_block(qtype, sub):
    from unlearn_audit.quantize.gguf import quantize

    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    deq, step = quantize(x, qtype)
    assert torch.equal(deq, torch.from_numpy(ggml_fake_quantize(x.numpy(), qtype)))
    d, s = deq.reshape(-1, sub).double(), step.reshape(-1, sub).double()
    assert bool((s > 0).all()) and bool((s == s[:, :1]).all())  # one step per sub-block
    levels = (d - d[:, :1]) / s
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # every value on the sub-block's grid
    assert float(((deq - x).abs() / step).max()) <= 1.0
