"""Import tensorflow-model-optimization without leaking its legacy-Keras switch.

Importing ``tensorflow_model_optimization`` sets ``os.environ["TF_USE_LEGACY_KERAS"] = "1"``
(see ../shared/BRIEF.md, "Pitfalls"). In that process a ``tf.keras`` not yet resolved then
becomes ``tf_keras`` (Keras 2), and every child process inherits the variable. keras-sparse
uses only tfmot's pruning schedules, which are plain TensorFlow math, so we resolve
``tf.keras`` first, import tfmot, and put the environment back as the user had it.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import tensorflow as tf

_ENV_VAR = "TF_USE_LEGACY_KERAS"


@functools.cache
def pruning_schedule() -> ModuleType:
    """Returns tfmot's ``pruning_schedule`` module, imported without side effects on Keras."""
    # Touching an attribute makes TensorFlow's lazy ``tf.keras`` loader bind to Keras 3 now,
    # while the environment still says so.
    _ = tf.keras.layers
    before = os.environ.get(_ENV_VAR)
    try:
        from tensorflow_model_optimization.python.core.sparsity.keras import (
            pruning_schedule as module,
        )
    finally:
        if before is None:
            os.environ.pop(_ENV_VAR, None)
        else:
            os.environ[_ENV_VAR] = before
    return module
