"""A prompt's trailing space (MUSE's "Answer: ") under byte-level BPE: a lone 'Ġ' token the model never
saw before a word. Healing drops it and lets the model write it; MUSE corpora keep their exact prompts."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.evaluate.knowmem import build_prompts
from unlearn_audit.evaluate.runner import EvalConfig, heals_prompt_space
from unlearn_audit.models.generation import heal_trailing_space
from unlearn_audit.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def byte_level_bpe():
    """A GPT-2-style tokenizer (spaces join the next word, as in SmolLM2's)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["Question: Where was Ada born?\nAnswer: Emberlyn", "Answer: Emberlyn. Answer: Ostmark"] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_healing_drops_a_lone_trailing_space_token_and_nothing_else(byte_level_bpe):
    ids = [byte_level_bpe("Question: Where was Ada born?\nAnswer: ").input_ids,
           byte_level_bpe("Question: Where was Ada born?\nAnswer:").input_ids]
    before = [list(x) for x in ids]
    assert byte_level_bpe.decode(before[0][-1:]) == " "  # the lone space the model never saw before a word
    assert heal_trailing_space(byte_level_bpe, ids) == [" ", ""]
    assert ids[0] == before[0][:-1] and ids[1] == before[1]


def test_tiny_tokenizer_has_no_lone_space_so_healing_changes_no_tiny_result(micro_target, micro_world):
    """The built-in tiny models' tokenizer joins a space to the word before it: healing is a no-op there,
    so the tiny demo's numbers are what they were before healing existed."""
    tok = load_tokenizer(micro_target)
    corpus = Corpus(micro_world)
    prompts = build_prompts(corpus.knowmem("forget"), corpus.knowmem_icl("forget"))
    prompts += [item["prompt"] for item in corpus.verbmem()]
    ids = tok(prompts, add_special_tokens=True).input_ids
    assert heal_trailing_space(tok, ids) == [""] * len(prompts)


def test_muse_corpora_keep_their_exact_prompts_and_the_world_heals(micro_world, shared_dir):
    assert heals_prompt_space(Corpus(micro_world)) and not heals_prompt_space(Corpus(shared_dir / "muse" / "news"))
    assert heals_prompt_space(Corpus(shared_dir / "muse" / "news"), "heal")
    assert not EvalConfig(prompt_space="keep").heals(Corpus(micro_world))


def test_document_prefix_only_where_the_tokenizer_adds_no_special_token(byte_level_bpe, micro_target):
    """SmolLM2-like tokenizers (no BOS added) get their BOS in front of every text, in training and in
    evaluation alike; tokenizers that add their own BOS (Llama's, the tiny models') are left as they are."""
    from unlearn_audit.models.generation import document_prefix, encode_documents
    from unlearn_audit.training.core import chunk_ids

    tiny = load_tokenizer(micro_target)
    assert document_prefix(tiny) == [] and encode_documents(tiny, ["a b"])[0] == tiny("a b").input_ids
    byte_level_bpe.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    bos = byte_level_bpe.bos_token_id
    assert byte_level_bpe("Answer").input_ids[0] != bos  # this tokenizer adds nothing itself
    assert document_prefix(byte_level_bpe) == [bos]
    assert encode_documents(byte_level_bpe, ["Answer: Ostmark"])[0][0] == bos
    assert chunk_ids(byte_level_bpe, ["Answer: Ostmark"], 512)[0][0] == bos  # training starts the same way
