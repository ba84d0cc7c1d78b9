"""Trainer progress: a progress bar without the per-step log dictionaries HF prints by default.

transformers' trainer callbacks are imported only when a trainer is quieted: importing them pulls in
peft and its quantization back-ends, seconds that every command's start (argument parsing, a refused
input, a grid worker that only evaluates) would otherwise pay."""

from __future__ import annotations


def quiet_trainer_output(trainer, show_bar: bool) -> None:
    """Replace HF's printing callbacks: a bar when `show_bar`, else nothing."""
    from transformers import PrinterCallback, ProgressCallback

    class BarOnly(ProgressCallback):
        """HF's progress bar, minus the dict it writes for every logging step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            return

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if show_bar:
        trainer.add_callback(BarOnly)
