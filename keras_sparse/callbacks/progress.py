"""``ProgressLogger``: a line per epoch (its metrics, time and speed) and a progress bar on a terminal."""

from __future__ import annotations

import sys
from typing import Any

import keras

from keras_sparse.callbacks.base import Callback, last_loss


class ProgressLogger(Callback):
    """Prints ``Epoch i/N``, then a Keras progress bar while the epoch runs when the output is a
    terminal (a log file gets the epoch lines only), then the epoch's metrics with its wall time
    and steps per second. The bar shows the loss at the trainer's log points."""

    def __init__(self, bar: bool | None = None):
        self.bar = sys.stdout.isatty() if bar is None else bar
        self._progbar: keras.utils.Progbar | None = None
        self._first_step = 0

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        print(f"Epoch {epoch + 1}/{trainer.epochs}", flush=True)
        self._progbar = keras.utils.Progbar(trainer.steps_per_epoch, verbose=1 if self.bar else 0,
                                            stateful_metrics=["loss"], unit_name="step")
        self._first_step = trainer.step

    def on_step_end(self, trainer, losses) -> None:
        if self.bar and trainer.log_point:
            self._progbar.update(trainer.epoch_step, values=[("loss", last_loss(losses))])

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        print("  " + epoch_line(record, trainer.step - self._first_step), flush=True)


def epoch_line(record: dict[str, Any], steps: int) -> str:
    """``train_loss=0.5012, val_loss=…, sparsity=0.9000 — 1.3 s, 47 steps/s``: the record's
    float metrics, then the epoch's wall time and speed over the ``steps`` it ran."""
    metrics = ", ".join(f"{key}={value:.4f}" for key, value in record.items()
                        if isinstance(value, float) and key not in ("seconds", "training_flops_relative_to_dense"))
    seconds = record.get("seconds", 0.0)
    speed = f", {steps / seconds:.0f} steps/s" if seconds > 0 and steps else ""
    return f"{metrics} — {seconds:.1f} s{speed}"
