"""The builders every benchmark script shares: seeded models, random data, optimizers,
algorithms, trainers, and the compiled step programs written around ``ks.SparseOptimizer``;
plus timing of a compiled call.

Everything here uses keras-sparse's public API (``ks.wrap``, ``ks.SparseOptimizer`` and its
``apply`` / ``sparse_apply``, ``ks.Trainer``, ``ks.algorithms``, ``ks.masked_weights``,
``ks.sparsity``, ``keras_sparse.models``): the benchmarks time what a user can write.

The scripts run as ``python benchmarks/<script>.py``, which puts this directory on ``sys.path``:
they ``import common`` (and ``harness``, the parts that need no TensorFlow).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import data as data_lib
from keras_sparse import models

try:
    from keras_sparse.epochs import without_autotune
except ImportError:  # the library before its epoch pipeline had a module of its own
    from keras_sparse.trainer import without_autotune

Step = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
CLASSES = 10
SPARSITY = 0.9


def sgd() -> keras.optimizers.Optimizer:
    """SGD(0.01, momentum 0.9): the optimizer of every LeNet/CNN speed benchmark."""
    return keras.optimizers.SGD(0.01, momentum=0.9)


#: The models of the benchmarks: name -> (input shape, batch, optimizer factory). The CNNs and
#: MLPs train with SGD + momentum at batch 128; the MNIST-1D transformer with AdamW at batch 64,
#: as transformers are trained. ``mlp`` takes its widths as ``hidden=(w, w)``.
MODELS: dict[str, tuple[tuple[int, ...], int, Callable[[], keras.optimizers.Optimizer]]] = {
    "lenet_300_100": ((28, 28, 1), 128, sgd),
    "lenet5": ((28, 28, 1), 128, sgd),
    "resnet": ((32, 32, 3), 128, sgd),
    "mlp": ((784,), 128, sgd),
    "mnist1d_cnn": ((40, 1), 64, sgd),
    "mnist1d_transformer": ((40, 1), 64, lambda: keras.optimizers.AdamW(1e-3)),
}


def build(name: str, **options) -> keras.Model:
    """Model ``name`` of ``MODELS`` (a ``keras_sparse.models`` name; ``options`` go to its
    builder) with seed 0's initial weights: two builds are the same network."""
    keras.utils.set_random_seed(0)
    return models.build(MODELS[name][0], CLASSES, name=name, **options)


def lenet_300_100() -> keras.Model:
    return build("lenet_300_100")


def optimizer_for(name: str) -> keras.optimizers.Optimizer:
    """A fresh optimizer of the kind model ``name`` trains with (``MODELS``)."""
    return MODELS[name][2]()


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------------------------------------ data
def arrays(shape: Sequence[int], examples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``examples`` random float32 inputs of ``shape`` and int64 labels of ``CLASSES`` classes."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(examples, *shape)).astype("float32"),
            rng.integers(0, CLASSES, size=examples).astype("int64"))


def batch_of(name: str, batch: int | None = None, seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """A fixed random batch for model ``name`` (default batch from ``MODELS``), as tensors."""
    x, y = arrays(MODELS[name][0], batch or MODELS[name][1], seed)
    return tf.constant(x), tf.constant(y)


def autotuned(data: tf.data.Dataset, enabled: bool) -> tf.data.Dataset:
    """``data`` with tf.data's ``options.autotune.enabled`` set to ``enabled``."""
    options = tf.data.Options()
    options.autotune.enabled = enabled
    return data.with_options(options)


def dataset(shape: Sequence[int], steps: int, batch: int, seed: int = 0, autotune: bool | None = False,
            distinct: int | None = None) -> tf.data.Dataset:
    """``steps`` fixed random in-memory batches of ``batch`` inputs of ``shape``, cached.

    ``autotune=False``: tf.data's autotuning off, as ``ks.Trainer`` runs its data
    (``without_autotune``), so that every loop reading it, ``model.fit`` included, reads the same
    pipeline; ``True`` sets it on; ``None`` leaves TensorFlow's default (on), which the Trainer
    turns off itself. ``distinct``: at most that many different batches, repeated to ``steps``.
    """
    count = min(steps, distinct or steps)
    x, y = arrays(shape, count * batch, seed)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache()
    if count < steps:
        data = data.repeat().take(steps)
    if autotune is None:
        return data
    return autotuned(data, True) if autotune else without_autotune(data)


# ------------------------------------------------------------------ algorithms and trainers
ALGORITHMS = ["dense", "static", "snip", "magnitude", "set", "rigl", "rigl_frozen"]


def algorithm(name: str, every: int = 100, end_step: int | None = None,
              freeze_step: int | None = None) -> ks.algorithms.SparseAlgorithm:
    """Algorithm ``name`` of ``ALGORITHMS`` at 90% sparsity. The updating ones update every
    ``every`` steps until ``end_step`` (None: the algorithm's default, from the length of
    training); magnitude pruning starts at step 0; ``rigl_frozen`` is RigL frozen at
    ``freeze_step``."""
    if name == "dense":
        return ks.algorithms.Dense()
    if name == "static":
        return ks.algorithms.StaticSparse(sparsity=SPARSITY)
    if name == "snip":
        return ks.algorithms.SNIP(sparsity=SPARSITY)
    if name == "magnitude":
        return ks.algorithms.MagnitudePruning(sparsity=SPARSITY, begin_step=0, end_step=end_step, frequency=every)
    dynamic = {"sparsity": SPARSITY, "update_frequency": every, "end_step": end_step}
    if name == "set":
        return ks.algorithms.SET(**dynamic)
    if name == "rigl":
        return ks.algorithms.RigL(**dynamic)
    if name == "rigl_frozen":
        return ks.algorithms.RigL(**dynamic, freeze_step=freeze_step)
    raise ValueError(f"unknown algorithm {name!r}: one of {ALGORITHMS}")


def trainer(model: keras.Model, algo: ks.algorithms.SparseAlgorithm, optimizer: keras.optimizers.Optimizer,
            steps_per_execution: int | str = 1, jit_compile: bool | str = True) -> ks.Trainer:
    """``ks.Trainer`` on ``model``, which ``ks.wrap`` masks here, in place; quiet."""
    return ks.Trainer(ks.wrap(model, quiet=True), algo, optimizer, loss_fn(), jit_compile=jit_compile, progress=False,
                      steps_per_execution=steps_per_execution)


def epochs_of(trainer: ks.Trainer, data, steps_per_epoch: int | None = None) -> Callable[[int], None]:
    """``epoch(count=1)``: trains ``count`` more epochs of ``data`` (``fit``'s ``epochs`` counts
    from the start of training). The first call fixes the length of training the algorithm's
    schedule sees, so a warm-up that must reach a freeze step runs as one call."""
    done = [0]

    def epoch(count: int = 1) -> None:
        done[0] += count
        trainer.fit(data, epochs=done[0], steps_per_epoch=steps_per_epoch)

    return epoch


def load_data(name: str, batch_size: int, seed: int = 0):
    """``keras_sparse.data.load`` of data set ``name`` on all its training examples: versions of
    the library that hold out a validation split are told to hold out none, so that every
    version trains on the same batches."""
    options = {}
    if "validation_fraction" in inspect.signature(data_lib.load).parameters:
        options["validation_fraction"] = 0.0
    return data_lib.load(batch_size=batch_size, seed=seed, name=name, **options)


#: The bindings ``mnist1d_run`` understands; a config with others is refused, not half-built.
RUN_BINDINGS = {"data.name", "model.name", "training.epochs", "training.batch_size", "training.optimizer",
                "training.learning_rate", "training.momentum", "training.lr_schedule", "training.algorithm",
                "training.jit_compile", "training.steps_per_execution"}


def mnist1d_run(bindings: Mapping[str, Any], seed: int = 0) -> tuple[ks.Trainer, keras.Model, Any]:
    """The trainer, wrapped model and ``keras_sparse.data`` set of a gin config's run (the
    bindings of ``harness.gin_bindings``, e.g. of ``gin_configs/rigl.gin``: MNIST-1D CNN, RigL
    90%, batch 64, SGD + momentum, cosine learning rate), quiet, on every training example.

    Built from ``load_data``, ``keras_sparse.models`` and ``ks.Trainer`` as the training binary
    composes them, not through the binary's own run builder: that one's module and data split
    change between versions of the library, and its trainer takes the length of training (RigL's
    end) from the first ``fit`` call, where a benchmark that trains one epoch a call needs the
    whole run's.
    """
    unknown = {key for key in bindings if key not in RUN_BINDINGS and not key.startswith(
        bindings["training.algorithm"][1:-2] + ".")}
    if unknown or bindings.get("training.optimizer", "sgd") != "sgd":
        raise NotImplementedError(f"mnist1d_run builds SGD runs with the bindings {sorted(RUN_BINDINGS)} only; "
                                  f"this config also has {sorted(unknown)} / {bindings.get('training.optimizer')}")
    keras.utils.set_random_seed(seed)
    data = load_data(bindings["data.name"], bindings["training.batch_size"], seed)
    keras.utils.set_random_seed(seed)
    model = ks.wrap(models.build(data.input_shape, data.num_classes, name=bindings["model.name"]), quiet=True)
    total = bindings["training.epochs"] * data.steps_per_epoch
    rate = bindings["training.learning_rate"]
    if bindings.get("training.lr_schedule", "constant") == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, total)
    optimizer = keras.optimizers.SGD(rate, momentum=bindings["training.momentum"])
    name = bindings["training.algorithm"][1:-2]  # "@RigL()"
    options = {key.split(".", 1)[1]: value for key, value in bindings.items() if key.startswith(name + ".")}
    if name in ("RigL", "SET"):
        options.setdefault("end_step", int(0.75 * total))  # their default end, 75% of the whole run
    algo = getattr(ks.algorithms, name)(**options)
    trainer = ks.Trainer(model, algo, optimizer, loss_fn(), jit_compile=bindings.get("training.jit_compile", True),
                         progress=False, steps_per_execution=bindings.get("training.steps_per_execution", 1))
    return trainer, model, data


def sparse_optimizer(model: keras.Model, algo: ks.algorithms.SparseAlgorithm,
                     optimizer: keras.optimizers.Optimizer, total_steps: int | None = None) -> ks.SparseOptimizer:
    """``ks.SparseOptimizer(optimizer, algo, model=model)`` (which wraps ``model`` in place),
    built on the model's trainable variables, with the algorithm's initial masks set."""
    sparse = ks.SparseOptimizer(optimizer, algo, total_steps=total_steps, model=model)
    sparse.build(model.trainable_variables)
    sparse.prepare()
    return sparse


# ----------------------------------------------------------------------- step programs
def train_step(model: keras.Model, apply: Callable[[list, list], object], loss: Callable, jit_compile: bool,
               watch_loss: bool = False) -> Step:
    """``step(x, y) -> loss`` in one ``tf.function`` (XLA-compiled if ``jit_compile``): forward,
    gradients, then ``apply(gradients, variables)`` (an optimizer's update).

    ``watch_loss`` adds what ``ks.Trainer``'s step does besides the optimizer step: a step
    counter and the record of the first step with a non-finite loss (which changes the plain
    step's speed on CPU: BENCHMARKS.md).
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


# ------------------------------------------------------------------------------- timing
def serving_call(signature, inputs: tf.Tensor) -> Callable[[], tf.Tensor]:
    """A call of a loaded SavedModel's one-input signature on ``inputs``, returning its first
    output. By keyword, as signatures are meant to be called: a positional call goes through
    TensorFlow's fallback binding of positional arguments, a fixed cost per call that weighs on
    batch 1 (BENCHMARKS.md section 11)."""
    (key,) = signature.structured_input_signature[1]
    return lambda: next(iter(signature(**{key: inputs}).values()))


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


def rotated_rates(variants: Mapping[str, Step], x: tf.Tensor, y: tf.Tensor, steps: int,
                  rounds: int) -> dict[str, list[float]]:
    """Steps/s of each of ``variants`` over ``rounds`` rounds of ``steps`` steps, the order
    rotated by one variant each round (so each takes every place in turn)."""
    names = list(variants)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            rates[n].append(steps_per_second(variants[n], x, y, steps))
    return rates


def steps_for(step: Step, x: tf.Tensor, y: tf.Tensor, seconds: float, most: int = 1000) -> int:
    """How many steps of ``step`` take about ``seconds`` (at least 1, at most ``most``), from a
    short timed warm-up of an already compiled step."""
    step(x, y).numpy()
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < 0.1:
        step(x, y).numpy()
        calls += 1
    seconds_per_step = (time.perf_counter() - start) / calls
    return max(1, min(most, round(seconds / seconds_per_step)))
