"""``TerminateOnNaN``: stops training at the first NaN or infinite loss, before it is saved."""

from __future__ import annotations

import numpy as np

from keras_sparse.callbacks.base import Callback
from keras_sparse.errors import TrainingDivergedError


class TerminateOnNaN(Callback):
    """Raises ``TrainingDivergedError`` naming the first step whose loss was NaN or infinite.

    The losses are read at the loop's log points, at epoch ends and before every checkpoint, so
    a diverged model is never saved and the check costs no extra wait on the device. ``Trainer``
    always includes one, first, so the check runs before the other callbacks' epoch ends.
    """

    def __init__(self):
        self._pending: list[tuple[int, object]] = []  # (first step of a call, its losses)

    def on_step_end(self, trainer, losses) -> None:
        steps = int(np.prod(losses.shape)) if losses.shape.rank else 1
        self._pending.append((trainer.step - steps, losses))
        if trainer.log_point:
            self.check(trainer)

    def on_epoch_end(self, trainer, record) -> None:
        self.check(trainer)

    def on_checkpoint(self, trainer) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Reads the losses since the last check; raises at the first non-finite one."""
        pending, self._pending = self._pending, []
        for first, losses in pending:
            bad = np.flatnonzero(~np.isfinite(np.asarray(losses).reshape(-1)))
            if bad.size:
                kept = trainer.checkpoint.latest if trainer.checkpoint is not None else None
                raise TrainingDivergedError(
                    f"The loss became NaN or infinite at step {first + int(bad[0])}: lower the learning rate or "
                    "check the data; " + (f"the last good checkpoint {kept} is kept." if kept
                                          else "no checkpoint was written."))
