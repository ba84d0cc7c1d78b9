"""LoRA through PEFT: adapter folders out of training, merged wherever a model is expected, and what a
LoRA run trains and keeps in its optimizer."""

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("peft")

from unlearn_audit.attacks.registry import Context, as_attack, load_attacked  # noqa: E402
from unlearn_audit.data.corpus import Corpus  # noqa: E402
from unlearn_audit.errors import UserError  # noqa: E402
from unlearn_audit.models.adapters import is_adapter, merged_weight, read_adapter  # noqa: E402
from unlearn_audit.models.loading import LoadOptions, load_model, load_tokenizer, model_fingerprint  # noqa: E402
from unlearn_audit.quantize.bins import open_weights  # noqa: E402
from unlearn_audit.training.lora import LoraSpec, expected_trainable, parse_lora  # noqa: E402
from unlearn_audit.unlearn import UnlearnConfig, unlearn  # noqa: E402

LORA = UnlearnConfig(method="npo_klr", epochs=1, batch_size=4, learning_rate=1e-3, dtype="fp32", lora="r=4,alpha=8")


@pytest.fixture(scope="module")
def corpus(micro_world):
    return Corpus(micro_world)


@pytest.fixture(scope="module")
def adapter(micro_target, corpus, tmp_path_factory):
    return unlearn(micro_target, corpus, LORA, tmp_path_factory.mktemp("lora") / "npo", show=False)


def logits(model, tok, text="Question: Who is it?\nAnswer:"):
    with torch.no_grad():
        return model(torch.tensor([tok(text).input_ids])).logits.float()


@pytest.mark.parametrize("text, spec", [
    ("r=16,alpha=32,targets=q_proj,v_proj", LoraSpec(16, 32.0, ("q_proj", "v_proj"), 0.0)),
    ("r=8", LoraSpec(8, None, ("all-linear",), 0.0)),
    ("targets=down_proj,r=2,dropout=0.1", LoraSpec(2, None, ("down_proj",), 0.1)),
])
def test_lora_spec_parses_target_lists(text, spec):
    assert parse_lora(text) == spec
    assert parse_lora("r=8").lora_alpha == 16.0


@pytest.mark.parametrize("text", ["r=0", "rank=4", "r=4,r=8", "q_proj", "r=x", "r=4,dropout=1"])
def test_bad_lora_spec_is_one_sentence(text):
    with pytest.raises(UserError, match="--lora"):
        parse_lora(text)


def test_lora_run_trains_and_keeps_what_the_adapter_implies(adapter, micro_target):
    assert is_adapter(adapter) and not (adapter / "model.safetensors").exists()
    record = json.loads((adapter / "unlearn.json").read_text())
    memory = record["memory"]
    base = load_model(micro_target)
    linear = [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    implied = sum(4 * (m.in_features + m.out_features) for m in linear)
    assert memory["trainable_parameters"] == implied == expected_trainable(base, parse_lora("r=4"))
    assert memory["optimizer_state_elements"] == 2 * implied  # AdamW's two moments of the adapter only
    assert memory["optimizer_state_bytes"] == 2 * implied * 4
    assert read_adapter(adapter).base == str(micro_target.resolve())


def test_merged_adapter_runs_as_the_peft_model(adapter, micro_target):
    from peft import PeftModel

    tok = load_tokenizer(adapter)
    peft_model = PeftModel.from_pretrained(load_model(micro_target), str(adapter)).eval()
    merged = load_model(adapter)
    assert merged.merged_adapter["merged_in"] == "float32" and merged.merged_adapter["rank"] == 4
    assert torch.allclose(logits(merged, tok), logits(peft_model, tok), atol=1e-4)
    assert not torch.allclose(logits(merged, tok), logits(load_model(micro_target), tok), atol=1e-3)  # it changed
    assert model_fingerprint(adapter) != model_fingerprint(micro_target)


def test_bf16_merge_rounds_once_and_bins_reads_the_same_weights(adapter, micro_target):
    from safetensors.torch import load_file

    merged = load_model(adapter, "auto", LoadOptions(merge_dtype="bf16"))
    assert merged.merged_adapter["merged_in"] == "bfloat16"
    params = dict(merged.named_parameters())
    state = load_file(str(adapter / "adapter_model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    a, b = (state[f"base_model.model.model.layers.0.mlp.down_proj.lora_{x}.weight"] for x in "AB")
    base = dict(load_model(micro_target).named_parameters())[name]
    assert torch.equal(params[name], merged_weight(base, a, b, 8 / 4, torch.bfloat16))
    view = open_weights(adapter, "bf16")
    assert view.dtype(name) == "BF16"
    for n, p in params.items():
        if n in view.where:
            assert torch.equal(view.tensor(n), p), n


def test_lora_resume_after_a_kill_gives_the_same_adapter(micro_target, corpus, tmp_path, kill_switch):
    from safetensors.torch import load_file

    cfg = replace(LORA, epochs=2, method="ga")
    reference = load_file(str(unlearn(micro_target, corpus, cfg, tmp_path / "ref", show=False) / "adapter_model.safetensors"))
    arm, disarm = kill_switch
    arm()
    with pytest.raises(KeyboardInterrupt):
        unlearn(micro_target, corpus, cfg, tmp_path / "killed", show=False)
    disarm()
    resumed = load_file(str(unlearn(micro_target, corpus, cfg, tmp_path / "killed", show=False) / "adapter_model.safetensors"))
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_lora_relearning_attack_trains_an_adapter(micro_target, corpus, tmp_path):
    attack = as_attack("relearn:retain:steps=2,lr=1e-3,lora=2")
    ctx = Context(corpus=corpus, show=False)
    model = load_attacked(str(micro_target), attack, ctx, tmp_path)
    assert model.merged_adapter["rank"] == 2 and model.merged_adapter["merged_in"] == "float32"


def test_finetune_with_lora_and_eval_of_the_adapter(run_cli, micro_retrained, micro_world, tmp_path):
    code, _, _ = run_cli("finetune", "--model", micro_retrained, "--corpus", micro_world, "--role", "target", "--epochs", "1",
                         "--learning-rate", "1e-3", "--lora", "r=2,targets=q_proj,v_proj", "--out", tmp_path / "ft", "--quiet")
    assert code == 0 and is_adapter(tmp_path / "ft")
    assert json.loads((tmp_path / "ft" / "train.json").read_text())["memory"]["trainable_parameters"] == 2 * 2 * 2 * (128 + 128)
    code, out, _ = run_cli("eval", "--model", tmp_path / "ft", "--corpus", micro_world, "--metrics", "knowmem_f",
                           "--out", tmp_path / "ev", "--quiet")
    assert code == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["adapter"]["merged_in"] == "float32"
    pytest.importorskip("bitsandbytes")  # it quantizes inside from_pretrained: the merged copy is loaded
    code, _, err = run_cli("eval", "--model", tmp_path / "ft", "--corpus", micro_world, "--metrics", "knowmem_f",
                           "--quantize", "bnb-fp4", "--out", tmp_path / "evq", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "evq" / "metrics.json").read_text())["adapter"]["rank"] == 2


def test_adapter_and_lora_bad_input(run_cli, adapter, micro_target, micro_world, tmp_path, capsys):
    import shutil

    orphan = tmp_path / "orphan"
    shutil.copytree(adapter, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    nameless = tmp_path / "nameless"
    shutil.copytree(adapter, nameless)
    (nameless / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    cases = [
        (["eval", "--model", orphan, "--corpus", micro_world, "--out", tmp_path / "e1"], "is not found; pass --adapter-base"),
        (["eval", "--model", nameless, "--corpus", micro_world, "--out", tmp_path / "e3"], "does not name its base model"),
        (["eval", "--model", orphan, "--adapter-base", tmp_path / "nope", "--corpus", micro_world, "--out", tmp_path / "e4"],
         f"--adapter-base {tmp_path / 'nope'} is not found"),
        (["unlearn", "--model", micro_target, "--corpus", micro_world, "--lora", "r=2,targets=wq", "--out", tmp_path / "u1"],
         "match no linear layer"),
        (["unlearn", "--model", micro_target, "--corpus", micro_world, "--lora", "r=2", "--method", "sure", "--out", tmp_path / "u2"],
         "SURE masks rows"),
        (["unlearn", "--model", micro_target, "--corpus", micro_world, "--optim", "adamw-8bit", "--dtype", "bf16",
          "--arithmetic", "emulated", "--out", tmp_path / "u3"], "adamw-8bit"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(*argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not any((tmp_path / n).exists() for n in ("e1", "e3", "e4", "u1", "u2", "u3", ".u1.work"))
    code, _, err = run_cli("eval", "--model", orphan, "--adapter-base", micro_target, "--corpus", micro_world,
                           "--metrics", "knowmem_f", "--out", tmp_path / "e2", "--quiet")
    assert code == 0, err
