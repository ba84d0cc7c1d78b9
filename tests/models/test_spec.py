"""A model argument is classified once (`ModelSpec.of`) and every loader reads its kind."""

import json

import pytest

from unlearn_audit.errors import UserError
from unlearn_audit.models import loading
from unlearn_audit.models.spec import Kind, LoadOptions, ModelSpec
from unlearn_audit.utils.io import dumps_json


def test_each_kind_of_model_argument_is_told_apart(tmp_path, micro_target):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    cases = {"package:smollm2": Kind.PACKAGE, str(adapter): Kind.ADAPTER, str(tmp_path / "m.Q4_K_M.gguf"): Kind.GGUF,
             str(micro_target): Kind.FOLDER, "./not-yet-there": Kind.FOLDER, "a/b/c": Kind.FOLDER,
             "HuggingFaceTB/SmolLM2-135M": Kind.HUB, "gpt2": Kind.HUB}
    assert {text: ModelSpec.of(text).kind for text in cases} == cases


def test_an_unknown_package_is_refused_where_the_argument_enters():
    with pytest.raises(UserError, match="unknown packaged model 'nope'.*package:smollm2"):
        ModelSpec.of("package:nope")


def test_a_spec_passes_through_with_its_options_and_reads_as_its_name(micro_target):
    opts = LoadOptions(revision="abc123", allow_pickle=True)
    hub = ModelSpec.of("owner/model", opts)
    assert ModelSpec.of(hub) is hub and ModelSpec.of(hub, LoadOptions()) is hub
    assert hub.revision == "abc123" and hub.hub_kwargs() == {"revision": "abc123"}
    folder = ModelSpec.of(micro_target, opts)
    assert folder.revision is None and folder.hub_kwargs() == {}  # a revision pins hub ids only
    assert str(folder) == str(micro_target) and folder.path == micro_target
    assert json.loads(dumps_json({"model": folder})) == {"model": str(micro_target)}
    assert folder.with_name("x").opts is opts


def test_loaders_read_the_spec_they_are_given(micro_target, monkeypatch):
    """A spec built at the door is not classified again (its options win over none given)."""
    spec = ModelSpec.of(micro_target, LoadOptions(allow_nonfinite=True))
    calls = []
    real = loading.ModelSpec.of.__func__
    monkeypatch.setattr(loading.ModelSpec, "of", classmethod(lambda cls, m, o=None: calls.append(m) or real(cls, m, o)))
    model = loading.load_model(spec)
    assert calls == [spec] and model.config.model_type == "llama"
    assert loading.model_fingerprint(spec) == loading.model_fingerprint(str(micro_target))
