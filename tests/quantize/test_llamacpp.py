"""The llama.cpp runtime (quantize/llamacpp.py): the GGUF writer and the torch-shaped front run everywhere (the
front against a scripted stand-in for llama.cpp); the tests marked `llamacpp` run llama.cpp itself and are
skipped without the [llamacpp] extra (a source build kept out of CI)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.quantize import llamacpp
from unlearn_audit.quantize.llamacpp import LlamaCppModel, permute, read_config, write_gguf

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="needs llama.cpp: pip install 'unlearn-audit[llamacpp]'")


def test_permute_is_the_converters_rotary_reordering():
    """Rows of each head go from Hugging Face's two halves to llama.cpp's interleaved pairs: for one head of
    dimension 4, rows (0, 1, 2, 3) -> (0, 2, 1, 3); grouped KV heads use the KV head count."""
    w = torch.arange(8.0).reshape(8, 1)
    assert permute(w, 2, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    k = torch.arange(4.0).reshape(4, 1)
    assert permute(k, 4, 1).flatten().tolist() == [0, 2, 1, 3]


def test_a_folder_is_written_as_the_converter_writes_it(micro_target, tmp_path):
    import gguf
    from safetensors.torch import load_file

    info = write_gguf(micro_target, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    hf = load_file(str(micro_target / "model.safetensors"))
    config = json.loads((micro_target / "config.json").read_text())
    assert info["tensors"] == len(tensors)
    assert ("output.weight" in tensors) == (not config.get("tie_word_embeddings"))  # a tied head is not written
    assert all(t.tensor_type.name == "F32" for t in tensors.values())
    q = hf["model.layers.0.self_attn.q_proj.weight"].float()
    got = torch.from_numpy(np.array(tensors["blk.0.attn_q.weight"].data)).reshape(q.shape)
    assert torch.equal(got, permute(q, config["num_attention_heads"], config["num_attention_heads"]))
    v = hf["model.layers.1.self_attn.v_proj.weight"].float()
    assert torch.equal(torch.from_numpy(np.array(tensors["blk.1.attn_v.weight"].data)).reshape(v.shape), v)
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert int(fields["llama.block_count"].parts[-1][0]) == config["num_hidden_layers"]
    assert len(fields["tokenizer.ggml.tokens"].data) == config["vocab_size"]


def test_auto_writes_a_bf16_checkpoint_as_bf16_and_keeps_1d_tensors_f32(micro_target, tmp_path):
    import gguf

    assert write_gguf(micro_target, tmp_path / "a.gguf", "auto")["outtype"] == "bf16"  # the micro target is bf16
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors}
    assert types["blk.0.ffn_up.weight"] == "BF16" and types["blk.0.attn_norm.weight"] == "F32"
    assert write_gguf(micro_target, tmp_path / "h.gguf", "f16")["outtype"] == "f16"


def test_models_the_converter_path_does_not_cover_are_one_line(micro_target, tmp_path):
    other = tmp_path / "gpt2"
    shutil.copytree(micro_target, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match="GPT2LMHeadModel: evaluate it with the torch twin"):
        read_config(other)
    (other / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
    with pytest.raises(UserError, match="llama3 rope scaling"):
        read_config(other)


def test_runtime_without_the_extra_is_one_line_and_exit_2(run_cli, micro_target, micro_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    code, out, err = run_cli("eval", "--model", str(micro_target), "--corpus", str(micro_world), "--runtime", "llama.cpp",
                             "--out", str(tmp_path / "e"))
    assert code == 2 and "unlearn-audit[llamacpp]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("scheme, message", [("rtn-int4-g128", "rtn-int4-g128 runs in torch"),
                                             ("nvfp4", "nvfp4 runs in torch")])
def test_schemes_llama_cpp_does_not_apply_are_refused(micro_target, scheme, message, monkeypatch):
    monkeypatch.setattr(llamacpp, "require", lambda: None)
    with pytest.raises(UserError, match=message):
        llamacpp.runtime_source(str(micro_target), scheme)
    assert llamacpp.runtime_source(str(micro_target), "gguf-q4_k_m-imatrix-retain") == micro_target


def test_quantize_writes_a_gguf_file_and_says_what_it_applied(run_cli, micro_target, tmp_path):
    import gguf

    code, out, err = run_cli("quantize", "--model", str(micro_target), "--scheme", "gguf-q4_k_m", "--format", "gguf",
                             "--out", str(tmp_path / "m.gguf"))
    assert code == 0, err
    assert "gguf-q4_k_m (applied: q5_0 x" in out and str(tmp_path / "m.gguf") in out  # 128-wide rows: no k-quant fits
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert "Q5_0" in types and "F32" in types
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left


@pytest.mark.parametrize("scheme, out, message", [
    ("rtn-int4-g128", "m.gguf", "writes the gguf-* schemes; rtn-int4-g128 is written as a dequantized model folder"),
    ("gguf-q4_k_m-imatrix-retain", "m.gguf", "calibrates on data: pass --calibration CORPUS"),
    ("gguf-q8_0", "m", "give --out a path ending in .gguf"),
])
def test_quantize_to_gguf_refuses_what_it_cannot_write_in_one_line(run_cli, micro_target, tmp_path, scheme, out, message):
    code, _, err = run_cli("quantize", "--model", str(micro_target), "--scheme", scheme, "--format", "gguf",
                           "--out", str(tmp_path / out))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_quantize_to_gguf_refuses_a_model_the_converter_does_not_cover(run_cli, micro_target, tmp_path):
    other = tmp_path / "gpt2"
    shutil.copytree(micro_target, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    code, _, err = run_cli("quantize", "--model", str(other), "--scheme", "gguf-q8_0", "--format", "gguf",
                           "--out", str(tmp_path / "m.gguf"))
    assert code == 2 and "GPT2LMHeadModel" in err and not (tmp_path / "m.gguf").exists()


def test_audit_in_llama_cpp_without_the_extra_is_one_line_before_any_work(run_cli, micro_target, micro_retrained,
                                                                        micro_world, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    code, _, err = run_cli("audit", "--target", str(micro_target), "--unlearned", str(micro_retrained), "--corpus",
                           str(micro_world), "--runtime", "llama.cpp", "--out", str(tmp_path / "a"))
    assert code == 2 and "unlearn-audit[llamacpp]" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


class ScriptedLlama:
    """Stands in for llama_cpp.Llama: the logits at a position favour token (last token + 1) mod vocab, so
    greedy decoding counts upwards; it records what it was asked to evaluate."""

    def __init__(self, vocab: int = 10):
        self.vocab, self.n_tokens, self.seen = vocab, 0, []
        self.scores = np.zeros((64, vocab), dtype=np.float32)

    def n_vocab(self):
        return self.vocab

    def n_ctx(self):
        return 64

    def reset(self):
        self.n_tokens = 0

    def eval(self, tokens):
        self.seen.append(list(tokens))
        for t in tokens:
            self.scores[self.n_tokens] = np.eye(self.vocab, dtype=np.float32)[(t + 1) % self.vocab]
            self.n_tokens += 1


class ScriptedModel(LlamaCppModel):
    """The front over the scripted llama.cpp (its logits read from `scores`, as logits_all keeps them)."""

    def __init__(self, vocab: int):
        torch.nn.Module.__init__(self)
        self.llm = ScriptedLlama(vocab)

    def start(self, prompt):
        self.llm.reset()
        self.llm.eval(prompt)
        return self.llm.scores[self.llm.n_tokens - 1]

    def step(self, token):
        self.llm.eval([token])
        return self.llm.scores[self.llm.n_tokens - 1]


def scripted_model(vocab: int = 10) -> LlamaCppModel:
    return ScriptedModel(vocab)


def test_each_row_is_scored_without_its_padding():
    model = scripted_model()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    logits = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]])).logits
    assert model.llm.seen == [[1, 2, 3], [4, 5]]
    assert logits.argmax(-1)[0].tolist() == [2, 3, 4] and logits.argmax(-1)[1, :2].tolist() == [5, 6]
    assert torch.equal(logits[1, 2], torch.zeros(10))
    with pytest.raises(NotImplementedError):
        model(input_ids=ids, use_cache=True)


def test_greedy_rows_stop_at_eos_or_length_and_come_back_padded():
    model = scripted_model()
    ids = torch.tensor([[0, 6, 7], [1, 2, 3]])
    out = model.generate(input_ids=ids, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), max_new_tokens=4,
                         eos_token_id=9, pad_token_id=0)
    assert model.llm.seen[0] == [6, 7]  # the left padding is not evaluated
    assert out[:, :3].tolist() == ids.tolist()
    assert out[0, 3:].tolist() == [8, 9, 0, 0] and out[1, 3:].tolist() == [4, 5, 6, 7]


def test_a_stop_string_ends_a_row():
    class Tok:
        def decode(self, ids, **kwargs):
            return "".join(chr(ord("a") + i) for i in ids)

    class Stop:
        tokenizer, stops, window = Tok(), ("de",), 8

    model = scripted_model()
    out = model.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=6, eos_token_id=None, pad_token_id=0,
                         stopping_criteria=[Stop()])
    assert out[0, 2:].tolist() == [3, 4]  # "d", "e": stopped once "de" appeared


@pytest.mark.llamacpp
@needs_llama_cpp
def test_an_f32_file_in_llama_cpp_gives_torchs_greedy_choices(micro_target, tmp_path):
    """The floor: llama.cpp's CPU products quantize activations, so logits differ a little from torch fp32,
    but the next-token choices of a trained model almost never do."""
    from unlearn_audit.models.loading import load_model, load_tokenizer

    model = llamacpp.runtime_model(str(micro_target), "full", tmp_path / "work", threads=2)
    tok = load_tokenizer(micro_target)
    ids = tok(["Question: Where was the person born?", "The capital of the world is"], return_tensors="pt",
              padding=True)
    ours = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    with torch.no_grad():
        ref = load_model(micro_target, "fp32")(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
    real = ids.attention_mask.bool()
    assert (ours[real].argmax(-1) == ref[real].argmax(-1)).float().mean() >= 0.9
    assert (ours[real] - ref[real]).abs().max() < 0.5
    assert model.runtime_record["types"]["blk.0.ffn_up.weight"] == "f32"


def assert_holds_the_twins_values(path: Path, micro_target: Path, ftype: str, types: dict[str, str],
                                  scheme: str | None = None, corpus=None) -> int:
    """Every tensor of the GGUF file `path` has the type the twin's mix gives it (also in `types`, the writer's
    record) and dequantizes to exactly the twin's values (quantize/gguf.py) for the same model (`scheme`,
    default gguf-<ftype>, its importance matrix computed on `corpus`); returns how many quantized tensors
    were compared."""
    import gguf

    from unlearn_audit.models.loading import load_tokenizer
    from unlearn_audit.quantize import model_at
    from unlearn_audit.quantize.ggml_mix import hf_to_gguf_name

    files = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    twin = model_at(str(micro_target), scheme or f"gguf-{ftype}", tokenizer=load_tokenizer(micro_target), corpus=corpus)
    weights = dict(twin.named_parameters())
    config = json.loads((micro_target / "config.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    compared = 0
    for name, qtype in twin.quantization_record["gguf_types"].items():
        gname = hf_to_gguf_name(name)
        assert types[gname] == qtype and files[gname].tensor_type.name.lower() == qtype, gname
        if qtype == "f32":
            continue
        t, w = files[gname], weights[name].detach().float()
        values = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).reshape(w.shape)
        if name.endswith("q_proj.weight"):
            w = permute(w, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            w = permute(w, n_head, n_kv)
        assert torch.equal(values, w), gname
        compared += 1
    return compared


@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m", "q5_0"])
def test_a_quantized_file_written_without_llama_cpp_holds_the_twins_values(micro_target, tmp_path, ftype):
    """`quantize --format gguf`'s writer: the file type's mix and the port's blocks, read back by gguf-py."""
    import gguf

    info = write_gguf(micro_target, tmp_path / "q.gguf", ftype=ftype)
    config = json.loads((micro_target / "config.json").read_text())
    assert assert_holds_the_twins_values(tmp_path / "q.gguf", micro_target, ftype, info["types"]) >= 7 * config["num_hidden_layers"]
    fields = gguf.GGUFReader(str(tmp_path / "q.gguf")).fields
    assert int(fields["general.file_type"].parts[-1][0]) == llamacpp.FTYPE_IDS[ftype]
    assert int(fields["general.quantization_version"].parts[-1][0]) == gguf.GGML_QUANT_VERSION


def test_an_imatrix_file_holds_the_twins_values_and_says_what_calibrated_it(run_cli, micro_target, micro_world,
                                                                            tmp_path):
    """`quantize --scheme gguf-q4_k_m-imatrix-forget --format gguf --calibration C`: the matrix computed on the
    forget texts weights every block's search as in the twin, and the file carries llama-quantize's keys."""
    import gguf

    from unlearn_audit.data.corpus import Corpus

    scheme = "gguf-q4_k_m-imatrix-forget"
    code, out, err = run_cli("quantize", "--model", str(micro_target), "--scheme", scheme, "--format", "gguf",
                             "--calibration", str(micro_world), "--out", str(tmp_path / "m.gguf"))
    assert code == 0, err
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    types = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    config = json.loads((micro_target / "config.json").read_text())
    assert assert_holds_the_twins_values(tmp_path / "m.gguf", micro_target, "q4_k_m", types, scheme,
                                         Corpus(micro_world)) >= 7 * config["num_hidden_layers"]
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("quantize.imatrix.")}
    assert fields["quantize.imatrix.entries_count"] == 7 * config["num_hidden_layers"]  # every linear but the head
    assert fields["quantize.imatrix.chunks_count"] >= 1 and "forget texts" in fields["quantize.imatrix.dataset"]
    plain = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(write_gguf(micro_target, tmp_path / "p.gguf",
                                                                              ftype="q4_k_m")["gguf"])).tensors}
    weighted = {t.name: bytes(t.data) for t in reader.tensors}
    assert sum(plain[n] != weighted[n] for n in plain) >= 4 * config["num_hidden_layers"]  # the matrix moved blocks


@pytest.mark.llamacpp
@needs_llama_cpp
@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m"])
def test_llama_cpp_quantizes_every_tensor_as_the_twin_does(micro_target, tmp_path, ftype):
    """llama.cpp's own quantize of our GGUF: every tensor gets the type the twin's mix gives it, its
    dequantized values equal the twin's, and its bytes equal those our writer computes without llama.cpp."""
    import gguf

    write_gguf(micro_target, tmp_path / "src.gguf", "auto")
    info = llamacpp.quantize_gguf(tmp_path / "src.gguf", tmp_path / "q.gguf", ftype, threads=2)
    config = json.loads((micro_target / "config.json").read_text())
    assert assert_holds_the_twins_values(tmp_path / "q.gguf", micro_target, ftype, info["types"]) >= 7 * config["num_hidden_layers"]
    write_gguf(micro_target, tmp_path / "ours.gguf", ftype=ftype)
    theirs = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors}
    ours = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(tmp_path / "ours.gguf")).tensors}
    assert ours == theirs


@pytest.mark.llamacpp
@needs_llama_cpp
def test_an_imatrix_scheme_runs_in_llama_cpp_from_the_ports_file(run_cli, micro_target, micro_world, tmp_path):
    """llama.cpp's quantize takes no importance matrix through the binding: the file llama.cpp runs is the
    port's (`quantize --format gguf`), holding the twin's values for the same scheme and corpus."""
    from unlearn_audit.data.corpus import Corpus

    scheme, out = "gguf-q4_k_m-imatrix-retain", tmp_path / "e"
    code, _, err = run_cli("eval", "--model", str(micro_target), "--corpus", str(micro_world), "--runtime", "llama.cpp",
                           "--quantize", scheme, "--limit", "4", "--metrics", "knowmem_f", "--out", str(out), "--quiet")
    assert code == 0, err
    runtime = json.loads((out / "metrics.json").read_text())["runtime"]
    assert runtime["imatrix"] == {"source": "retain", "texts": len(Corpus(micro_world).raw("retain"))}
    config = json.loads((micro_target / "config.json").read_text())
    assert assert_holds_the_twins_values(Path(runtime["gguf"]), micro_target, "q4_k_m", runtime["types"], scheme,
                                         Corpus(micro_world)) >= 7 * config["num_hidden_layers"]


@pytest.mark.llamacpp
@needs_llama_cpp
def test_eval_in_llama_cpp_records_the_file_it_ran_and_resumes(run_cli, micro_target, micro_world, tmp_path):
    out = tmp_path / "e"
    args = ("eval", "--model", str(micro_target), "--corpus", str(micro_world), "--runtime", "llama.cpp",
            "--quantize", "gguf-q8_0", "--limit", "4", "--metrics", "knowmem_f,privleak", "--out", str(out), "--quiet")
    code, _, err = run_cli(*args)
    assert code == 0, err
    record = json.loads((out / "metrics.json").read_text())
    runtime = record["runtime"]
    assert runtime["ftype"] == "q8_0" and runtime["types"]["blk.0.ffn_down.weight"] == "q8_0"
    assert runtime["sha256"] == hashlib.sha256(Path(runtime["gguf"]).read_bytes()).hexdigest()
    assert runtime["llama_cpp_python"] == llamacpp.require().__version__ and "CPU" in runtime["system_info"]
    assert 0 <= record["knowmem_f"] <= 100 and len(json.loads((out / "knowmem_f" / "log.json").read_text())) == 4
    quantized = Path(runtime["gguf"])
    written = quantized.stat().st_mtime_ns
    code, _, _ = run_cli(*args)  # a second run reuses the quantized file and gives the same numbers
    assert code == 0 and json.loads((out / "metrics.json").read_text())["knowmem_f"] == record["knowmem_f"]
    assert quantized.stat().st_mtime_ns == written


@pytest.mark.llamacpp
@needs_llama_cpp
def test_greedy_decoding_reads_the_same_logits_as_scoring(micro_target, tmp_path):
    """Generation computes only the last position's logits; its choices equal the argmax of the all-position
    logits of the growing sequence, step by step."""
    from unlearn_audit.models.loading import load_tokenizer

    model = llamacpp.runtime_model(str(micro_target), "full", tmp_path / "work", threads=2)
    prompt = load_tokenizer(micro_target)("Question: What is the name of", return_tensors="pt").input_ids
    out = model.generate(input_ids=prompt, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    seq = prompt[0].tolist()
    for _ in range(6):
        seq.append(int(model.row_logits(seq)[-1].argmax()))
    assert out[0].tolist() == seq


@pytest.mark.llamacpp
@needs_llama_cpp
def test_audit_in_llama_cpp_runs_full_precision_and_gguf_there_and_other_attacks_in_torch(
        run_cli, micro_target, micro_retrained, micro_world, tmp_path):
    args = ("audit", "--target", str(micro_target), "--unlearned", str(micro_retrained), "--corpus", str(micro_world),
            "--control", "none", "--runtime", "llama.cpp", "--attacks", "quant:gguf-q8_0", "prune:magnitude:0.3",
            "--limit", "4", "--metrics", "verbmem_f,knowmem_f,knowmem_r", "--out", str(tmp_path / "a"), "--quiet")
    code, out, err = run_cli(*args)
    assert code in (0, 1, 3), err
    assert "llama.cpp runs the models as they are and under gguf-q8_0; torch runs prune:magnitude:0.3" in out
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert set(report["runtimes"]) == {f"{role} @ {name}" for role in ("target", "unlearned")
                                       for name in ("full", "quant:scheme=gguf-q8_0")}
    q8 = report["runtimes"]["unlearned @ quant:scheme=gguf-q8_0"]
    assert q8["ftype"] == "q8_0" and q8["types"]["blk.0.ffn_down.weight"] == "q8_0"
    assert report["runtimes"]["target @ full"]["types"]["blk.0.ffn_down.weight"] == "f32"
    assert "Run in llama.cpp itself" in (tmp_path / "a" / "audit.md").read_text()
    code2, out2, _ = run_cli(*args)  # resumed: the same numbers, nothing evaluated again
    assert code2 == code and json.loads((tmp_path / "a" / "audit.json").read_text())["attacks"] == report["attacks"]
