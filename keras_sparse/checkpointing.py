"""Checkpoints of a training run: the model, the optimizer (its step counter is the resume
position), the masks, and the loop's host-side state as JSON: the history and each callback's
``get_state()``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import tensorflow as tf

from keras_sparse.errors import ConfigError


class RunCheckpoint:
    """Saves and restores ``trackables`` (TensorFlow objects) and a JSON-able ``state`` in
    ``directory``, keeping the newest ``keep`` checkpoints.

    The directory is opened by the first ``restore`` or ``save``, so the logdir may still
    change (or be refused) until training starts.
    """

    def __init__(self, directory: str, keep: int = 3, **trackables: Any):
        self.directory = directory
        self.keep = keep
        # Make the checkpoint outside any strategy scope: strategies cannot mirror strings.
        self._state = tf.Variable("{}", dtype=tf.string, trainable=False)
        self._checkpoint = tf.train.Checkpoint(state=self._state, **trackables)
        self._manager: tf.train.CheckpointManager | None = None
        self.restored_from: str | None = None

    def _open(self) -> tf.train.CheckpointManager:
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=self.keep)
        return self._manager

    @property
    def latest(self) -> str | None:
        """The newest checkpoint's path, or None."""
        return self._open().latest_checkpoint

    def save(self, step: int, history: list, callbacks: Sequence = ()) -> str:
        """Writes a checkpoint numbered ``step`` with ``history`` and the callbacks' states;
        returns its path."""
        states = {key: state for key, c in _keyed(callbacks).items() if (state := c.get_state()) is not None}
        self._state.assign(json.dumps({"history": history, "callbacks": states}))
        return self._open().save(checkpoint_number=step)

    def restore(self, callbacks: Sequence = ()) -> list | None:
        """Restores the newest readable checkpoint, gives each callback its saved state, and
        returns the history (None: no checkpoint).

        A corrupt or truncated checkpoint is reported by name and the previous one is tried; if
        none can be read, a ``ConfigError`` names the newest.
        """
        manager = self._open()
        if not manager.checkpoints:
            return None
        for path in reversed(manager.checkpoints):
            try:
                self._checkpoint.restore(path).assert_existing_objects_matched()
                self.restored_from = path
                state = json.loads(self._state.numpy().decode())
                for key, callback in _keyed(callbacks).items():
                    if key in state["callbacks"]:
                        callback.set_state(state["callbacks"][key])
                return state["history"]
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError) as error:
                print(f"warning: checkpoint {path} cannot be read ({type(error).__name__}); trying the previous one.",
                      file=sys.stderr, flush=True)
        raise ConfigError(f"No readable checkpoint in {os.path.dirname(manager.checkpoints[-1])} "
                          f"(newest: {manager.checkpoints[-1]}): restore it from a backup, or use "
                          "another logdir / --overwrite to start again.")


def _keyed(callbacks: Sequence) -> dict[str, Any]:
    """Callbacks by a key for their saved state: the class name, numbered when repeated."""
    keyed: dict[str, Any] = {}
    for callback in callbacks:
        name = type(callback).__name__
        key, n = name, 1
        while key in keyed:
            n += 1
            key = f"{name}#{n}"
        keyed[key] = callback
    return keyed
