"""``SparseOptimizer``: sparse training with a line in plain ``model.compile`` / ``model.fit``.

The reference is ``ks.Trainer``, which runs the same optimizer step in its own loop: for every
algorithm ``model.fit`` must give the same masks and weights. Then the Keras features a user
already relies on: jit on and off, steps_per_execution, numpy / tf.data / generators, string
losses, mixed precision, several fit calls, callbacks, and a GradientTape loop.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    RUN_EPOCHS,
    RUN_STEPS_PER_EPOCH,
    RUN_TOTAL_STEPS,
    SMALL_RUN_ALGORITHMS,
    build_convnet,
    build_mlp,
    build_small_convnet,
    loss_fn,
    make_arrays,
    make_dataset,
    run_algorithms,
    small_convnet_data,
)

import keras_sparse as ks
from keras_sparse import algorithms
from keras_sparse.optimizer import as_sparse_optimizer, summed_gradients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12  # small_convnet_data: 6 steps an epoch, 2 epochs


def _sparse_optimizer(name, model=None, **kwargs):
    return ks.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), SMALL_RUN_ALGORITHMS[name](),
                              total_steps=STEPS, steps_per_epoch=6, model=model, **kwargs)


def _check_exact_zeros(model):
    for w in ks.masked_weights(model):
        assert np.all(w.variable.numpy()[~w.mask.numpy()] == 0), w.key


@pytest.mark.parametrize("name, steps_per_execution", [(name, 1) for name in sorted(run_algorithms())]
                         + [("rigl", 4), ("rigl", 3)])
def test_fit_matches_trainer(algorithm_runs, name, steps_per_execution):
    """conftest's Trainer run of each algorithm (XLA, one step a call), repeated through plain
    model.fit: the same masks and weights, also with Keras's steps_per_execution."""
    reference = algorithm_runs[name].trainer
    jit = name in ("rigl", "magnitude", "set") and steps_per_execution != 3  # compiling is the slow part
    model = build_convnet(seed=11)
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), run_algorithms()[name](),
                                   total_steps=RUN_TOTAL_STEPS, steps_per_epoch=RUN_STEPS_PER_EPOCH, model=model)
    data = make_dataset(RUN_STEPS_PER_EPOCH * 8, (6, 6, 1), 3, batch=8, seed=5)
    if optimizer.algorithm.scoring_batches:
        model.compile(optimizer=optimizer, loss=loss_fn())
        optimizer.initialize_masks(data)  # SNIP: the one extra call
    model.compile(optimizer=optimizer, loss=loss_fn(), metrics=["accuracy"], jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    history = model.fit(data, epochs=RUN_EPOCHS, verbose=0)

    masks, expected = ks.get_masks(model), ks.get_masks(reference.model)
    assert masks.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(masks[key], expected[key], err_msg=key)
    # (conftest's run made one extra forward pass in training mode, which moved its BatchNorm
    # statistics: compare the trainable weights.)
    for a, b in zip(model.trainable_weights, reference.model.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    _check_exact_zeros(model)
    assert int(optimizer.iterations.numpy()) == RUN_TOTAL_STEPS == reference.step
    assert len(history.history["loss"]) == RUN_EPOCHS and np.isfinite(history.history["loss"]).all()


def test_rigl_updates_at_step_zero_and_skips_the_optimizer_step_there():
    """RigL's Algorithm 1 (and google-research/rigl, jaxpruner): updates at t = 0, ΔT, 2ΔT, …,
    and an update step changes masks instead of taking an optimizer step."""
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05), algorithms.RigL(sparsity=0.8, update_frequency=3,
                                                                              end_step=7), model=model)
    model.compile(optimizer=optimizer, loss=loss_fn())
    optimizer.prepare()  # the initial masks, which the first step then updates
    before = [v.numpy().copy() for v in model.trainable_variables]
    masks_before = {w.variable.path: w.mask.numpy() for w in ks.masked_weights(model)}
    x, y = next(iter(small_convnet_data()))
    model.train_on_batch(x, y)  # step 0: a mask update
    masks = {w.variable.path: w.mask.numpy() for w in ks.masked_weights(model)}
    assert any(not np.array_equal(masks[k], masks_before[k]) for k in masks)
    for w, old in zip(model.trainable_variables, before):
        if w.path not in masks:
            np.testing.assert_array_equal(w.numpy(), old, err_msg=w.path)  # no optimizer step: biases unchanged
        else:  # kept weights unchanged; dropped and grown ones zero
            np.testing.assert_array_equal(w.numpy(), np.where(masks[w.path] & masks_before[w.path], old, 0),
                                          err_msg=w.path)
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 0 and int(optimizer.iterations.numpy()) == 1
    model.train_on_batch(x, y)  # step 1: a plain step
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 1
    assert [s for s in range(10) if optimizer.algorithm.is_update_step(s)] == [0, 3, 6]


def test_magnitude_pruning_takes_the_step_then_prunes():
    algo = algorithms.MagnitudePruning(sparsity=0.5, begin_step=0, end_step=0, frequency=1)
    assert not algo.skips_optimizer_step
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05), algo, model=model)
    model.compile(optimizer=optimizer, loss=loss_fn())
    x, y = next(iter(small_convnet_data()))
    model.train_on_batch(x, y)
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 1
    assert ks.sparsity(model) == pytest.approx(0.5, abs=0.01)
    _check_exact_zeros(model)


@pytest.mark.parametrize("kind", ["numpy", "generator"])  # tf.data: every other test
def test_data_kinds_and_string_losses(kind):
    x, y = make_arrays(64, (8,), 2, seed=1)
    y = y.astype("float32")[:, None]
    model = build_mlp(n_in=8, n_out=1)
    model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.1),
                                               algorithms.RigL(sparsity=0.7, update_frequency=2),
                                               total_steps=16, model=model),
                  loss="binary_crossentropy", jit_compile=True)
    if kind == "numpy":
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    elif kind == "generator":
        def batches():
            for _ in range(2):
                for i in range(0, 64, 8):
                    yield x[i:i + 8], y[i:i + 8]
        model.fit(batches(), steps_per_epoch=8, epochs=2, verbose=0)
    else:
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 16
    assert ks.sparsity(model) == pytest.approx(0.7, abs=0.02)
    _check_exact_zeros(model)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_learns_like_float32(policy):
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which scales the
    loss and unscales the gradients: a step that ignored the scale would learn nothing."""
    x, y = make_arrays(256, (8,), 4, seed=2)
    y = (x[:, 0] > 0).astype("int64") + 2 * (x[:, 1] > 0).astype("int64")
    losses = {}
    for name in ("float32", policy):
        keras.mixed_precision.set_global_policy(name)
        try:
            model = build_mlp(seed=3, n_in=8, hidden=(32,), n_out=4)
            model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.1, momentum=0.9),
                                                       algorithms.RigL(sparsity=0.5, update_frequency=8),
                                                       total_steps=160, model=model),
                          loss=loss_fn())
            history = model.fit(x, y, batch_size=32, epochs=20, verbose=0)
            losses[name] = history.history["loss"]
            _check_exact_zeros(model)
        finally:
            keras.mixed_precision.set_global_policy("float32")
    assert losses[policy][-1] < 0.6 * losses[policy][0]  # it learns
    np.testing.assert_allclose(losses[policy], losses["float32"], rtol=0.15, atol=0.05)


def test_gradient_tape_loop():
    model = build_mlp(n_in=8, n_out=3)
    optimizer = ks.SparseOptimizer(keras.optimizers.Adam(1e-2), algorithms.SET(sparsity=0.6, update_frequency=2),
                                   total_steps=6, model=model)
    x, y = make_arrays(16, (8,), 3)

    @tf.function  # (the XLA step is tested through model.fit and the Trainer)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn()(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    first = ks.get_masks(model)
    for _ in range(6):
        step(x, y)
    assert int(optimizer.iterations.numpy()) == 6
    assert any(not np.array_equal(first[k], m) for k, m in ks.get_masks(model).items())  # SET moved some
    assert ks.sparsity(model) == pytest.approx(0.6, abs=0.02)
    _check_exact_zeros(model)


def test_several_fit_calls_continue_one_schedule_and_say_when_past_its_end(capsys):
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05), algorithms.RigL(sparsity=0.8, update_frequency=2))
    model.compile(optimizer=optimizer, loss=loss_fn())
    ks.wrap(model)
    callback = ks.SparsityCallback()
    model.fit(small_convnet_data(), epochs=2, verbose=0, callbacks=[callback])  # the schedule: 12 steps
    assert optimizer.total_steps == 12 and "past" not in capsys.readouterr().err
    masks = ks.get_masks(model)
    for _ in range(2):
        history = model.fit(small_convnet_data(), epochs=1, verbose=0, callbacks=[callback])
    assert capsys.readouterr().err.count("past the schedule's 12 steps") == 1
    assert int(optimizer.iterations.numpy()) == 24
    for key, mask in ks.get_masks(model).items():  # no update after the end (75% of 12 steps)
        np.testing.assert_array_equal(mask, masks[key])
    assert history.history["sparsity"] == [pytest.approx(ks.sparsity(model))]


@pytest.mark.parametrize("algorithm, says", [
    (lambda: algorithms.RigL(sparsity=0.8, update_frequency=2), True),
    (lambda: algorithms.RigL(sparsity=0.8, update_frequency=2, end_step=100), False),  # updates go on
    (lambda: algorithms.StaticSparse(sparsity=0.8), False),  # nothing scheduled
])
@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_without_the_callback_a_fit_call_past_the_schedule_says_so_once_when_it_ends(
        capsys, steps_per_execution, algorithm, says):
    """Issue 14, "never silent": with an explicit total_steps and no SparsityCallback, the first fit
    call that ends past the schedule says so in one line (Keras calls finalize_variable_values
    when fit ends); calls within the schedule, and later calls, say nothing; nor do algorithms
    whose masks would not change anyway."""
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05), algorithm(), total_steps=12, model=model)
    model.compile(optimizer=optimizer, loss=loss_fn(), steps_per_execution=steps_per_execution)
    model.fit(small_convnet_data(), epochs=2, verbose=0)  # 12 steps: the schedule's end exactly
    assert "past" not in capsys.readouterr().err
    model.fit(small_convnet_data(), epochs=1, verbose=0)
    err = capsys.readouterr().err
    assert err.count("past the schedule's 12 steps") == says and ("runs to step 18" in err) == says
    model.fit(small_convnet_data(), epochs=1, verbose=0)
    assert "past" not in capsys.readouterr().err


@pytest.mark.parametrize("steps_per_epoch, says", [(5, True), (None, False), (8, False)])
def test_an_epoch_longer_than_steps_per_epoch_is_said_once(capsys, steps_per_epoch, says):
    """Keras's fit runs whole chunks of steps_per_execution steps while the data lasts: 5 steps an
    epoch at 4 a call run 8 on repeated data, and the schedule taken from the first call (2 × 5
    steps) ends early; the callback says so once. Finite data of 6 batches (chunks of 4 and 2)
    and a multiple of 4 run what they say: nothing is said."""
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05), algorithms.RigL(sparsity=0.8, update_frequency=2),
                                   model=model)
    model.compile(optimizer=optimizer, loss=loss_fn(), steps_per_execution=4)
    data = small_convnet_data() if steps_per_epoch is None else small_convnet_data().repeat()
    model.fit(data, epochs=2, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[ks.SparsityCallback()])
    planned = steps_per_epoch or 6
    ran = 8 if says else planned
    assert int(optimizer.iterations.numpy()) == 2 * ran and optimizer.total_steps == 2 * planned
    err = [line for line in capsys.readouterr().err.splitlines() if "steps_per_epoch=" in line]
    assert err == (["keras-sparse: epoch 1 ran 8 steps, not steps_per_epoch=5: Keras's fit runs whole chunks of "
                    "steps_per_execution=4 steps while the data lasts; the schedule, taken from epochs × "
                    "steps_per_epoch, has 10 steps: make steps_per_epoch a multiple of steps_per_execution, or "
                    "pass total_steps to SparseOptimizer."] if says else [])


def test_keras_callbacks(tmp_path):
    model = build_small_convnet()
    model.compile(optimizer=_sparse_optimizer("rigl", model=model), loss=loss_fn(), metrics=["accuracy"])
    callbacks = [ks.SparsityCallback(), keras.callbacks.EarlyStopping(monitor="loss", patience=5),
                 keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras")),
                 keras.callbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"), save_weights_only=True),
                 keras.callbacks.TensorBoard(str(tmp_path / "tb")),
                 keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))]
    model.fit(small_convnet_data(), epochs=2, verbose=0, callbacks=callbacks)
    assert "sparsity" in (tmp_path / "log.csv").read_text().splitlines()[0]
    assert os.listdir(tmp_path / "tb")
    loaded = ks.load_model(str(tmp_path / "best.keras"))
    for key, mask in ks.get_masks(model).items():
        np.testing.assert_array_equal(ks.get_masks(loaded)[key], mask)
    fresh = ks.wrap(build_small_convnet(seed=9))
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    for key, mask in ks.get_masks(model).items():
        np.testing.assert_array_equal(ks.get_masks(fresh)[key], mask)
    # The loaded model continues training from its optimizer state and masks.
    loaded.fit(small_convnet_data(), epochs=1, verbose=0)
    _check_exact_zeros(loaded)


# argv: straight.npz, its backup dir, resumed.npz, its backup dir, and the phase: "straight_then_kill"
# trains the uninterrupted run, then (in the same process, from the same seeds) the run a
# preemption stops mid-epoch; "resume" reruns that one in a fresh process, as after a preemption.
BACKUP = r"""
import os, sys
import keras, numpy as np
import keras_sparse as ks
sys.path.insert(0, "tests")
from conftest import SMALL_RUN_ALGORITHMS, build_small_convnet, loss_fn, small_convnet_data
straight, straight_backup, resumed, resumed_backup, phase = sys.argv[1:6]

def train(out, backup, kill_at=None):
    model = build_small_convnet()
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), SMALL_RUN_ALGORITHMS["rigl"](),
                                   total_steps=24, model=model)
    model.compile(optimizer=optimizer, loss=loss_fn(), jit_compile=True)

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if kill_at is not None and int(self.model.optimizer.iterations.numpy()) == kill_at:
                os._exit(3)  # as a preemption would: no clean-up, mid-epoch

    model.fit(small_convnet_data(), epochs=4, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup), Kill()])
    np.savez(out, *[v.numpy() for v in model.weights], *ks.get_masks(model).values())

if phase == "straight_then_kill":
    train(straight, straight_backup)
    train(resumed, resumed_backup, kill_at=15)
else:
    train(resumed, resumed_backup)
"""


def backup_kill_then_resume(tmp_path):
    """BACKUP's two phases, one after the other: a straight run, then a run killed at step 15; then
    the killed run's rerun. Returns both processes."""
    def run(phase):
        return subprocess.run([sys.executable, "-c", BACKUP, str(tmp_path / "straight.npz"),
                               str(tmp_path / "backup-straight"), str(tmp_path / "resumed.npz"),
                               str(tmp_path / "backup-resumed"), phase],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))

    killed = run("straight_then_kill")
    finished_before_the_rerun = ((tmp_path / "straight.npz").exists(), (tmp_path / "resumed.npz").exists())
    return killed, finished_before_the_rerun, run("resume")


# conftest.BackgroundRuns starts these child processes when the session starts, beside the
# in-process tests.
BACKGROUND = {"test_backup_and_restore_after_a_kill_gives_the_uninterrupted_run": {
    "backup_kill_then_resume": backup_kill_then_resume}}


def test_backup_and_restore_after_a_kill_gives_the_uninterrupted_run(background):
    tmp_path, (killed, finished_before_the_rerun, resumed) = background.result(__name__, "backup_kill_then_resume")
    assert killed.returncode == 3, killed.stderr[-3000:]
    assert finished_before_the_rerun == (True, False)  # the straight run ended, the killed one did not
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert len(straight.files) == len(again.files)
    for key in straight.files:
        np.testing.assert_array_equal(straight[key], again[key], err_msg=key)


def test_bad_input_gets_one_clear_line():
    model = build_small_convnet()
    with pytest.raises(ks.errors.ConfigError, match="has a mask|wrap"):
        model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.StaticSparse(0.5)),
                      loss=loss_fn())
        model.fit(small_convnet_data(), epochs=1, verbose=0)
    with pytest.raises(ks.errors.ConfigError, match="length of training"):
        other = build_small_convnet()
        other.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.RigL(0.5), model=other),
                      loss=loss_fn())
        other.fit(small_convnet_data(), epochs=1, verbose=0)
    algo = algorithms.StaticSparse(0.5)
    first, second = build_small_convnet(), build_small_convnet(seed=1)
    kept = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algo, model=first)  # noqa: F841 (alive: it owns algo)
    with pytest.raises(ks.errors.ConfigError, match="one algorithm object per model"):
        ks.SparseOptimizer(keras.optimizers.SGD(0.1), algo, model=second)
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.StaticSparse(0.5), model=first)
    with pytest.raises(ks.errors.ConfigError, match="another model"):
        second.compile(optimizer=optimizer, loss=loss_fn())
        second.fit(small_convnet_data(), epochs=1, verbose=0)
    snip_model = build_small_convnet()
    snip_model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.SNIP(0.5), model=snip_model),
                       loss=loss_fn())
    with pytest.raises(ks.errors.ConfigError, match="initialize_masks"):
        snip_model.fit(small_convnet_data(), epochs=1, verbose=0)


def test_optimizer_round_trips_through_its_config():
    optimizer = _sparse_optimizer("rigl")
    again = ks.SparseOptimizer.from_config(optimizer.get_config())
    assert type(again.inner_optimizer) is keras.optimizers.SGD
    assert again.algorithm.config() == optimizer.algorithm.config()
    assert (again.total_steps, again.steps_per_epoch) == (STEPS, 6)


@pytest.mark.parametrize("start, stop, steps", [(0, 26, [0, 3, 6, 9, 12, 15, 18]), (4, 13, [6, 9, 12]),
                                                 (19, 26, []), (7, 8, [])])
def test_update_steps_lists_the_schedule_s_mask_updates_between_two_steps(start, stop, steps):
    """RigL every 3 steps up to 75% of 26 steps (its default end): the steps that fused model.fit
    runs as one-step programs."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.RigL(sparsity=0.5, update_frequency=3),
                                   total_steps=26, model=model)
    assert optimizer.update_steps(start, stop) == steps
    assert optimizer.updates_between(start, stop) == bool(steps)


def test_as_sparse_optimizer_wraps_a_plain_optimizer_and_passes_a_sparse_one_through():
    algorithm = algorithms.StaticSparse(0.5)
    wrapped = as_sparse_optimizer(keras.optimizers.SGD(0.1), algorithm)
    assert isinstance(wrapped, ks.SparseOptimizer) and wrapped.algorithm is algorithm
    assert as_sparse_optimizer(wrapped, None) is wrapped
    assert as_sparse_optimizer(wrapped, algorithm) is wrapped
    with pytest.raises(ks.errors.ConfigError, match="runs another algorithm than the one given"):
        as_sparse_optimizer(wrapped, algorithms.StaticSparse(0.5))


def test_summed_gradients_add_up_over_the_batches_and_leave_batchnorm_statistics_as_they_were():
    model = ks.wrap(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False, name="fc"),
                                      keras.layers.BatchNormalization(name="bn")]), quiet=True)
    batches = [(tf.constant([[1.0, 2.0]]), None), (tf.constant([[3.0, 4.0], [5.0, 6.0]]), None)]
    moving = [v.numpy() for v in model.non_trainable_variables]
    # The loss is the fc layer's summed output: its kernel's gradient is each batch's summed input.
    fc = model.get_layer("fc")
    gradients = summed_gradients(model, ks.masked_weights(model), batches, lambda x, y, _: tf.reduce_sum(fc(x)))
    np.testing.assert_array_equal(gradients["fc/kernel"], [[9.0], [12.0]])
    for before, variable in zip(moving, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), before)  # the training-mode calls moved them
