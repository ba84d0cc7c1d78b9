"""Trainer progress: a progress bar without the per-step log dictionaries HF prints by default."""

from __future__ import annotations

from transformers import PrinterCallback, ProgressCallback


class BarOnly(ProgressCallback):
    """HF's progress bar, minus the dict it writes for every logging step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return


def quiet_trainer_output(trainer, show_bar: bool) -> None:
    """Replace HF's printing callbacks: a bar when `show_bar`, else nothing."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if show_bar:
        trainer.add_callback(BarOnly)
