"""The error type for bad user input."""


class ConfigError(ValueError):
    """Bad input from a user (a flag, a gin binding, an argument).

    The message is one line that names the problem and the fix; the binaries print it alone,
    without a traceback, and exit with status 1.
    """
