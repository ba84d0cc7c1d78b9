"""Safe loading: safetensors preferred, pickle refused without the flag, clear errors."""

import shutil

import pytest
import torch

from unlearn_audit.errors import UserError
from unlearn_audit.models.loading import LoadOptions, load_model, load_tokenizer, model_fingerprint


def test_loads_a_save_pretrained_folder(micro_target):
    model = load_model(micro_target)
    tok = load_tokenizer(micro_target)
    assert model.config.model_type == "llama"
    assert tok.pad_token is not None and not model.training


def test_refuses_pickle_weights_unless_allowed(micro_target, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(micro_target, folder)
    state = load_model(micro_target).state_dict()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="only has pickle weights.*--allow-pickle"):
        load_model(folder)
    model = load_model(folder, opts=LoadOptions(allow_pickle=True))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_folder_without_weights(tmp_path, micro_target):
    shutil.copy(micro_target / "config.json", tmp_path / "config.json")
    with pytest.raises(UserError, match="holds no weights"):
        load_model(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)


def test_unknown_hub_id_offline_is_a_user_error(hub_offline):
    with pytest.raises(UserError, match="could not load model"):
        load_model("no-such-org/no-such-model-xyz")


def test_missing_pad_token_falls_back_to_eos(micro_target, tmp_path):
    from unlearn_audit.models.loading import ensure_pad_token

    tok = load_tokenizer(micro_target)
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token


def test_fingerprint_changes_with_weights_not_with_provenance(micro_target, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(micro_target, copy)
    assert model_fingerprint(copy) == model_fingerprint(micro_target)
    (copy / "unlearn.json").write_text("{}")
    assert model_fingerprint(copy) == model_fingerprint(micro_target)
    model = load_model(copy)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(copy)
    assert model_fingerprint(copy) != model_fingerprint(micro_target)


def test_gguf_inputs_fail_in_one_line_without_the_file_or_the_package(tmp_path, monkeypatch, run_cli, micro_world):
    import importlib.util

    from unlearn_audit.models import gguf

    code, _, err = run_cli("eval", "--model", tmp_path / "missing.gguf", "--corpus", micro_world, "--out",
                           tmp_path / "e", "--quiet")
    assert code == 2 and "not found" in err
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(UserError, match=r"pip install 'unlearn-audit\[gguf\]'"):
        load_model(fake)
    code, _, err = run_cli("convert", "--model", tmp_path, "--out", tmp_path.with_name(tmp_path.name + "-out"))
    assert code == 2 and "convert reads .gguf files" in err
