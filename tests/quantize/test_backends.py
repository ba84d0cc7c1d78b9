"""Quantizing models: our RTN on a model, library parity, CLI, and clear errors for missing libraries."""

import builtins
import json

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize import QuantizeOptions, parse_scheme, quantized_model
from unlearn_audit.quantize.codebook import codebook_quantize
from unlearn_audit.quantize.rtn import RTNScheme, fake_quantize


def linear_weights(model):
    return {n: m.weight.detach().float().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_rtn_model_quantizes_linears_but_not_head_or_embeddings(micro_target):
    before = linear_weights(load_model(micro_target))
    model = quantized_model(micro_target, "rtn-int4-g128")
    after = linear_weights(model)
    scheme = RTNScheme(4, "group", 128)
    for name, w in before.items():
        if name == "lm_head":
            assert torch.equal(after[name], w)
        else:
            assert torch.equal(after[name], fake_quantize(w, scheme))
    emb = load_model(micro_target).get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, emb)
    with_head = quantized_model(micro_target, "rtn-int4-g128", opts=QuantizeOptions(include_lm_head=True))
    assert not torch.equal(linear_weights(with_head)["lm_head"], before["lm_head"])


def test_our_rtn_equals_llmcompressor_rtn(micro_target):
    pytest.importorskip("llmcompressor")
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    model = load_model(micro_target)
    original = linear_weights(model)
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
            processor=load_tokenizer(micro_target))
    ours = RTNScheme(4, "group", 128, delta="ct")  # W4A16 = int4, symmetric, group 128
    checked = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and hasattr(mod, "weight_scale"):
            theirs = ct_fake_quantize(mod.weight, mod.weight_scale, mod.weight_zero_point,
                                      mod.quantization_scheme.weights)
            assert torch.equal(fake_quantize(original[name], ours), theirs.float()), name
            checked += 1
    assert checked >= 7


@pytest.mark.parametrize("kind", ["fp4", "nf4"])
def test_codebook_equals_bitsandbytes(kind):
    F = pytest.importorskip("bitsandbytes.functional")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * 0.03
    q, state = F.quantize_4bit(w, blocksize=64, quant_type=kind)
    theirs = F.dequantize_4bit(q, state).float()
    _, ours, _ = codebook_quantize(w, kind)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("scheme", ["bnb-nf4", "bnb-int8", "gptq-int4-g128", "awq-int4-g64", "hqq-int4-g64"])
def test_library_schemes_give_working_models(micro_target, micro_world, scheme):
    """Each library really quantizes (the logits move away from full precision's) and keeps the model
    (they stay close: cosine > 0.9 over a prompt's logits; 4-bit moves them more than 8-bit would)."""
    family = parse_scheme(scheme).family
    pytest.importorskip({"bnb": "bitsandbytes", "gptq": "llmcompressor", "awq": "llmcompressor", "hqq": "hqq"}[family])
    tok = load_tokenizer(micro_target)
    corpus = Corpus(micro_world)
    model = quantized_model(micro_target, scheme, tokenizer=tok, calibration_texts=corpus.raw("retain"))
    ids = tok("Question: " + corpus.knowmem("retain")[0].question + "\nAnswer: ", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.input_ids.shape[1]
    with torch.no_grad():
        full = load_model(micro_target)(**ids).logits.float().flatten()
        quant = model(**ids).logits.float().flatten()
    assert not torch.allclose(full, quant, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(full, quant, dim=0) > 0.9


def test_missing_library_is_a_one_line_error(micro_target, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match=r"pip install 'unlearn-audit\[bnb\]'"):
        quantized_model(micro_target, "bnb-fp4")


@pytest.mark.parametrize("name", ["int4", "rtn-int4", "gptq-int4", "bnb-fp8", "full"])
def test_unknown_schemes(name):
    with pytest.raises(UserError):
        parse_scheme(name)


def test_quantize_cli_writes_a_loadable_folder(run_cli, micro_target, tmp_path):
    code, out, _ = run_cli("quantize", "--model", micro_target, "--scheme", "rtn-int4-g64", "--out", tmp_path / "q")
    assert code == 0
    record = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert record["scheme"] == "rtn-int4-g64" and record["family"] == "rtn"
    saved = load_model(tmp_path / "q").model.layers[0].mlp.down_proj.weight
    source = load_model(micro_target).model.layers[0].mlp.down_proj.weight
    assert torch.equal(saved, fake_quantize(source, RTNScheme(4, "group", 64)))


def test_eval_quantize_on_the_fly(run_cli, micro_target, micro_world, tmp_path):
    code, _, _ = run_cli("eval", "--model", micro_target, "--corpus", micro_world, "--quantize", "rtn-int8-channel",
                         "--metrics", "knowmem_f", "--out", tmp_path / "e", "--quiet")
    assert code == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["scheme"] == "rtn-int8-channel" and metrics["knowmem_f"] >= 0


def test_gptq_without_calibration_corpus_is_a_user_error(run_cli, micro_target, tmp_path):
    code, _, err = run_cli("quantize", "--model", micro_target, "--scheme", "gptq-int4-g128", "--out", tmp_path / "g")
    assert code == 2 and "--calibration" in err


def test_rtn_announces_and_records_partial_last_groups(caplog):
    """A width the group size does not divide (SmolLM2's 576 with g128): RTN's documented fallback is a
    last group with its own step, said on stderr and kept in the record; GPTQ refuses the same model."""
    import logging

    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearn_audit.quantize.backends import ANNOUNCED, apply_rtn, check_group_size, quantization_record

    ANNOUNCED.clear()
    model = LlamaForCausalLM(LlamaConfig(hidden_size=192, intermediate_size=256, num_hidden_layers=1,
                                         num_attention_heads=3, num_key_value_heads=3, vocab_size=64))
    with caplog.at_level(logging.WARNING):
        apply_rtn(model, parse_scheme("rtn-int4-g128"))
    assert "last group of 64 columns gets its own scale" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a grid quantizes many such models: said once per process
        apply_rtn(model, parse_scheme("rtn-int4-g128"))
    assert "gets its own scale" not in caplog.text
    record = quantization_record(model, parse_scheme("rtn-int4-g128"), QuantizeOptions())
    assert record["partial_last_group"]["model.layers.0.self_attn.q_proj"] == 192
    assert "model.layers.0.mlp.down_proj" not in record["partial_last_group"]  # 256 columns: whole groups
    assert not hasattr(model, "partial_groups")  # a record, not a tag on the model
    with pytest.raises(UserError, match="not a multiple of 128"):
        check_group_size(model, parse_scheme("gptq-int4-g128"), QuantizeOptions())
