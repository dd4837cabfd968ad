"""Errors a user sees: each message is one line that names the problem and the fix."""


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
