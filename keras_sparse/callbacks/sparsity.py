"""``SparsityCallback``: what ``model.fit`` with a ``SparseOptimizer`` cannot know by itself."""

from __future__ import annotations

import sys

import keras

from keras_sparse import fused_steps
from keras_sparse.errors import ConfigError
from keras_sparse.optimizer import SparseOptimizer, find_sparse_optimizer


class SparsityCallback(keras.callbacks.Callback):
    """A Keras callback for ``model.fit`` with a ``SparseOptimizer``.

    * Takes the schedule's length from the first ``fit`` call (epochs × steps per epoch) when the
      optimizer was given no ``total_steps``; later calls continue that schedule.
    * Says once, in one line, when a ``fit`` call is about to train past the schedule's end: the
      schedule is not stretched (``SparseOptimizer.say_past_schedule``; without this callback
      the optimizer says it when the call ends).
    * Says once, in one line, when an epoch ran more steps than ``steps_per_epoch``: Keras's ``fit``
      runs whole chunks of ``steps_per_execution`` steps while the data lasts (30 steps an epoch
      at 20 a call run 40), so a schedule counted from ``steps_per_epoch`` ends early.
    * Adds ``sparsity`` (of the masked weights) to every epoch's logs, for ``CSVLogger``,
      ``TensorBoard`` and ``EarlyStopping``.
    * With ``fuse_steps`` (the default), runs ``fit``'s steps as ``ks.Trainer`` runs them
      (``keras_sparse.fuse_steps``) where the model is compiled with ``jit_compile=True``: each
      ``steps_per_execution`` steps in one XLA program, or at one step a call the XLA step called
      directly; the training is the same, step for step. A model compiled without
      ``jit_compile=True`` (Keras's ``"auto"`` is off on a CPU) trains in Keras's own loop, slower
      than ``ks.Trainer``: the first ``fit`` call says so in one line.
    """

    def __init__(self, fuse_steps: bool = True):
        super().__init__()
        self.fuse_steps = fuse_steps
        self._schedule_from_fit = False
        self._epoch_start: int | None = None
        self._said_long_epoch = False
        self._said_not_fused = False

    def _optimizer(self) -> SparseOptimizer:
        optimizer = find_sparse_optimizer(getattr(self.model, "optimizer", None))
        if optimizer is None:
            raise ConfigError("SparsityCallback needs the model compiled with a keras_sparse.SparseOptimizer.")
        return optimizer

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not optimizer.prepared and optimizer.total_steps is None:
            if not steps:
                raise ConfigError("SparsityCallback: this fit call's data has no known length: pass steps_per_epoch "
                                  "to fit, or total_steps to SparseOptimizer.")
            optimizer.set_schedule(epochs * steps, steps)
            self._schedule_from_fit = True
        optimizer.say_past_schedule(int(optimizer.iterations.numpy()) + (epochs or 0) * (steps or 0))
        # fit has made its train function by now and looks it up again at every call.
        if self.fuse_steps and not fused_steps.fuse_steps(self.model):
            self._say_not_fused()

    def _say_not_fused(self) -> None:
        """Says once, in one line, that ``fit`` runs Keras's own loop because the model is not
        compiled with ``jit_compile=True``; nothing for a model that runs eagerly (debugging) or
        under a strategy (the Trainer runs several replicas without XLA too)."""
        if self._said_not_fused or fused_steps.can_fuse(self.model) != fused_steps.NOT_XLA:
            return
        self._said_not_fused = True
        print("keras-sparse: fit runs Keras's own loop, not ks.Trainer's fused steps: the model is not compiled "
              "with jit_compile=True (Keras's \"auto\" leaves XLA off on a CPU); compile with jit_compile=True for "
              "the Trainer's speed, or pass SparsityCallback(fuse_steps=False) to keep Keras's loop without this "
              "line.", file=sys.stderr, flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = int(self._optimizer().iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self._optimizer()
        if logs is not None:
            logs["sparsity"] = optimizer.sparsity()
        planned = self.params.get("steps")
        if not planned or self._epoch_start is None or self._said_long_epoch:
            return
        ran = int(optimizer.iterations.numpy()) - self._epoch_start
        if ran > planned:
            self._said_long_epoch = True
            schedule = (f"; the schedule, taken from epochs × steps_per_epoch, has {optimizer.total_steps} steps"
                        if self._schedule_from_fit else "")
            print(f"keras-sparse: epoch {epoch + 1} ran {ran} steps, not steps_per_epoch={planned}: Keras's fit runs "
                  f"whole chunks of steps_per_execution={self.model.steps_per_execution} steps while the data "
                  f"lasts{schedule}: make steps_per_epoch a multiple of steps_per_execution, or pass total_steps "
                  "to SparseOptimizer.", file=sys.stderr, flush=True)
