"""Writing and reading a run's files: atomic writes (a temporary file, then a rename), so a kill
never leaves a half-written file, and JSON that stays readable."""

from __future__ import annotations

import json
import math
import os
import socket
import uuid
from typing import Any

import tensorflow as tf

from keras_sparse.errors import ConfigError

METRICS_FILE = "metrics.json"


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (local or any ``tf.io.gfile`` file system)."""
    _write(path, text, "w")


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically, as ``write_text`` does."""
    _write(path, data, "wb")


def _write(path: str, data: str | bytes, mode: str) -> None:
    # The temporary name is unique to its writer (host, process, call), so writers on several
    # machines sharing a directory never write into each other's temporary file; the rename
    # then replaces the file whole.
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def write_json(path: str, value: Any, indent: int = 2) -> None:
    """Writes ``value`` as JSON atomically; NaN and infinity become strings (JSON has neither)."""
    write_text(path, json.dumps(_finite(value), indent=indent))


def read_json(path: str) -> Any:
    """The JSON in ``path``; a one-line ``ConfigError`` naming the file if it is missing or unreadable."""
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ConfigError(f"Cannot read {path} ({type(error).__name__}): check the path.") from None


def read_metrics(logdir: str) -> dict[str, Any]:
    """The ``metrics.json`` of a finished run in ``logdir``."""
    path = os.path.join(logdir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"No {METRICS_FILE} in {logdir!r}: give the logdir of a finished run "
                          "(keras-sparse-train writes it at the end).")
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ConfigError(f"{path} does not hold a JSON object.")
    return metrics


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
