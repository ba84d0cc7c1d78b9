"""Library warnings stay quiet unless -v (in every process: the flag travels through the environment)."""

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
