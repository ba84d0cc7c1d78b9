"""The tiny Llama's tokenizer and model folder (training/tiny.py trains them: tests/training/test_tiny_training.py)."""

from transformers import AutoModelForCausalLM

from unlearn_audit.models.tiny import build_tokenizer


def test_saved_folder_is_a_plain_hf_model(micro_target):
    model = AutoModelForCausalLM.from_pretrained(micro_target)
    assert any(p.name.endswith(".safetensors") for p in micro_target.iterdir())
    assert model.config.hidden_size % 128 == 0 and model.config.intermediate_size % 128 == 0


def test_tokenizer_round_trips_and_keeps_answer_prompts_aligned():
    tok = build_tokenizer(["Question: Where was Ann Lee born?\nAnswer: Veloria\n\nQuestion: x"] * 5, 300)
    text = "Question: Where was Ann Lee born?\nAnswer: Veloria"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    prompt_ids = tok("Question: Where was Ann Lee born?\nAnswer: ").input_ids
    assert tok(text).input_ids[: len(prompt_ids)] == prompt_ids  # the prompt is a token prefix of the text
