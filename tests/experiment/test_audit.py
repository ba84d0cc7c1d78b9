"""`audit` verdicts and exit codes: 0 forgetting holds, 1 it does not, 2 error."""

import json
import shutil

import pytest
import torch

from unlearn_audit.data.corpus import Corpus
from unlearn_audit.models.loading import load_model, load_tokenizer
from unlearn_audit.quantize.rtn import RTNScheme, quantize

FAST = ["--metrics", "verbmem_f,knowmem_f", "--limit", "8", "--quiet"]


@pytest.fixture(scope="module")
def hidden_forgetting(micro_target, micro_world, tmp_path_factory):
    """An 'unlearned' model whose whole update sits in the int2 zero bins: at full precision the
    forget-set gradient pushes every zero-bin weight to +-0.49 Delta (knowledge gone), and int2 rounding
    maps each of them back to the target's 0 (knowledge back). The paper's mechanism, in its purest form."""
    model, tok = load_model(micro_target), load_tokenizer(micro_target)
    model.train()
    for text in Corpus(micro_world).raw("forget"):
        ids = torch.tensor([tok(text).input_ids + [tok.eos_token_id]])
        model(ids, labels=ids).loss.backward()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                _, _, delta = quantize(mod.weight, RTNScheme(2, "group", 128))
                zero = mod.weight.abs() < delta / 2
                mod.weight.copy_(torch.where(zero, torch.sign(mod.weight.grad) * 0.49 * delta, mod.weight))
    out = tmp_path_factory.mktemp("hidden") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_forgetting_that_holds_exits_0(run_cli, micro_target, micro_retrained, micro_world, tmp_path):
    code, out, _ = run_cli("audit", "--target", micro_target, "--unlearned", micro_retrained, "--retrained",
                           micro_retrained, "--corpus", micro_world, "--out", tmp_path, *FAST)
    assert code == 0, out
    assert "PASS: forgetting holds under every attack tested" in out
    # two weight attacks only: the knowledge is not called erased, and the places not looked at are named
    assert "Hidden or gone? not found under the 2 attacks tested (hidden states and prompts not tested)" in out
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["forgetting_holds"]
    assert [r["attack"] for r in report["attacks"]] == ["quant:rtn-int8-channel", "quant:rtn-int4-g128"]
    assert (tmp_path / "bins" / "rtn-int4-g128" / "bins.json").is_file()
    assert "| quant:rtn-int4-g128 |" in (tmp_path / "audit.md").read_text()
    assert (tmp_path / "audit.png").stat().st_size > 0


def test_no_forgetting_at_all_exits_1(run_cli, micro_target, micro_world):
    code, out, _ = run_cli("audit", "--target", micro_target, "--unlearned", micro_target, "--corpus", micro_world,
                           *FAST)
    assert code == 1 and "unlearning did not remove the knowledge" in out
    assert "control: none (no --control given)" in out  # said at the start, with the floors it uses


def test_knowledge_that_returns_after_quantization_exits_1(run_cli, micro_target, hidden_forgetting, micro_world,
                                                           micro_retrained, tmp_path):
    code, out, _ = run_cli("audit", "--target", micro_target, "--unlearned", hidden_forgetting, "--retrained",
                           micro_retrained, "--corpus", micro_world, "--schemes", "full,rtn-int2-g128",
                           "--out", tmp_path, *FAST)
    assert code == 1, out
    assert "FAIL: forgetting does not survive quant:rtn-int2-g128" in out
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["full"]["retained"] <= 0.25
    (row,) = report["attacks"]
    assert row["attack"] == "quant:rtn-int2-g128" and row["recovery"] > 0.5 and row["holds"] is False
    assert report["bins"]["quant:rtn-int2-g128"]["same_value_share"] == 1.0  # quantized models are identical
    assert row["forecast_recovery"] == pytest.approx(1.0)  # bins foresaw it: nothing of the update survives


@pytest.mark.parametrize("extra, message", [
    (["--schemes", "full,int4"], "unknown quantization scheme"),
    (["--attacks", "quant:int4"], "unknown quantization scheme"),
    (["--attacks", "shake:hard"], "unknown attack 'shake:hard'"),
    (["--attacks", "prune:magnitude:1.5"], "share must be a share in (0, 1)"),
    (["--attacks", "relearn:retain:stepz=3"], "unknown parameter 'stepz'"),
    (["--attacks", "relearn:retain"], "needs a control model"),
    (["--attacks", "relearn:retain", "--control", "none"], "needs a control model"),
    (["--control", "a", "--retrained", "b"], "give the control once"),
    (["--control", "base:"], "needs the model before fine-tuning"),
    (["--max-retained", "2"], "--max-retained"),
    (["--metrics", "knowmem_r"], "needs verbmem_f or knowmem_f"),
])
def test_bad_input_exits_2(run_cli, micro_target, micro_world, extra, message):
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_target, "--corpus", micro_world,
                           *extra)
    assert code == 2 and message in err and err.count("\n") == 1


def test_missing_model_exits_2(run_cli, micro_target, micro_world, tmp_path):
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", tmp_path / "missing", "--corpus",
                           micro_world, "--quiet")
    assert code == 2 and err.startswith("error:")


def test_audit_on_tofu_uses_its_knowledge_metrics_and_forget_quality(run_cli, micro_target, micro_retrained,
                                                                      micro_world, tmp_path):
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_retrained, "--retrained",
                             micro_retrained, "--corpus", micro_world, "--benchmark", "tofu", "--limit", "12",
                             "--schemes", "rtn-int4-g128", "--quiet", "--out", tmp_path)
    report = json.loads((tmp_path / "audit.json").read_text())
    assert code == 0, out + err
    assert report["benchmark"] == "tofu" and report["knowledge"] == ["forget_rouge", "forget_prob"]
    assert report["full"]["control"]["forget_quality"] == 1.0  # the retrained model is forget quality's reference
    assert report["full"]["unlearned"]["forget_quality"] == 1.0  # here the unlearned model is that same model
    assert "of the target's Model utility" in report["verdict"]
    assert "Forget quality" in (tmp_path / "audit.md").read_text()


def test_audit_on_a_benchmark_the_corpus_lacks_exits_2(run_cli, micro_target, shared_dir, tmp_path):
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_target,
                           "--corpus", shared_dir / "muse" / "news", "--benchmark", "tofu", "--quiet")
    assert code == 2 and "holds no TOFU files" in err and err.count("\n") == 1


def test_without_a_control_model_the_floor_is_the_target_on_held_out_people(run_cli, micro_target, micro_retrained,
                                                                         micro_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder called "none" here is not the control (`none` names no model)
    (tmp_path / "none").mkdir()
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_retrained, "--control", "none",
                             "--corpus", micro_world, "--schemes", "rtn-int4-g128", "--out", "none/audit", *FAST)
    here = tmp_path / "none"
    assert code in (0, 1), err
    report = json.loads((here / "audit" / "audit.json").read_text())
    assert report["control"]["kind"] == "none" and report["retrained"] is None
    assert report["control"]["floors"] == {"verbmem_f": "holdout", "knowmem_f": "holdout"}
    assert report["verdict"].endswith("against the target's own score on held-out items (no control model)")
    assert "control: none: no control model" in (here / "audit" / "audit.md").read_text()
    # the floor is the target's score on the holdout people's items, checked on a copy made by hand
    copy = here / "holdout-copy"
    shutil.copytree(micro_world, copy)
    for forget, held in (("knowmem/forget_qa.json", "knowmem/holdout_qa.json"), ("verbmem/forget.json", "verbmem/holdout.json")):
        shutil.copy(copy / held, copy / forget)
    info = json.loads((copy / "corpus.json").read_text())
    (copy / "corpus.json").write_text(json.dumps({k: v for k, v in info.items() if k != "content_hash"}))
    code, _, err = run_cli("eval", "--model", micro_target, "--corpus", copy, "--out", here / "eval", *FAST)
    assert code == 0, err
    measured = json.loads((here / "eval" / "metrics.json").read_text())
    floor = report["full"]["control"]
    assert floor == pytest.approx({k: measured[k] for k in ("verbmem_f", "knowmem_f")})
    for row in report["attacks"]:  # under each attack: the attacked target on the same items
        assert set(row["control"]) == {"verbmem_f", "knowmem_f"}
    assert len(list((here / "audit" / "evals" / "target").glob("quant_scheme=rtn-int4-g128/on-*"))) == 1


def test_a_base_control_is_the_control_model_and_says_so(run_cli, micro_target, micro_retrained, micro_world,
                                                          tmp_path):
    args = ["audit", "--target", micro_target, "--unlearned", micro_retrained, "--corpus", micro_world, "--metrics",
            "verbmem_f,knowmem_f,privleak", "--limit", "8", "--quiet", "--schemes", "rtn-int4-g128"]
    code, out, err = run_cli(*args, "--control", f"base:{micro_retrained}", "--out", tmp_path / "base")
    assert code == 0, out + err
    base = json.loads((tmp_path / "base" / "audit.json").read_text())
    assert base["control"]["kind"] == "base" and base["control"]["model"] == str(micro_retrained)
    assert "against the base model" in base["verdict"] and (tmp_path / "base" / "evals" / "base").is_dir()
    assert [r["source"] for r in base["references"].values()] == ["measured on the base model"]  # PrivLeak's AUC
    # the same model given as the retrained control gives the same shares, named otherwise
    code, out, err = run_cli(*args, "--retrained", micro_retrained, "--out", tmp_path / "retrained")
    retrained = json.loads((tmp_path / "retrained" / "audit.json").read_text())
    assert retrained["control"]["kind"] == "retrained" and "against the retrained model" in retrained["verdict"]
    assert [r["retained"] for r in base["attacks"]] == [r["retained"] for r in retrained["attacks"]]
    assert base["full"]["control"] == retrained["full"]["control"]


def test_a_base_of_another_vocabulary_is_refused_before_loading(run_cli, micro_target, micro_world, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((micro_target / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 7}))
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_target, "--corpus", micro_world,
                           "--control", f"base:{other}", *FAST)
    assert code == 2 and "the base must be the model the target was fine-tuned from" in err and err.count("\n") == 1


def test_no_control_without_held_out_items_is_refused_when_asked(run_cli, micro_target, shared_dir):
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_target, "--control", "none",
                           "--corpus", shared_dir / "muse" / "news", *FAST)
    assert code == 2 and "--control none needs held-out items for VerbMem_f, KnowMem_f" in err
    assert err.count("\n") == 1


def test_the_reference_attack_runs_inside_the_audit_against_the_control_model(run_cli, micro_target, micro_retrained,
                                                                              micro_world, tmp_path):
    code, out, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_retrained, "--retrained",
                             micro_retrained, "--corpus", micro_world, "--metrics", "verbmem_f,knowmem_f,mia_reference",
                             "--limit", "8", "--quiet", "--schemes", "rtn-int4-g128", "--out", tmp_path)
    assert code == 0, out + err
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["full"]["control"]["mia_reference"] == 0.5  # the control against itself: every score is 0
    # the unlearned model here is the control model itself: the same, at full precision
    assert report["full"]["unlearned"]["mia_reference"] == 0.5
    assert 0 <= report["attacks"][0]["target"]["mia_reference"] <= 1
    stored = json.loads(next((tmp_path / "evals" / "retrained").glob("reference-*.json")).read_text())
    texts = Corpus(micro_world).privleak("forget")[:8]
    assert len(stored["reference"]["reference_loss"]["forget"]) == len(texts)  # its LOSS of every text, kept


def test_gradnorm_under_a_packed_quantizer_is_refused_before_any_model_is_loaded(run_cli, micro_target, micro_world,
                                                                                 tmp_path):
    code, _, err = run_cli("audit", "--target", micro_target, "--unlearned", micro_target, "--corpus", micro_world,
                           "--metrics", "verbmem_f,mia_gradnorm", "--attacks", "quant:gptq-int4-g128", "--quiet",
                           "--out", tmp_path / "audit")
    assert code == 2 and "mia_gradnorm needs gradients of the weights" in err and err.count("\n") == 1
    assert not (tmp_path / "audit" / "evals").exists()


def test_a_gguf_attack_records_and_names_what_llama_cpp_applied(run_cli, micro_target, micro_retrained, micro_world,
                                                                  tmp_path):
    args = ["audit", "--target", micro_target, "--unlearned", micro_retrained, "--retrained", micro_retrained,
            "--corpus", micro_world, "--schemes", "gguf-q4_k_m", "--out", tmp_path, *FAST]
    code, out, err = run_cli(*args)
    assert code in (0, 1), err
    (row,) = json.loads((tmp_path / "audit.json").read_text())["attacks"]
    record = row["quantization"]
    assert record["scheme"] == "gguf-q4_k_m" and record["applied"].startswith("gguf-q4_k_m (applied: ")
    assert set(record["gguf_types"].values()) <= {"q4_k", "q5_0", "q5_k", "q6_k", "q8_0", "f32", "q4_0", "q5_1", "q4_1"}
    assert f"| quant:{record['applied']} |" in (tmp_path / "audit.md").read_text()
    run_cli(*args)  # a resumed audit loads no model and still knows what was applied
    assert json.loads((tmp_path / "audit.json").read_text())["attacks"][0]["quantization"] == record
