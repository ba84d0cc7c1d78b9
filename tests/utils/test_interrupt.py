"""Ctrl-C that is not lost: a KeyboardInterrupt swallowed where it landed is raised again at the next check."""

import os
import signal

import pytest

from unlearn_audit.utils.interrupt import check_interrupt, ctrl_c_handled


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_check():
    with ctrl_c_handled():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as a finalizer or a library catching BaseException would
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    check_interrupt()  # outside the block the request is forgotten
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it():
    """Grid workers start with SIGINT ignored (the main process stops them): the block leaves that alone."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_steps_check_for_a_swallowed_ctrl_c(tmp_path, monkeypatch):
    from unlearn_audit.training.core import EpochRecorder
    from unlearn_audit.utils import interrupt

    recorder = EpochRecorder(tmp_path / "epochs.json", None, None, show=False)
    recorder.on_step_end(None, None, None)
    monkeypatch.setattr(interrupt, "_requested", True)
    with pytest.raises(KeyboardInterrupt):
        recorder.on_step_end(None, None, None)
