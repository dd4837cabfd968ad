"""Errors a user sees: each message is one line that names the problem and the fix."""


class KerasSparseError(Exception):
    """Base class: the binaries print these as one ``error:`` line and exit with status 1."""


class ConfigError(KerasSparseError, ValueError):
    """Bad input from a user (a flag, a gin binding, an argument, a logdir), found before training."""


class TrainingDivergedError(KerasSparseError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
