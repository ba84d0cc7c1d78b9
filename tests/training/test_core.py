"""The training core: plain NLL training on texts (what `finetune` and relearning run), its record, its
resume, and the data pieces every training shares."""

import json

import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.training.core import PairedChunks, PartsCollator, TrainSettings, chunk_ids, train_on_texts
from unlearn_audit.training.nll import mean_nll


def text_nll(folder, texts) -> float:
    model, tok = load_model(folder, "fp32"), load_tokenizer(folder)
    ids = chunk_ids(tok, texts, 512)
    batch = PartsCollator(tok.pad_token_id)([{"text": x} for x in ids])
    with torch.no_grad():
        return mean_nll(model(input_ids=batch["text_input_ids"], attention_mask=batch["text_attention_mask"]).logits,
                        batch["text_labels"]).item()


def test_training_on_texts_learns_them_and_records_how(micro_retrained, micro_world, tmp_path):
    texts = Corpus(micro_world).raw("forget")[:6]
    s = TrainSettings(learning_rate=1e-3, epochs=2, batch_size=2)
    out = train_on_texts(micro_retrained, texts, s, tmp_path / "m", show=False, about={"role": "probe"})
    assert text_nll(out, texts) < text_nll(micro_retrained, texts) - 0.3
    info = json.loads((out / "train.json").read_text())
    assert info["role"] == "probe" and info["texts"] == 6 and info["chosen_epoch"] == 2
    assert [e["epoch"] for e in info["epochs"]] == [1, 2] and all(e["text_loss"] > 0 for e in info["epochs"])
    assert info["epochs"][1]["text_loss"] < info["epochs"][0]["text_loss"]
    assert info["precision"]["mode"] == "fp32" and not (tmp_path / ".m.work").exists()


def test_a_finished_work_folder_resumes_without_training_again(micro_retrained, micro_world, tmp_path):
    texts = Corpus(micro_world).raw("retain")[:4]
    s = TrainSettings(learning_rate=1e-3, epochs=1, batch_size=2, keep_checkpoints=True)
    out = train_on_texts(micro_retrained, texts, s, tmp_path / "m", show=False)
    first = (out / "model.safetensors").read_bytes()
    again = train_on_texts(micro_retrained, texts, s, tmp_path / "m", show=False)  # every epoch is recorded done
    assert (again / "model.safetensors").read_bytes() == first


def test_parts_are_padded_on_their_own_and_partners_are_seeded():
    data = PairedChunks([[1, 2, 3], [4, 5]], [[7], [8, 9, 9, 9]], seed=0)
    assert len(data) == 2 and data.pair == PairedChunks([[1], [2]], [[7], [8]], seed=0).pair
    batch = PartsCollator(pad_id=0)([data[0], data[1]])
    assert batch["forget_input_ids"].shape == (2, 3)
    assert batch["forget_labels"][1].tolist() == [4, 5, -100]
    assert set(batch) == {f"{p}_{k}" for p in ("forget", "retain") for k in ("input_ids", "attention_mask", "labels")}
