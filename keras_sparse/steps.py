"""The compiled programs of the training loop: one train step, one mask-update step, and K
steps in one call.

Each step is forward, gradients, then the ``SparseOptimizer``'s step (the core ``model.fit``
uses too): gradients masked, optimizer step, weights re-masked, so pruned weights are exactly
zero after every step. The mask-update step is a program of its own (the update is decided
while tracing), so no program is ever retraced. On one device the step programs exist in two
settings, XLA-compiled and a plain graph (``tuning.XlaChoice`` picks); on several,
``strategy.run`` runs them on every replica.

K steps a call run in one program with the loop inside it, except XLA-compiled steps with
convolutions: XLA's CPU compiler leaves the convolutions of a loop body in a layout its fast
convolution does not take (one step a call gets the fast one), so there the loop is a graph
loop that calls the one-step XLA program (BENCHMARKS.md, "K steps a call on convnets").
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sparse import mask_ops
from keras_sparse.masking import MaskedWeight
from keras_sparse.optimizer import SparseOptimizer, summed_gradients
from keras_sparse.tuning import XlaChoice


def as_loss(loss: keras.losses.Loss | str | Callable) -> keras.losses.Loss:
    """``loss`` as a Keras ``Loss``: a name or a plain function gets Keras's ``Loss`` around it,
    which matches the labels' rank to the predictions' as ``model.compile`` does."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    return _FunctionLoss(keras.losses.get(loss) if isinstance(loss, str) else loss)


class StepPrograms:
    """The training loop's compiled programs for ``model`` trained by ``optimizer``:
    ``train[jit]`` (one step a call) and ``staged[jit]`` (K steps a call) for each XLA setting
    ``xla`` may run (both while it decides), and ``update`` (a mask-update step), XLA-compiled
    only where XLA is set on: while ``"auto"`` decides it runs as a graph, since its XLA
    compilation costs more than it saves over the few hundred updates of a run (BENCHMARKS.md,
    "Fast by default"). ``call`` runs the steps of one compiled call of the loop.

    Batches are global batches: under a strategy each replica takes its share, and the
    optimizer sums the gradients over replicas.
    """

    def __init__(self, model: keras.Model, optimizer: SparseOptimizer, loss: keras.losses.Loss,
                 kernels: Sequence[MaskedWeight], strategy: tf.distribute.Strategy,
                 xla: XlaChoice | None = None):
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.kernels = list(kernels)
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self.variables = list(model.trainable_variables)
        with strategy.scope():
            # The first step whose loss was NaN or infinite (-1: none), recorded by every step
            # program. Not checkpointed: it only stops this run. Besides sparing TerminateOnNaN a
            # read of every loss, this record keeps one-step-a-call programs as fast as before the
            # loop was split (BENCHMARKS.md, "The loop before and after its split").
            self._nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.xla = xla or XlaChoice(True)
        settings = (False,) if self.replicas > 1 else (True, False) if self.xla.deciding else (self.xla.choice,)
        self.train = {jit: self._compile(lambda x, y: self._step(x, y, False)[0], jit) for jit in settings}
        self.update = self._compile(lambda x, y: self._step(x, y, True), self.xla.choice is True and self.replicas == 1)
        self.staged = {jit: _StagedDispatch(tf.function(self._staged_fn, jit_compile=jit),
                                            self.train[jit].function if jit else None)
                       for jit in settings if self.replicas == 1}
        self._active_counts = tf.function(self._active_counts_fn, jit_compile=self.replicas == 1)
        self._constants = IntConstants()

    def call(self, x, y, start: int | None, count: int, update: bool) -> tuple[tf.Tensor, Any]:
        """``count`` steps in compiled calls, the last one a mask update if ``update``: on the batch
        ``x, y`` (``start`` None, ``count`` 1), or on batches ``start .. start + count - 1`` of a
        stack of batches (``staged``). Plain steps run in the setting ``xla`` gives (and time
        while it decides). Returns the steps' losses and, after an update, the masks' active
        counts (else None)."""
        plain = count - 1 if update else count
        losses, counts = [], None
        if plain:
            losses.append(self.xla.run(functools.partial(self._run_plain, x=x, y=y, start=start, count=plain),
                                       plain, self.trace_counts))
        if update:
            if start is not None:
                x, y = (tf.nest.map_structure(lambda t: t[start + plain], part) for part in (x, y))
            loss, counts = self.update(x, y)
            losses.append(tf.reshape(loss, [1]) if losses else loss)
        return (losses[0] if len(losses) == 1 else tf.concat(losses, 0)), counts

    def _run_plain(self, jit: bool, x, y, start: int | None, count: int) -> tf.Tensor:
        if start is None:
            return self.train[jit](x, y)
        losses = self.staged[jit](x, y, *self._constants(start, count))
        return losses if count == losses.shape[0] else losses[start:start + count]

    def _compile(self, step_fn, jit: bool):
        """One device: a ``tf.function``, XLA-compiled if ``jit``; several: ``strategy.run``, the
        loss averaged over replicas."""
        if self.replicas == 1:
            return _SignatureDispatch(tf.function(step_fn, jit_compile=jit))

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
            loss = self._loss(y, self.model(x, training=True), replicas)
        return loss * replicas, tape.gradient(loss, self.variables)

    def _loss(self, y, predictions, replicas: int = 1) -> tf.Tensor:
        """The loss of ``predictions`` plus the model's own losses (regularizers), a replica's share."""
        loss = self.loss(y, predictions)
        return loss + tf.add_n(self.model.losses) / replicas if self.model.losses else loss

    def _step(self, x, y, update_masks: bool | tf.Tensor):
        """One training step with the mask update decided (a Python bool while tracing, or a
        boolean tensor in-graph). Returns the loss and the masks' active counts after an update."""
        loss, gradients = self.gradients(x, y, self.replicas)
        self._record_nonfinite(loss)
        return loss, self.optimizer.sparse_apply(gradients, self.variables, update=update_masks)

    def _record_nonfinite(self, loss):
        """Records this step's index (the optimizer's step counter before its update) if its loss
        is the first NaN or infinite one; every replica judges the loss summed over replicas."""
        if self.replicas > 1:
            loss = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, loss)
        first = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), self._nonfinite_step < 0)
        step = tf.cast(self.optimizer.iterations, tf.int64)
        self._nonfinite_step.assign(tf.where(first, step, self._nonfinite_step))

    def first_nonfinite_step(self) -> int | None:
        """The first step whose loss was NaN or infinite, or None: one read from the device."""
        step = int(self._nonfinite_step.numpy())
        return None if step < 0 else step

    def _staged_fn(self, xs, ys, start, count):
        """Steps ``start .. start + count - 1`` of a staged chunk (``xs``/``ys`` hold batches
        stacked on a new leading axis) in one while loop. Returns the chunk's losses (zeros where
        no step ran)."""
        return _staged_loop(xs, ys, start, count, lambda x, y: self._step(x, y, False)[0])

    def active_counts(self) -> np.ndarray:
        """Each mask's number of active weights, counted on the device in one call."""
        return self._active_counts().numpy()

    def _active_counts_fn(self) -> tf.Tensor:
        return tf.stack([mask_ops.count_true(k.mask) for k in self.kernels])

    def layer_densities(self, active_counts: np.ndarray | None = None) -> dict[str, float]:
        """Each masked weight's share of active weights, from ``active_counts`` (one per masked
        weight, as a mask update returns them) or counted on the device now."""
        counts = self.active_counts() if active_counts is None else active_counts
        return {k.key: float(n) / float(np.prod(k.mask.shape)) for k, n in zip(self.kernels, counts)}

    def sparsity(self) -> float:
        """Current overall sparsity of the masked weights."""
        active = float(np.sum(self.active_counts()))
        return 1.0 - active / float(sum(np.prod(k.mask.shape) for k in self.kernels))

    def summed_kernel_gradients(self, batches) -> dict[str, np.ndarray]:
        """Each masked kernel's dense gradient summed over ``batches`` (SNIP's scores), of the
        loss the steps train on (``optimizer.summed_gradients``)."""
        return summed_gradients(self.model, self.kernels, batches,
                                lambda x, y, predictions: self._loss(y, predictions))

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled program was traced: once per input signature, else every call
        would pay for compiling. (A K-step XLA program with convolutions counts its XLA loop,
        traced to find them, and the graph loop it runs instead.)"""
        programs = {"train": list(self.train.values()), "update": [self.update],
                    "staged": list(self.staged.values())}
        return {name: sum(f.experimental_get_tracing_count() for p in ps for f in _functions(p))
                for name, ps in programs.items()}


def _staged_loop(xs, ys, start, count, step):
    """Losses of ``step(x, y)`` over the batches ``start .. start + count - 1`` stacked in
    ``xs``/``ys``, in a ``tf.while_loop``; zeros where no step ran."""
    size = tf.shape(tf.nest.flatten(ys)[0])[0]

    def body(i, losses):
        # tf.gather, not t[i]: XLA compiles a slice's start as a constant where it can, and the
        # index is a function of the call's arguments: one compilation per value.
        x, y = (tf.nest.map_structure(lambda t: tf.gather(t, i), staged) for staged in (xs, ys))
        return i + 1, tf.tensor_scatter_nd_update(losses, [[i]], [tf.cast(step(x, y), tf.float32)])

    return tf.while_loop(lambda i, _: i < start + count, body, (start, tf.zeros([size], tf.float32)))[1]


def _functions(program) -> list:
    """The ``tf.function``s behind a program (a dispatch holds one or two)."""
    return [f for f in (getattr(program, "function", program), getattr(program, "graph_loop", None)) if f is not None]


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
            concrete = self._concrete[key] = self.concrete_function(*args)
        return concrete(*args)

    def concrete_function(self, *args):
        return self.function.get_concrete_function(*args)


class _StagedDispatch(_SignatureDispatch):
    """The K-steps-a-call program, traced once for stacks of any length (the last stack of an
    epoch may be short; XLA still compiles each length it runs). XLA-compiled, it is one program
    with the loop inside, or for a step with convolutions (found in the traced one-step program
    ``one_step``, so custom layers count too) a graph loop that calls ``one_step``."""

    def __init__(self, function, one_step=None):
        super().__init__(function)
        self.one_step = one_step
        self.graph_loop = None if one_step is None else tf.function(
            lambda xs, ys, start, count: _staged_loop(xs, ys, start, count, one_step))
        self._convolutions: bool | None = None

    def __call__(self, xs, ys, start, count):
        any_length = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), (xs, ys))
        key = (repr(any_length), tuple((spec.shape, spec.dtype) for spec in tf.nest.flatten(any_length)))
        concrete = self._concrete.get(key)
        if concrete is None:
            concrete = self._concrete[key] = self.concrete_function(*any_length, start, count, first=(xs, ys))
        return concrete(xs, ys, start, count)

    def concrete_function(self, xs, ys, start, count, first=None):
        if self.one_step is not None and self._convolutions is None:
            batch = tf.nest.map_structure(lambda t: t[0], first)
            self._convolutions = has_convolutions(self.one_step.get_concrete_function(*batch).graph)
        program = self.graph_loop if self._convolutions else self.function
        return program.get_concrete_function(xs, ys, start, count)


class IntConstants:
    """``tf.constant``s of Python ints, each made once: the training loops pass their compiled
    programs the same few step numbers and counts at every call, as tensors so that a new number
    does not trace a new program."""

    def __init__(self):
        self._made: dict[int, tf.Tensor] = {}

    def __call__(self, *values: int) -> tuple[tf.Tensor, ...]:
        """The tensors of ``values``, in order."""
        for value in values:
            if value not in self._made:
                self._made[value] = tf.constant(value)
        return tuple(self._made[value] for value in values)


def has_convolutions(graph: tf.Graph) -> bool:
    """Whether ``graph`` (with the functions it calls: loop bodies, gradients) runs a convolution."""
    definition = graph.as_graph_def()
    nodes = [*definition.node, *(node for function in definition.library.function for node in function.node_def)]
    return any(node.op.startswith(("Conv", "DepthwiseConv")) for node in nodes)


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
