"""Shared tiny fixtures: models, tf.data datasets made from numpy, and a per-step recorder.

Everything here is small enough that the whole suite runs in a few minutes on two CPU cores.
Models are built after ``keras.utils.set_random_seed`` so every test is deterministic.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests' models are tiny, so compiling their XLA programs takes most of the suite's time, and
# LLVM's optimisation passes most of the compiling. Level 0 leaves them out: the programs compute
# the same operations, only less fast (the benchmarks and binaries keep XLA's default level). The
# child processes that tests start inherit it. A caller's own XLA_FLAGS are kept as they are.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import algorithms  # noqa: E402


def build_mlp(seed: int = 0, n_in: int = 8, hidden: tuple[int, ...] = (16, 12), n_out: int = 4,
              activation: str = "tanh", name: str = "mlp") -> keras.Model:
    """A plain (unwrapped) Sequential MLP with layers named ``hidden_<i>`` and ``logits``."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((n_in,))]
    layers += [keras.layers.Dense(h, activation=activation, name=f"hidden_{i}") for i, h in enumerate(hidden)]
    layers.append(keras.layers.Dense(n_out, name="logits"))
    return keras.Sequential(layers, name=name)


def build_convnet(seed: int = 0, n_out: int = 3) -> keras.Model:
    """A plain functional convnet on 6x6x1 inputs: Conv2D, BatchNorm, DepthwiseConv2D, Dense, Dense.

    Masked kernels: conv (3,3,1,4), depthwise (2,2,4,1), fc (36,8), logits (8,3).
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("tanh")(x)
    x = keras.layers.DepthwiseConv2D(2, activation="tanh", name="depthwise")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="tanh", name="fc")(x)
    outputs = keras.layers.Dense(n_out, name="logits")(x)
    return keras.Model(inputs, outputs, name="convnet")


def build_small_convnet(seed: int = 0) -> keras.Model:
    """A plain (unwrapped) Sequential convnet on 6x6x1 inputs: Conv2D 8, Dense 16, Dense 4."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(16, activation="relu", name="fc"),
                             keras.layers.Dense(4, name="out")])


# Every algorithm at 80% sparsity, updating every 2 steps: test_fit and test_distributed (whose
# subprocess imports this module) train these on build_small_convnet and small_convnet_data.
SMALL_RUN_ALGORITHMS = {
    "dense": lambda: algorithms.Dense(),
    "static": lambda: algorithms.StaticSparse(sparsity=0.8),
    "magnitude": lambda: algorithms.MagnitudePruning(sparsity=0.8, begin_step=2, end_step=10, frequency=2),
    "snip": lambda: algorithms.SNIP(sparsity=0.8),
    "set": lambda: algorithms.SET(sparsity=0.8, update_frequency=2),
    "rigl": lambda: algorithms.RigL(sparsity=0.8, update_frequency=2),
    "rigl_frozen": lambda: algorithms.RigL(sparsity=0.8, update_frequency=2, freeze_step=5),
}


def small_convnet_data() -> tf.data.Dataset:
    """96 examples for build_small_convnet in batches of 16: 6 steps an epoch, same order each epoch."""
    return make_dataset(96, (6, 6, 1), 4, batch=16)


def make_arrays(n: int, input_shape: tuple[int, ...], n_classes: int, seed: int = 0):
    """Random float32 inputs and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *input_shape)).astype("float32")
    y = rng.integers(0, n_classes, size=n).astype("int64")
    return x, y


def make_dataset(n: int, input_shape: tuple[int, ...], n_classes: int, batch: int, seed: int = 0) -> tf.data.Dataset:
    """An unshuffled ``tf.data.Dataset`` of ``(x, y)`` batches (same order every epoch)."""
    x, y = make_arrays(n, input_shape, n_classes, seed)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclasses.dataclass
class Snapshot:
    masks: dict[str, np.ndarray]
    kernels: dict[str, np.ndarray]


def snapshot(model: keras.Model) -> Snapshot:
    kernels = ks.masked_kernels(model)
    return Snapshot(masks={k.key: np.asarray(k.mask.numpy(), dtype=bool) for k in kernels},
                    kernels={k.key: k.kernel.numpy().copy() for k in kernels})


class StepRecorder:
    """Records masks and kernels before every training step of a ``Trainer``.

    The trainer asks ``algorithm.is_update_step(step)`` in Python at the start of every step,
    after the previous step's program has run; the recorder hooks in there. ``finish()`` adds
    the state after the last step, so ``snapshots[s]`` is the state after ``s`` steps.
    """

    def __init__(self, trainer: ks.Trainer):
        self.trainer = trainer
        self.snapshots: dict[int, Snapshot] = {}
        algorithm = trainer.algorithm
        original = algorithm.is_update_step

        def spy(step: int) -> bool:
            # The optimizer also asks while tabulating its schedule, before the initial masks.
            if step == trainer.step and step not in self.snapshots and trainer.optimizer.masks_initialized:
                self.snapshots[step] = snapshot(trainer.model)
            return original(step)

        algorithm.is_update_step = spy
        self._original = original

    def finish(self) -> dict[int, Snapshot]:
        """Records the final state and unhooks the algorithm."""
        self.snapshots[self.trainer.step] = snapshot(self.trainer.model)
        del self.trainer.algorithm.is_update_step  # back to the class's method
        return self.snapshots

    def update_steps(self) -> list[int]:
        return [s for s in range(self.trainer.step) if self._original(s)]


# ----------------------------------------------------------------- fixtures
@pytest.fixture
def mlp():
    """Factory: ``mlp(seed=0, ...)`` builds a plain Sequential MLP (see ``build_mlp``)."""
    return build_mlp


@pytest.fixture
def convnet():
    """Factory: ``convnet(seed=0)`` builds a plain functional convnet (see ``build_convnet``)."""
    return build_convnet


@pytest.fixture
def dataset():
    """Factory: ``dataset(n, input_shape, n_classes, batch, seed=0)``."""
    return make_dataset


@pytest.fixture
def step_recorder():
    """The ``StepRecorder`` class: ``StepRecorder(trainer)`` before ``fit``, ``.finish()`` after."""
    return StepRecorder


# Training runs shared by test_algorithms and test_trainer: the tiny convnet, 48 examples in
# batches of 8 (6 steps an epoch), 2 epochs = 12 steps, SGD with momentum (so a dropped weight
# would drift off zero without the trainer's re-masking).
RUN_STEPS_PER_EPOCH = 6
RUN_EPOCHS = 2
RUN_TOTAL_STEPS = RUN_STEPS_PER_EPOCH * RUN_EPOCHS
RUN_SPARSITY = 0.5
RUN_UPDATE_FREQUENCY = 2


def run_algorithms() -> dict[str, callable]:
    dynamic = dict(sparsity=RUN_SPARSITY, distribution="uniform", drop_fraction=0.5,
                   update_frequency=RUN_UPDATE_FREQUENCY, seed=3)
    return {
        "dense": lambda: algorithms.Dense(),
        "static": lambda: algorithms.StaticSparse(RUN_SPARSITY, "uniform", seed=3),
        "magnitude": lambda: algorithms.MagnitudePruning(RUN_SPARSITY, "uniform", begin_step=2, end_step=8,
                                                         frequency=2),
        "snip": lambda: algorithms.SNIP(RUN_SPARSITY),
        "set": lambda: algorithms.SET(**dynamic),
        "rigl": lambda: algorithms.RigL(**dynamic),
        "rigl_frozen": lambda: algorithms.RigL(**dynamic, freeze_epoch=1),
    }


@dataclasses.dataclass
class Run:
    trainer: ks.Trainer
    recorder: StepRecorder
    snapshots: dict[int, Snapshot]
    first_batch: tuple[np.ndarray, np.ndarray]
    initial_kernels: dict[str, np.ndarray]
    initial_gradients: dict[str, np.ndarray]


class _Runs:
    """Lazily trains each algorithm once per session (XLA-compiled, progress off)."""

    def __init__(self):
        self._runs: dict[str, Run] = {}
        self.factories = run_algorithms()

    def __getitem__(self, name: str) -> Run:
        if name not in self._runs:
            self._runs[name] = self._train(name)
        return self._runs[name]

    def _train(self, name: str) -> Run:
        model = ks.wrap(build_convnet(seed=11))
        data = make_dataset(RUN_STEPS_PER_EPOCH * 8, (6, 6, 1), 3, batch=8, seed=5)
        x0, y0 = next(iter(data))
        # Dense gradient on the first batch at initialization, computed here independently.
        kernels = ks.masked_kernels(model)
        with tf.GradientTape() as tape:
            loss = loss_fn()(y0, model(x0, training=True))
        grads = tape.gradient(loss, [k.kernel for k in kernels])
        initial_kernels = {k.key: k.kernel.numpy().copy() for k in kernels}
        initial_gradients = {k.key: g.numpy() for k, g in zip(kernels, grads)}
        trainer = ks.Trainer(model, self.factories[name](), keras.optimizers.SGD(0.05, momentum=0.9), loss_fn(),
                             metrics=["accuracy"], jit_compile=True, steps_per_execution=1, progress=False)
        recorder = StepRecorder(trainer)
        trainer.fit(data, epochs=RUN_EPOCHS)
        return Run(trainer, recorder, recorder.finish(), (x0.numpy(), y0.numpy()), initial_kernels,
                   initial_gradients)


@pytest.fixture(scope="session")
def algorithm_runs() -> _Runs:
    """``algorithm_runs[name]``: a ``Run`` of algorithm ``name`` (keys of ``run_algorithms()``)."""
    return _Runs()


# ------------------------------------------------ child processes started early
class BackgroundRuns:
    """Child-process runs (a binary, a worker script) that the slow end-to-end tests check, started
    when the session starts, one at a time beside the tests that run in this process: they spend
    most of their time starting TensorFlow and tracing, on one core, so the second core does them
    while the first runs the in-process tests.

    A test module declares ``BACKGROUND = {test function name: {run name: function(directory)}}``;
    the runs of each selected test start in the order pytest will run the tests, each in a fresh
    directory, and ``background.result(__name__, run name)`` waits for one and returns
    ``(directory, what the function returned)`` (re-raising what it raised). A run that is not
    started (its test not selected) is started on demand.
    """

    def __init__(self, tmp_path_factory, items):
        from concurrent.futures import ThreadPoolExecutor

        self._tmp = tmp_path_factory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background-run")
        self._futures = {}
        for item in items:
            module = getattr(item, "module", None)
            for name in getattr(module, "BACKGROUND", {}).get(getattr(item, "originalname", None), {}):
                self._start(module, name)

    def _start(self, module, name):
        key = (module.__name__, name)
        if key not in self._futures:
            function = next(runs[name] for runs in module.BACKGROUND.values() if name in runs)
            directory = self._tmp.mktemp(name)
            self._futures[key] = self._pool.submit(lambda: (directory, function(directory)))
        return self._futures[key]

    def result(self, module_name, name):
        return self._start(sys.modules[module_name], name).result()

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def checks_a_background_run(item) -> bool:
    """Whether ``item`` is a test that its module's BACKGROUND names (see BackgroundRuns)."""
    return getattr(item, "originalname", None) in getattr(getattr(item, "module", None), "BACKGROUND", {})


def pytest_collection_modifyitems(items):
    """The tests that check background runs go last, in their order: the runs then have all the
    in-process tests' time to finish, and no test waits for one (a wait leaves a core idle)."""
    items[:] = ([item for item in items if not checks_a_background_run(item)]
                + [item for item in items if checks_a_background_run(item)])


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """The session's ``BackgroundRuns`` (see there), started before the first test."""
    runs = BackgroundRuns(tmp_path_factory, request.session.items)
    yield runs
    runs.close()
