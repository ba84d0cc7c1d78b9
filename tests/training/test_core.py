"""The training core: plain NLL training on texts (what `finetune` and relearning run), its record, its
resume, and the data pieces every training shares."""

import json

import pytest
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


def test_the_settings_reach_the_trainer_and_default_to_the_plain_loop(tmp_path):
    from unlearn_audit.training.core import training_arguments

    plain = training_arguments(TrainSettings(learning_rate=1e-3), tmp_path, False, items=40)
    assert (plain.lr_scheduler_type, plain.warmup_steps, plain.adam_beta2, plain.save_strategy) == (
        "constant", 0, 0.999, "epoch")
    tiny = TrainSettings(learning_rate=1e-3, epochs=50, schedule="cosine", warmup_ratio=0.05, adam_beta2=0.95,
                         checkpoints=False)
    args = training_arguments(tiny, tmp_path, False, items=27)  # 7 steps of 4
    assert (args.lr_scheduler_type, args.warmup_steps, args.adam_beta2, args.save_strategy) == (
        "cosine", 17, 0.95, "no")  # 0.05 x 350 steps, rounded down
    capped = training_arguments(TrainSettings(learning_rate=1e-3, max_steps=30, warmup_ratio=0.1), tmp_path, False, 27)
    assert capped.warmup_steps == 3


def test_the_models_own_loss_trains_as_the_mean_nll_does(micro_retrained, micro_world, tmp_path):
    """HF's causal-LM loss (what the tiny recipe trains with) is the same mean with the same gradients,
    rounded another way (so Adam's steps on near-zero gradients may differ: no weight comparison)."""
    texts = Corpus(micro_world).raw("forget")[:6]
    losses = {}
    for own in (False, True):
        s = TrainSettings(learning_rate=1e-3, epochs=1, batch_size=3, model_loss=own, checkpoints=False)
        out = train_on_texts(micro_retrained, texts, s, tmp_path / f"m{own}", show=False)
        losses[own] = json.loads((out / "train.json").read_text())["epochs"][0]["text_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    model, tok = load_model(micro_retrained, "fp32"), load_tokenizer(micro_retrained)
    batch = PartsCollator(tok.pad_token_id)([{"text": x} for x in chunk_ids(tok, texts, 512)])
    ids, mask, labels = batch["text_input_ids"], batch["text_attention_mask"], batch["text_labels"]
    grads = []
    for loss in (lambda: mean_nll(model(input_ids=ids, attention_mask=mask).logits, labels),
                 lambda: model(input_ids=ids, attention_mask=mask, labels=labels,
                               num_items_in_batch=labels[:, 1:].ne(-100).sum()).loss):
        model.zero_grad()
        loss().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7) for n in grads[0])


def test_a_run_without_checkpoints_that_diverges_says_so_and_writes_nothing(micro_retrained, micro_world, tmp_path,
                                                                         monkeypatch):
    from unlearn_audit.errors import UserError
    from unlearn_audit.training.core import TextTrainer

    real, calls = TextTrainer.loss_and_parts, {"n": 0}

    def diverging(self, model, inputs):
        calls["n"] += 1
        loss, parts = real(self, model, inputs)
        return (loss * float("nan"), parts) if calls["n"] > 2 else (loss, parts)

    monkeypatch.setattr(TextTrainer, "loss_and_parts", diverging)
    s = TrainSettings(learning_rate=1e-3, epochs=3, batch_size=2, checkpoints=False)
    with pytest.raises(UserError, match="no epoch was kept to go back to"):
        train_on_texts(micro_retrained, Corpus(micro_world).raw("retain")[:4], s, tmp_path / "m", show=False)
    assert not (tmp_path / "m").exists()


def test_the_last_epoch_writes_no_checkpoint_and_a_kill_before_the_save_redoes_it(micro_retrained, micro_world,
                                                                                tmp_path, monkeypatch):
    """The checkpoint of the epoch that ends training would be deleted once the model is saved, so it is not
    written; a run killed between that epoch and the save resumes from the epoch before and writes the same
    model as an uninterrupted run."""
    from unlearn_audit.training import core

    texts = Corpus(micro_world).raw("retain")[:4]
    s = TrainSettings(learning_rate=1e-3, epochs=2, batch_size=2)
    reference = (train_on_texts(micro_retrained, texts, s, tmp_path / "ref", show=False) / "model.safetensors").read_bytes()
    real_save = core.save_trained

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "save_trained", killed)
    with pytest.raises(KeyboardInterrupt):
        train_on_texts(micro_retrained, texts, s, tmp_path / "m", show=False)
    work = tmp_path / ".m.work"
    epochs = json.loads((work / "epochs.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # both epochs trained ...
    assert [p.name for p in (work / "checkpoints").glob("checkpoint-*")] == [f"checkpoint-{epochs[0]['step']}"]
    monkeypatch.setattr(core, "save_trained", real_save)  # ... and only the first one's checkpoint written
    again = train_on_texts(micro_retrained, texts, s, tmp_path / "m", show=False)
    assert (again / "model.safetensors").read_bytes() == reference
    assert not work.exists()
