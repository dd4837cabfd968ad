"""tf.distribute: MirroredStrategy over 2 logical CPU devices gives the same masks and (within
float tolerance) the same weights as one device with the same global batch, for each algorithm,
in ``ks.Trainer`` and in plain ``model.fit`` with a ``SparseOptimizer``;
MultiWorkerMirroredStrategy runs with two local worker processes.

TensorFlow fixes its logical devices when it starts, so the checks run in a fresh process.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

# One child process for both comparisons (each is a function, so a failure in one leaves the
# other's lines intact); TensorFlow's start-up and the strategy are paid once.
COMPARE = r"""
import sys, traceback
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import keras_sparse as ks
sys.path.insert(0, "tests")
from conftest import SMALL_RUN_ALGORITHMS as ALGORITHMS, build_small_convnet, small_convnet_data

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2


def compare_trainer(names):
    data = small_convnet_data()  # 6 steps an epoch, global batch 16

    def train(name, strategy):
        with strategy.scope():
            model = ks.wrap(build_small_convnet())
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        trainer = ks.Trainer(model, ALGORITHMS[name](), optimizer,
                             keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                             progress=False, strategy=strategy)
        trainer.fit(data, epochs=2)
        return model, trainer

    for name in names:
        one, one_trainer = train(name, tf.distribute.get_strategy())
        two, two_trainer = train(name, mirrored)
        masks_one, masks_two = ks.get_masks(one), ks.get_masks(two)
        for key in masks_one:
            assert np.array_equal(masks_one[key], masks_two[key]), (name, key)
        for a, b in zip(one.weights, two.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{name} {a.path}")
            # Every replica holds the same copy.
            copies = [v.numpy() for v in getattr(b.value, "values", [b.value])]
            assert all(np.array_equal(copies[0], c) for c in copies), (name, b.path)
        assert one_trainer.cost.dense_gradient_steps == two_trainer.cost.dense_gradient_steps, name
        print("OK trainer", name, ks.sparsity(two), flush=True)

    # Several steps per compiled call need one device: a clear error, not a wrong result.
    with mirrored.scope():
        model = ks.wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")]))
    try:
        ks.Trainer(model, ALGORITHMS["static"](), keras.optimizers.SGD(0.1), "mse", strategy=mirrored,
                   steps_per_execution=2)
    except ks.errors.ConfigError as error:
        assert "single device" in str(error), error
        print("OK trainer refused", flush=True)


def compare_fit(names):
    def train(name, strategy):
        with strategy.scope():
            model = build_small_convnet()
            optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), ALGORITHMS[name](),
                                           total_steps=12, model=model)
            model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(small_convnet_data(), epochs=2, verbose=0)
        assert int(optimizer.iterations.numpy()) == 12, int(optimizer.iterations.numpy())
        return model

    for name in names:
        one, two = train(name, tf.distribute.get_strategy()), train(name, mirrored)
        masks_one, masks_two = ks.get_masks(one), ks.get_masks(two)
        for key in masks_one:
            assert np.array_equal(masks_one[key], masks_two[key]), (name, key)
        for a, b in zip(one.weights, two.weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{name} {a.path}")
        for w in ks.masked_weights(two):
            assert np.all(w.variable.numpy()[~w.mask.numpy()] == 0), (name, w.key)
        print("OK fit", name, ks.sparsity(two), flush=True)


failed = False
for check, names in ((compare_trainer, sys.argv[1].split(",")), (compare_fit, sys.argv[2].split(","))):
    try:
        check(names)
    except BaseException:
        failed = True
        print(f"FAILED {check.__name__}", flush=True)
        traceback.print_exc()
sys.exit(1 if failed else 0)
"""

TRAINER_NAMES = ["dense", "static", "magnitude", "snip", "set", "rigl", "rigl_frozen"]
FIT_NAMES = ["magnitude", "rigl"]  # a mask update after the optimizer step, and one instead of it


def compare(directory):
    return subprocess.run([sys.executable, "-c", COMPARE, ",".join(TRAINER_NAMES), ",".join(FIT_NAMES)],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)


# conftest.BackgroundRuns starts the child process when the session starts, beside the in-process tests.
BACKGROUND = {test: {"compare": compare} for test in ("test_mirrored_matches_one_device",
                                                      "test_mirrored_model_fit_matches_one_device")}


@pytest.fixture(scope="module")
def comparison(background):
    return background.result(__name__, "compare")[1]


def check(comparison, kind, expected):
    """The ``OK <kind> <name>`` lines, each printed after all checks of that name; and a clean exit
    unless the other comparison failed."""
    passed = [line.split()[2] for line in comparison.stdout.splitlines() if line.startswith(f"OK {kind} ")]
    assert passed == expected, comparison.stderr[-4000:]
    other = {"trainer": "compare_fit", "fit": "compare_trainer"}[kind]
    assert comparison.returncode == 0 or f"FAILED {other}" in comparison.stdout, comparison.stderr[-4000:]


def test_mirrored_matches_one_device(comparison):
    check(comparison, "trainer", TRAINER_NAMES + ["refused"])


def test_mirrored_model_fit_matches_one_device(comparison):
    check(comparison, "fit", FIT_NAMES)
