"""Errors a user sees: each message is one line that names the problem and the fix."""

import signal


class KerasSparseError(Exception):
    """Base class: the binaries print these as one ``error:`` line and exit with status 1."""


class ConfigError(KerasSparseError, ValueError):
    """Bad input from a user (a flag, a gin binding, an argument, a logdir), found before training."""


class TrainingDivergedError(KerasSparseError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KerasSparseError):
    """SIGTERM (preemption) or SIGINT (Ctrl-C) stopped training at a step boundary; a checkpoint
    was written where the run has a logdir. ``exit_code`` is the shell's: 128 + the signal number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number

    @classmethod
    def at_step(cls, signal_number: int, step: int, checkpoint: str | None) -> "TrainingInterrupted":
        """The error for a run stopped by ``signal_number`` after ``step`` steps, naming the
        checkpoint written (None: no logdir, nothing saved)."""
        where = (f"; checkpoint {checkpoint} written: rerun the same command to resume." if checkpoint
                 else " (no logdir: nothing was saved).")
        return cls(f"Stopped by {signal.Signals(signal_number).name} at step {step}{where}", signal_number)
