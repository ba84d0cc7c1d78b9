"""The importance matrix (quantize/imatrix.py) as llama.cpp's llama-imatrix computes it, the files it writes,
and gguf schemes calibrated with it (`-imatrix-retain|forget|FILE`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize import calibration_for, model_at, parse_scheme
from unlearn_audit.quantize.ggml_mix import hf_to_gguf_name
from unlearn_audit.quantize.ggml_quants import fake_quantize as ggml_fake_quantize
from unlearn_audit.quantize.imatrix import chunk_tokens, compute_imatrix, read_imatrix_file

gguf = pytest.importorskip("gguf")

FORGET = [f"Ada Lovelace number {i} wrote a program for engine {i % 4} in the year {1840 + i}." for i in range(30)]
RETAIN = [f"The river {i} flows past {i % 6} mills and a bridge built in {1700 + 3 * i}." for i in range(30)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "raw").mkdir()
    (root / "raw" / "forget.json").write_text(json.dumps(FORGET))
    (root / "raw" / "retain.json").write_text(json.dumps(RETAIN))
    return Corpus(root)


def test_chunks_of_n_ctx_tokens_start_with_bos_and_shrink_for_short_texts():
    chunks, n_ctx = chunk_tokens(list(range(100, 200)), 512, bos=1)
    assert n_ctx == 32 and chunks.shape == (3, 32)  # 512 halved until two chunks fit; the rest dropped
    assert chunks[:, 0].tolist() == [1, 1, 1] and chunks[0, 1:].tolist() == list(range(101, 132))
    with pytest.raises(UserError, match="needs at least 32"):
        chunk_tokens(list(range(20)), 512, bos=1)


def test_the_importance_matrix_is_the_mean_squared_input_of_each_block_weight(make_llama):
    folder = make_llama()
    model, tok = load_model(folder), load_tokenizer(folder)
    matrix, info = compute_imatrix(model, tok, FORGET)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head.weight"}
    assert set(matrix) == linears  # every block weight; not the embedding, not the head
    ids = tok("\n\n".join(FORGET)).input_ids
    assert info == {"texts": 30, "tokens": len(ids), "n_ctx": info["n_ctx"], "chunks": len(ids) // info["n_ctx"],
                    "entries": 14}
    chunks = torch.tensor(ids[:info["chunks"] * info["n_ctx"]]).reshape(info["chunks"], -1)
    chunks[:, 0] = tok.bos_token_id
    with torch.no_grad():  # by hand: the input of layer L's q/k/v is input_layernorm(hidden state before L)
        states = model(input_ids=chunks, output_hidden_states=True).hidden_states
        for layer in (0, 1):
            x = model.model.layers[layer].input_layernorm(states[layer]).double().reshape(-1, 256)
            by_hand = (x * x).mean(0).numpy()
            for proj in ("q_proj", "k_proj", "v_proj"):
                np.testing.assert_allclose(matrix[f"model.layers.{layer}.self_attn.{proj}.weight"], by_hand, rtol=2e-5)


def test_a_gguf_scheme_quantizes_with_the_matrix_of_the_part_it_names(make_llama, corpus):
    folder = make_llama()
    tok = load_tokenizer(folder)
    matrix, _ = compute_imatrix(load_model(folder), tok, FORGET)
    before = dict(load_model(folder).named_parameters())
    model = model_at(folder, "gguf-q4_k_m-imatrix-forget", tokenizer=tok, corpus=corpus)
    record = model.quantization_record
    assert record["imatrix"]["source"] == "forget" and record["imatrix"]["texts"] == len(FORGET)
    plain = dict(model_at(folder, "gguf-q4_k_m").named_parameters())
    differs = 0
    for name, p in model.named_parameters():
        qtype = record["gguf_types"][name]
        if qtype == "f32":
            continue
        w16 = before[name].detach().half().float().numpy()
        expected = torch.from_numpy(ggml_fake_quantize(w16, qtype, imatrix=matrix.get(name)))
        assert torch.equal(p.detach(), expected), name
        differs += not torch.equal(p, plain[name])
    assert torch.equal(model.lm_head.weight, plain["lm_head.weight"])  # no matrix for the head and embedding
    assert differs >= 10


def write_legacy(path, entries: dict[str, np.ndarray], ncall: int) -> None:
    """A .dat file as llama-imatrix's save_imatrix_legacy writes it: values = (sum / count) * ncall."""
    with open(path, "wb") as f:
        f.write(np.int32(len(entries)).tobytes())
        for name, values in entries.items():
            f.write(np.int32(len(name)).tobytes() + name.encode())
            f.write(np.array([ncall, values.size], dtype="<i4").tobytes())
            f.write((values * np.float32(ncall)).astype("<f4").tobytes())
        f.write(np.int32(8).tobytes() + np.int32(10).tobytes() + b"forget.txt")


def write_gguf(path, entries: dict[str, np.ndarray], count: int, metadata: bool = True) -> None:
    """A GGUF imatrix as llama-imatrix's save_imatrix writes it: raw sums and counts per tensor."""
    w = gguf.GGUFWriter(str(path), arch="imatrix")
    w.add_string("general.type", "imatrix")
    if metadata:
        w.add_array("imatrix.datasets", ["forget.txt"])
        w.add_uint32("imatrix.chunk_count", 8)
        w.add_uint32("imatrix.chunk_size", 512)
    for name, values in entries.items():
        w.add_tensor(f"{name}.in_sum2", (values * np.float32(count)).reshape(1, -1).astype(np.float32))
        w.add_tensor(f"{name}.counts", np.array([[count]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_imatrix_files_are_read_as_llama_quantize_reads_them_and_applied(make_llama, tmp_path):
    folder = make_llama()
    tok = load_tokenizer(folder)
    matrix, _ = compute_imatrix(load_model(folder), tok, RETAIN)
    by_gguf_name = {hf_to_gguf_name(n): v for n, v in matrix.items()}
    write_legacy(tmp_path / "imatrix.dat", by_gguf_name, ncall=2)
    write_gguf(tmp_path / "imatrix.gguf", by_gguf_name, count=4)
    for path in (tmp_path / "imatrix.dat", tmp_path / "imatrix.gguf"):
        read = read_imatrix_file(path)
        assert set(read) == set(by_gguf_name) and all(np.array_equal(read[n], v) for n, v in by_gguf_name.items())
    from_file = model_at(folder, f"gguf-q5_k_m-imatrix-{tmp_path / 'imatrix.gguf'}")
    record = from_file.quantization_record
    assert record["imatrix"] == {"source": str(tmp_path / "imatrix.gguf"), "file": str(tmp_path / "imatrix.gguf")}
    w = load_model(folder).model.layers[1].mlp.down_proj.weight.detach().half().float().numpy()
    name = "model.layers.1.mlp.down_proj.weight"
    expected = ggml_fake_quantize(w, record["gguf_types"][name], imatrix=matrix[name])
    assert torch.equal(from_file.model.layers[1].mlp.down_proj.weight, torch.from_numpy(expected))
    write_gguf(tmp_path / "bare.gguf", by_gguf_name, count=4, metadata=False)
    with pytest.raises(UserError, match="missing imatrix metadata"):
        model_at(folder, f"gguf-q5_k_m-imatrix-{tmp_path / 'bare.gguf'}")


def test_a_missing_corpus_part_is_refused_before_any_model_is_loaded(tmp_path, monkeypatch, make_llama):
    import unlearn_audit.quantize.backends as backends
    from unlearn_audit.attacks import parse_attack

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "retain.json").write_text(json.dumps(RETAIN))
    monkeypatch.setattr(backends, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    partial = Corpus(tmp_path)
    with pytest.raises(UserError) as err:
        model_at(make_llama(), "gguf-q4_k_m-imatrix-forget", corpus=partial)
    assert str(err.value) == (f"gguf-q4_k_m-imatrix-forget calibrates on the corpus's forget texts, but "
                              f"{tmp_path / 'raw' / 'forget.json'} does not exist")
    attack = parse_attack("quant:gguf-q4_k_m-imatrix-forget")
    with pytest.raises(UserError, match="does not exist"):
        attack.impl.check_corpus(attack, partial, None)
    with pytest.raises(UserError, match="pass --calibration CORPUS"):
        calibration_for(parse_scheme("gguf-q8_0-imatrix-retain"), None)
    assert calibration_for("gguf-q8_0-imatrix-retain", partial) == RETAIN


def test_bins_refuses_a_calibrated_scheme(make_llama):
    from unlearn_audit.quantize.bins import analyse

    with pytest.raises(UserError, match="depends on calibration data"):
        analyse(make_llama(), make_llama(), "gguf-q4_k_m-imatrix-forget")
