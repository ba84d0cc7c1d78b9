"""The progress line's time estimate: work per cell from its config, measured rates per kind, the prior
for kinds not timed yet."""

from __future__ import annotations

import pytest

from unlearn_audit.experiment.estimate import (
    PRIOR,
    REF_PASS,
    SMOLLM2_PARAMETERS,
    cell_work,
    model_parameters,
    prior_scale,
    seconds_left,
)


def test_model_work_counts_epochs_over_the_texts_each_role_trains_on():
    assert cell_work("model", {"role": "target", "base": "b", "finetune": {"epochs": 5}}, 0.3) == ("model", 5)
    assert cell_work("model", {"role": "retrained", "base": "b", "finetune": {"epochs": 5}}, 0.3) == (
        "model", pytest.approx(3.5))
    assert cell_work("model", {"role": "target", "base": "b", "finetune": {"epochs": 1}, "degrid": True}, 0.3) == (
        "model", 1)
    assert cell_work("model", {"role": "target", "base": "b", "finetune": {}}, 0.3) == ("model", 3)  # the default
    assert cell_work("model", {"role": "target", "path": "/x"}, 0.3) == ("load", 1)  # trains nothing
    assert cell_work("model", {"role": "target", "base": "b", "dither": 0.5, "seed": 0}, 0.3) == ("load", 1)
    assert cell_work("corpus", {"world": {}}, 0.3) == ("corpus", 0)


def test_unlearn_work_counts_the_passes_of_each_step():
    def work(**s):
        return cell_work("unlearn", {"settings": {"epochs": 10, **s}}, 0.25)[1]

    assert work(method="ga") == pytest.approx(2.5)
    assert work(method="ga_gdr") == pytest.approx(5.0)
    assert work(method="npo") == pytest.approx(2.5 * (1 + REF_PASS))
    assert work(method="npo_klr") == pytest.approx(2.5 * (2 + 2 * REF_PASS))
    assert work(method="qat", base="ga") == pytest.approx(5.0)
    assert work(method="sure") == work(method="npo_klr")  # SURE wraps npo_klr unless told
    assert cell_work("unlearn", {"settings": {"method": "ga"}}, 0.25) == ("unlearn", pytest.approx(5 * 0.25))


def test_eval_work_weighs_attacks_that_train_and_extra_benchmarks():
    assert cell_work("eval", {"scheme": "full"}, 0.3) == ("eval", 1)
    assert cell_work("eval", {"scheme": "rtn-int4-g128"}, 0.3) == ("eval", 1)
    assert cell_work("eval", {"scheme": "relearn:retain:steps=10"}, 0.3) == ("eval", 3)
    assert cell_work("eval", {"scheme": "full", "benchmarks": ["tofu", "wmdp"]}, 0.3) == ("eval", 3)
    assert cell_work("bins", {}, 0.3) == ("bins", 1)


def test_measured_kinds_use_their_own_rate_and_the_others_the_prior_scaled_by_how_fast_this_grid_runs():
    cells = [("model", 5.0, 900.0), ("model", 3.0, None), ("unlearn", 2.0, None), ("eval", 1.0, None)]
    seconds, guessed = seconds_left(cells, scale=None)
    # the model cell ran at 180 s a unit, twice the prior: the model left takes 3 x 180, the others 2 x prior
    assert seconds == pytest.approx(3 * 180 + 2 * PRIOR["unlearn"] * 2 + PRIOR["eval"] * 2)
    assert guessed == {"unlearn", "eval"}
    seconds, guessed = seconds_left([*cells, ("eval", 1.0, 10.0)], scale=None)
    assert seconds == pytest.approx(3 * 180 + 2 * PRIOR["unlearn"] * 910 / (5 * PRIOR["model"] + PRIOR["eval"]) + 10)
    assert guessed == {"unlearn"}


def test_before_any_cell_is_timed_the_prior_scales_with_the_model_and_is_silent_when_unknown():
    cells = [("corpus", 0.0, 0.0), ("model", 5.0, None), ("bins", 1.0, None)]
    assert seconds_left(cells, scale=2.0) == (pytest.approx(2 * (5 * PRIOR["model"] + PRIOR["bins"])), {"model", "bins"})
    assert seconds_left(cells, scale=None) == (None, set())
    tiny = seconds_left(cells, scale=1e-4)  # a model whose cells take a fraction of a second is still estimated
    assert tiny[0] == pytest.approx(1e-4 * (5 * PRIOR["model"] + PRIOR["bins"])) and tiny[0] < 1
    assert prior_scale("package:smollm2", None) == 1.0
    assert prior_scale("package:gemma3-270m", None) == pytest.approx(1.99, abs=0.01)
    assert prior_scale(None, None) is None and prior_scale("some/hub-id", None) is None


@pytest.mark.parametrize("tied", [True, False])
def test_parameters_from_a_folders_config_match_the_model(tmp_path, tied):
    """Grouped KV heads, an explicit head size, a tied or untied head: the count read from config.json is
    the model's, but for its norms."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=384, hidden_size=192, intermediate_size=320, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=tied)
    config.save_pretrained(tmp_path)
    model = LlamaForCausalLM(config)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert model_parameters(str(tmp_path)) == model.num_parameters() - norms
    assert model_parameters(str(tmp_path / "nothing")) is None
    assert model_parameters("package:smollm2") == SMOLLM2_PARAMETERS
