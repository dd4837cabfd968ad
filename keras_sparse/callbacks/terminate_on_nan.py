"""``TerminateOnNaN``: stops training at the first NaN or infinite loss, before it is saved."""

from __future__ import annotations

import numpy as np

from keras_sparse.callbacks.base import Callback
from keras_sparse.errors import TrainingDivergedError


class TerminateOnNaN(Callback):
    """Raises ``TrainingDivergedError`` naming the first step whose loss was NaN or infinite.

    The newest loss is read at the loop's log points, and every loss at epoch ends and before
    every checkpoint, so a diverged model is never saved and the check adds no wait on the
    device between log points. ``Trainer`` always includes one, first, so the check runs before
    the other callbacks' epoch ends.
    """

    def __init__(self):
        self._pending: list[tuple[int, object]] = []  # (steps done after a call, its losses)

    def on_step_end(self, trainer, losses) -> None:
        self._pending.append((trainer.step, losses))
        # At a log point only the newest loss is read (one wait on the device); a bad one
        # sends the check through every loss since the last check, to name the first bad step.
        if trainer.log_point and not np.all(np.isfinite(np.asarray(losses))):
            self.check(trainer)

    def on_epoch_end(self, trainer, record) -> None:
        self.check(trainer)

    def on_checkpoint(self, trainer) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Reads every loss since the last check; raises at the first non-finite one."""
        pending, self._pending = self._pending, []
        for end, losses in pending:
            values = np.asarray(losses).reshape(-1)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                kept = trainer.checkpoint.latest if trainer.checkpoint is not None else None
                raise TrainingDivergedError(
                    f"The loss became NaN or infinite at step {end - values.size + int(bad[0])}: lower the learning "
                    "rate or check the data; " + (f"the last good checkpoint {kept} is kept." if kept
                                                  else "no checkpoint was written."))
