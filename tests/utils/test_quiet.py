"""Library warnings stay quiet unless -v (in every process: the flag travels through the environment)."""

import io
import warnings

from unlearn_audit.utils.quiet import VERBOSE_ENV, quiet_libraries, set_verbose


def warned_after_quieting() -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn("past_key_values is deprecated", FutureWarning, stacklevel=1)
    return len(caught)


def test_library_warnings_hidden_by_default_and_shown_with_verbose(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert warned_after_quieting() == 0
    set_verbose(True)
    try:
        assert warned_after_quieting() == 1
    finally:
        set_verbose(False)


def test_the_gguf_conversion_bar_is_hidden_unless_verbose(monkeypatch):
    import transformers.modeling_gguf_pytorch_utils as conversion

    from unlearn_audit.models.gguf import quiet_conversion

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    with quiet_conversion():
        assert conversion.tqdm(range(2)).disable
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with quiet_conversion():
        bar = conversion.tqdm(range(2), file=io.StringIO())
        assert not bar.disable
