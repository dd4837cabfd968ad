"""Helpers shared by the benchmark scripts: the seeded models, their batches and optimizers, a
plain Keras 3 train step and the same step through a ``keras_sparse.SparseOptimizer``, steps/s
of a step function, and alternating named step functions round by round with medians.

Everything here uses keras-sparse's public API only (``ks.wrap``, ``ks.SparseOptimizer`` and its
``apply`` / ``sparse_apply``, ``ks.Trainer``, ``ks.masked_weights``): the benchmarks time what a
user can write.

The scripts run as ``python benchmarks/<script>.py``, which puts this directory on ``sys.path``:
they ``import common``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import models
from keras_sparse.trainer import without_autotune

Step = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
CLASSES = 10

#: The models of the speed benchmarks: name -> (input shape, batch, optimizer factory).
#: LeNet-300-100 and the CNNs train with SGD + momentum at batch 128 (as in every earlier
#: table); the MNIST-1D transformer with AdamW at batch 64, as transformers are trained.
MODELS: dict[str, tuple[tuple[int, ...], int, Callable[[], keras.optimizers.Optimizer]]] = {
    "lenet_300_100": ((28, 28, 1), 128, lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
    "lenet5": ((28, 28, 1), 128, lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
    "resnet": ((32, 32, 3), 128, lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
    "mnist1d_transformer": ((40, 1), 64, lambda: keras.optimizers.AdamW(1e-3)),
}


def build(name: str) -> keras.Model:
    """Model ``name`` of ``MODELS`` (a ``keras_sparse.models`` name) with seed 0's initial weights."""
    keras.utils.set_random_seed(0)
    return models.build(MODELS[name][0], CLASSES, name=name)


def lenet_300_100() -> keras.Model:
    """LeNet-300-100 on 28×28×1 inputs, 10 classes, with seed 0's initial weights: the model of
    the LeNet-300-100 speed benchmarks, the same in every script."""
    return build("lenet_300_100")


def optimizer_for(name: str) -> keras.optimizers.Optimizer:
    """A fresh optimizer of the kind model ``name`` trains with (``MODELS``)."""
    return MODELS[name][2]()


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch_of(name: str, batch: int | None = None, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """A fixed random batch of inputs for model ``name`` (default batch from ``MODELS``) and labels."""
    shape, default, _ = MODELS[name]
    batch = batch or default
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(batch, *shape)).astype("float32")),
            tf.constant(rng.integers(0, CLASSES, size=batch)))


def dataset(shape: Sequence[int], steps: int, batch: int, seed: int = 0) -> tf.data.Dataset:
    """``steps`` fixed random in-memory batches of ``batch`` inputs of ``shape``, cached, with
    tf.data's autotuning off (as ``ks.Trainer`` runs its data: ``without_autotune``), so every
    loop that reads it, ``model.fit`` included, reads the same pipeline."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * batch, *shape)).astype("float32")
    y = rng.integers(0, CLASSES, size=steps * batch)
    return without_autotune(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache())


def sparse_optimizer(model: keras.Model, algorithm: ks.algorithms.SparseAlgorithm,
                     optimizer: keras.optimizers.Optimizer, total_steps: int | None = None) -> ks.SparseOptimizer:
    """``ks.SparseOptimizer(optimizer, algorithm, model=model)`` (which wraps ``model`` in place),
    built on the model's trainable variables, with the algorithm's initial masks set."""
    sparse = ks.SparseOptimizer(optimizer, algorithm, total_steps=total_steps, model=model)
    sparse.build(model.trainable_variables)
    sparse.prepare()
    return sparse


def train_step(model: keras.Model, apply: Callable[[list, list], object], loss: Callable, jit_compile: bool,
               watch_loss: bool = False) -> Step:
    """``step(x, y) -> loss`` in one ``tf.function`` (XLA-compiled if ``jit_compile``): forward,
    gradients, then ``apply(gradients, variables)`` (an optimizer's update).

    ``watch_loss`` adds what ``ks.Trainer``'s step does besides the optimizer step: a step
    counter and the record of the first step with a non-finite loss. On LeNet-300-100 on CPU
    that made the plain step ~15% *faster* in earlier sessions (BENCHMARKS.md).
    """
    variables = model.trainable_variables
    counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    first_nonfinite = tf.Variable(-1, dtype=tf.int64, trainable=False)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        if watch_loss:
            first = tf.logical_and(tf.logical_not(tf.math.is_finite(value)), first_nonfinite < 0)
            first_nonfinite.assign(tf.where(first, counter, first_nonfinite))
            counter.assign_add(1)
        apply(tape.gradient(value, variables), variables)
        return value

    return step


def plain_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss: Callable,
               jit_compile: bool, watch_loss: bool = False) -> Step:
    """A plain Keras 3 train step for ``model`` (no masks): ``optimizer.apply`` in ``train_step``."""
    optimizer.build(model.trainable_variables)
    return train_step(model, optimizer.apply, loss, jit_compile, watch_loss)


def sparse_step(model: keras.Model, optimizer: ks.SparseOptimizer, loss: Callable, jit_compile: bool,
                update: bool | None = False, watch_loss: bool = False) -> Step:
    """The same step through a ``SparseOptimizer`` (``sparse_optimizer``): gradients masked, the
    wrapped optimizer's update, weights re-masked.

    ``update=False``: ``optimizer.sparse_apply(..., update=False)``, a step that never updates the
    masks, decided while tracing (what ``ks.Trainer`` compiles for its plain steps);
    ``update=True``: the mask-update step (the Trainer's update program);
    ``update=None``: ``optimizer.apply``, which decides in-graph with a ``tf.cond`` on the
    algorithm's update table (what ``model.fit`` and a ``GradientTape`` loop run).
    """
    if update is None:
        return train_step(model, optimizer.apply, loss, jit_compile, watch_loss)
    return train_step(model, lambda g, v: optimizer.sparse_apply(g, v, update=update), loss, jit_compile, watch_loss)


def staged_steps(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss: Callable, jit_compile: bool,
                 update: bool | None = False) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``run(xs, ys) -> losses``: one compiled call that runs a step for each batch stacked on the
    leading axis of ``xs``/``ys``, in a ``tf.while_loop`` (``ks.Trainer(steps_per_execution=K)``'s
    shape of program). ``update`` as in ``sparse_step`` for a ``SparseOptimizer`` (False:
    ``sparse_apply(update=False)``, None: ``optimizer.apply``); a plain optimizer always runs
    ``optimizer.apply``."""
    variables = model.trainable_variables
    sparse = isinstance(optimizer, ks.SparseOptimizer) and update is not None

    @tf.function(jit_compile=jit_compile)
    def run(xs, ys):
        def body(i, losses):
            with tf.GradientTape() as tape:
                value = loss(ys[i], model(xs[i], training=True))
            grads = tape.gradient(value, variables)
            if sparse:
                optimizer.sparse_apply(grads, variables, update=update)
            else:
                optimizer.apply(grads, variables)
            return i + 1, tf.tensor_scatter_nd_update(losses, [[i]], [value])

        count = tf.shape(ys)[0]
        return tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), tf.zeros([ys.shape[0]])))[1]

    return run


def graph_loop(step: Step) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``run(xs, ys) -> last loss``: a ``tf.function`` *without* XLA whose ``tf.while_loop`` calls
    the compiled ``step`` once per stacked batch: the shape of Keras's ``model.fit`` loop with
    ``steps_per_execution=K`` (a graph loop around an XLA-compiled one-step function), without
    its iterator and metrics."""

    @tf.function(jit_compile=False)
    def run(xs, ys):
        def body(i, _):
            return i + 1, step(xs[i], ys[i])

        return tf.while_loop(lambda i, _: i < tf.shape(ys)[0], body, (tf.constant(0), tf.constant(0.0)))[1]

    return run


def active_counts(model: keras.Model, jit_compile: bool) -> Callable[[], tf.Tensor]:
    """A compiled call returning every mask's active-weight count (int64, one per masked weight)."""
    masks = [w.mask for w in ks.masked_weights(model)]
    return tf.function(lambda: tf.stack([tf.math.count_nonzero(m, dtype=tf.int64) for m in masks]),
                       jit_compile=jit_compile)


def seconds_per_call(call: Callable[[], tf.Tensor], calls: int) -> float:
    """Runs ``call()`` ``calls`` times back to back; returns the wall time per call, waiting for
    the last result (and for anything pending before the first)."""
    np.asarray(call())
    start = time.perf_counter()
    for _ in range(calls):
        result = call()
    np.asarray(result)
    return (time.perf_counter() - start) / calls


def steps_per_second(step: Step, x: tf.Tensor, y: tf.Tensor, steps: int) -> float:
    """Runs ``step(x, y)`` ``steps`` times back to back; returns steps per second of wall time."""
    return 1.0 / seconds_per_call(lambda: step(x, y), steps)


def steps_for(step: Step, x: tf.Tensor, y: tf.Tensor, seconds: float, most: int = 1000) -> int:
    """How many steps of ``step`` take about ``seconds`` (at least 1, at most ``most``), from a
    short timed warm-up of an already compiled step."""
    step(x, y).numpy()
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < 0.1:
        loss = step(x, y)
        loss.numpy()
        calls += 1
    seconds_per_step = (time.perf_counter() - start) / calls
    return max(1, min(most, round(seconds / seconds_per_step)))


def alternate(steps: Mapping[str, Step], x: tf.Tensor, y: tf.Tensor, count: int,
              rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times each named step function for ``count`` steps, the names taking turns within each of
    ``rounds`` rounds (so drifts in machine load hit them alike). Returns the steps/s of every
    round by name, and their medians by name."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            rates[name].append(steps_per_second(step, x, y, count))
    return rates, {name: statistics.median(values) for name, values in rates.items()}


def round_ratios(rates: Mapping[str, Sequence[float]], name: str, baseline: str) -> dict[str, object]:
    """``name``'s rate ÷ ``baseline``'s in each round (both timed in the same round), with their
    median, min, max and quartiles: a slow stretch of the machine that covers a round slows both
    sides of its ratio, where a ratio of medians lets it fall on one side."""
    ratios = [a / b for a, b in zip(rates[name], rates[baseline])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"per_round": ratios, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "q1": quartiles[0], "q3": quartiles[2]}
