"""The compiled programs of the training loop: one train step, one mask-update step, and K
steps in one call.

Each step is forward, gradients, then the ``SparseOptimizer``'s step (the core ``model.fit``
uses too): gradients masked, optimizer step, weights re-masked, so pruned weights are exactly
zero after every step. The mask-update step is a program of its own (the update is decided
while tracing), so neither program is ever retraced. On one device the programs are compiled
with XLA; on several, ``strategy.run`` runs them on every replica.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sparse.masking import MaskedWeight
from keras_sparse.optimizer import SparseOptimizer


def as_loss(loss: keras.losses.Loss | str | Callable) -> keras.losses.Loss:
    """``loss`` as a Keras ``Loss``: a name or a plain function gets Keras's ``Loss`` around it,
    which matches the labels' rank to the predictions' as ``model.compile`` does."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    return _FunctionLoss(keras.losses.get(loss) if isinstance(loss, str) else loss)


class StepPrograms:
    """The training loop's compiled programs for ``model`` trained by ``optimizer``.

    Batches are global batches: under a strategy each replica takes its share, and the
    optimizer sums the gradients over replicas.
    """

    def __init__(self, model: keras.Model, optimizer: SparseOptimizer, loss: keras.losses.Loss,
                 kernels: Sequence[MaskedWeight], strategy: tf.distribute.Strategy, jit_compile: bool):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.kernels = list(kernels)
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self.jit_compile = jit_compile
        self.variables = list(model.trainable_variables)
        self.train = self._compile(lambda x, y: self._step(x, y, False)[0])
        self.update = self._compile(lambda x, y: self._step(x, y, True))
        self.staged = _SignatureDispatch(tf.function(self._staged_fn, jit_compile=jit_compile))
        self._active_counts = tf.function(self._active_counts_fn, jit_compile=jit_compile)

    def _compile(self, step_fn):
        """XLA-compiled on one device; ``strategy.run`` on several, the loss averaged over replicas."""
        if self.replicas == 1:
            return _SignatureDispatch(tf.function(step_fn, jit_compile=self.jit_compile))

        def distributed(x, y):
            results = self.strategy.run(step_fn, args=(x, y))
            return tf.nest.map_structure(
                lambda r: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, r, axis=None), results)

        return tf.function(distributed)

    def gradients(self, x, y, replicas: int = 1):
        """The loss (mean over the batch) and the gradients of this replica's share of the batch.

        Under a strategy the optimizer sums gradients over replicas, so each replica's loss is
        divided by the replica count; Keras losses (``self.loss`` is one) do that themselves.
        """
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            loss = self.loss(y, predictions)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses) / replicas
        return loss * replicas, tape.gradient(loss, self.variables)

    def _step(self, x, y, update_masks: bool | tf.Tensor):
        """One training step with the mask update decided (a Python bool while tracing, or a
        boolean tensor in-graph). Returns the loss and the masks' active counts after an update."""
        loss, gradients = self.gradients(x, y, self.replicas)
        return loss, self.optimizer.sparse_apply(gradients, self.variables, update=update_masks)

    def _staged_fn(self, xs, ys, start, count, update_last):
        """Steps ``start .. start + count - 1`` of a staged chunk (``xs``/``ys`` hold batches
        stacked on a new leading axis) in one while loop; if ``update_last``, the last one is the
        optimizer's mask-update step instead, after the loop. Returns the chunk's losses (zeros
        where no step ran) and the masks' active counts after the update (zeros without one)."""
        size = tf.nest.flatten(ys)[0].shape[0]

        def one_step(i, losses, update):
            # tf.gather, not t[i]: XLA compiles a slice's start as a constant where it can, and the
            # last step's index is a function of the call's arguments: one compilation per value.
            x, y = (tf.nest.map_structure(lambda t: tf.gather(t, i), staged) for staged in (xs, ys))
            loss, counts = self._step(x, y, update)
            return tf.tensor_scatter_nd_update(losses, [[i]], [tf.cast(loss, tf.float32)]), counts

        def body(i, losses):
            return i + 1, one_step(i, losses, False)[0]

        last = start + count - 1
        plain_end = tf.where(update_last, last, start + count)  # an updating last step runs after the loop
        _, losses = tf.while_loop(lambda i, _: i < plain_end, body, (start, tf.zeros([size], tf.float32)))
        # The update step runs after the loop, not in its body: XLA copies a conditional's operands
        # every time it runs, which cost every step when the loop held one.
        return tf.cond(update_last, lambda: one_step(last, losses, True),
                       lambda: (losses, tf.zeros([len(self.kernels)], tf.int64)))

    def active_counts(self) -> np.ndarray:
        """Each mask's number of active weights, counted on the device in one call."""
        return self._active_counts().numpy()

    def _active_counts_fn(self) -> tf.Tensor:
        return tf.stack([tf.math.count_nonzero(k.mask, dtype=tf.int64) for k in self.kernels])

    def summed_kernel_gradients(self, batches) -> dict[str, np.ndarray]:
        """Each masked kernel's dense gradient summed over ``batches`` (SNIP's scores).

        Runs in training mode (batch statistics), but leaves BatchNorm's moving averages as they
        were: moving them would be training on the scoring batches.
        """
        total = {k.key: np.zeros(k.kernel.shape, np.float32) for k in self.kernels}
        index = {id(v): i for i, v in enumerate(self.variables)}
        saved = [v.numpy() for v in self.model.non_trainable_variables]
        for x, y in batches:
            _, gradients = self.gradients(x, y)
            for k in self.kernels:
                total[k.key] += gradients[index[id(k.kernel)]].numpy()
        for variable, value in zip(self.model.non_trainable_variables, saved):
            variable.assign(value)
        return total

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled program was traced: once per input signature, else every call
        would pay for compiling."""
        programs = {"train": self.train, "update": self.update, "staged": self.staged}
        return {name: getattr(p, "function", p).experimental_get_tracing_count() for name, p in programs.items()}


class _SignatureDispatch:
    """Calls a ``tf.function`` through its concrete function for the arguments' shapes and
    dtypes, looked up in a dict: ``tf.function`` matches its arguments against every traced
    signature at each call, a cost that shows on small models (BENCHMARKS.md). Arguments other
    than tensors go through the ``tf.function``."""

    def __init__(self, function):
        self.function = function
        self._concrete: dict[Any, Any] = {}

    def __call__(self, *args):
        flat = tf.nest.flatten(args)
        if not all(isinstance(t, tf.Tensor) for t in flat):
            return self.function(*args)
        key = (repr(tf.nest.map_structure(lambda _: 0, args)), tuple((t.shape, t.dtype) for t in flat))
        concrete = self._concrete.get(key)
        if concrete is None:
            concrete = self._concrete[key] = self.function.get_concrete_function(*args)
        return concrete(*args)


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a Keras ``Loss`` (mean over the batch, scaled for replicas), with the
    labels' and predictions' ranks matched first as ``model.compile`` does: a size-1 last axis
    of the one with one more dimension is dropped."""

    def __init__(self, function: Callable):
        super().__init__(name=getattr(function, "__name__", "loss"))
        self.function = function

    def call(self, y_true, y_pred):
        if y_pred.shape.rank == y_true.shape.rank + 1 and y_pred.shape[-1] == 1:
            y_pred = tf.squeeze(y_pred, -1)
        elif y_true.shape.rank == y_pred.shape.rank + 1 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, -1)
        return self.function(y_true, y_pred)
