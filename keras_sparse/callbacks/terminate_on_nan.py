"""``TerminateOnNaN``: stops training at the first NaN or infinite loss, before it is saved."""

from __future__ import annotations

from keras_sparse.callbacks.base import Callback
from keras_sparse.errors import TrainingDivergedError


class TerminateOnNaN(Callback):
    """Raises ``TrainingDivergedError`` naming the first step whose loss was NaN or infinite.

    Every compiled step records that step on the device (``StepPrograms.first_nonfinite_step``);
    this callback reads it at the loop's log points, at epoch ends and before every checkpoint,
    so a diverged model is never saved and the check adds no wait on the device between log
    points. ``Trainer`` always includes one, first, so the check runs before the other
    callbacks' epoch ends.
    """

    def on_step_end(self, trainer, losses) -> None:
        if trainer.log_point:
            self.check(trainer)

    def on_epoch_end(self, trainer, record) -> None:
        self.check(trainer)

    def on_checkpoint(self, trainer) -> None:
        self.check(trainer)

    def check(self, trainer) -> None:
        """Raises if a step's loss was NaN or infinite."""
        step = trainer.programs.first_nonfinite_step()
        if step is not None:
            kept = trainer.checkpoint.latest if trainer.checkpoint is not None else None
            raise TrainingDivergedError(
                f"The loss became NaN or infinite at step {step}: lower the learning rate or check the data; "
                + (f"the last good checkpoint {kept} is kept." if kept else "no checkpoint was written."))
