"""``ks.fuse_steps``: model.fit with its steps_per_execution steps in one XLA program trains exactly
as Keras's own loop does, batch for batch, and applies only where it can."""

import gc
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import algorithms
from keras_sparse.fused_steps import can_fuse


def _model_and_optimizer(algorithm="rigl"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    algo = (algorithms.RigL(sparsity=0.5, update_frequency=3) if algorithm == "rigl"
            else algorithms.StaticSparse(sparsity=0.5))
    return model, ks.SparseOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), algo, total_steps=26, model=model)


def _data():
    rng = np.random.RandomState(0)
    return rng.randn(100, 8).astype("float32"), rng.randint(0, 4, 100), rng.rand(100).astype("float32")


class _Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


def _fit(fused: bool, steps_per_execution: int = 5):
    model, optimizer = _model_and_optimizer()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  jit_compile=True, steps_per_execution=steps_per_execution)
    if fused:
        assert ks.fuse_steps(model)
    x, y, weights = _data()
    batches = _Batches()
    # 13 batches of 8 an epoch, the last one of 4.
    history = model.fit(x, y, sample_weight=weights, batch_size=8, epochs=2, verbose=0, shuffle=False,
                        callbacks=[batches])
    return model, optimizer, history.history, batches.ends


def _assert_same_training(runs):
    plain, plain_opt, plain_history, plain_ends = runs[False]
    fused, fused_opt, fused_history, fused_ends = runs[True]
    assert int(fused_opt.iterations.numpy()) == int(plain_opt.iterations.numpy()) == 26
    assert fused_ends == plain_ends  # the same calls, so the same callbacks
    for name in plain_history:
        np.testing.assert_allclose(fused_history[name], plain_history[name], rtol=1e-5)
    for a, b in zip(plain.weights, fused.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    masks_plain, masks_fused = list(ks.get_masks(plain).values()), list(ks.get_masks(fused).values())
    assert all(np.array_equal(a, b) for a, b in zip(masks_plain, masks_fused))
    assert any(not m.all() for m in masks_fused)


def test_fused_fit_trains_exactly_like_keras_fit_including_a_short_last_chunk():
    """RigL (mask updates every 3 steps, so at several places in a chunk), sample weights, 13
    batches an epoch at 5 a call: chunks of 5, 5 and 3 (the last with a short batch, run step by
    step)."""
    runs = {fused: _fit(fused) for fused in (False, True)}
    _assert_same_training(runs)
    # The four full chunks (steps 0-4, 5-9, 13-17, 18-22) hold the mask updates at steps 0, 3, 6,
    # 9, 15 and 18: each runs in the one-step program with the in-graph decision, the steps
    # between them in the K-step program without it (traced at the first iterator, to look for
    # convolutions, twice: the first trace makes variables), for both epochs' iterators. The short
    # chunks (steps 10-12, with the update at 12, and steps 23-25, past the updates) ran step by
    # step in the one-step program with the decision: the one without it is never compiled.
    function = runs[True][0].train_function
    assert function.fused.experimental_get_tracing_count() == 0
    assert function.quiet_fused.experimental_get_tracing_count() == 2
    assert function.one_step.experimental_get_tracing_count() == 1
    assert function.quiet_one_step.experimental_get_tracing_count() == 0
    assert function.convolutions is False


def _keras_fit_and_fused_fit(make, x, y, steps_per_execution):
    """Trains ``make()``'s (model, optimizer) twice from seed 0, 2 epochs of batches of 10: in
    Keras's own loop and fused. Asserts the same weights; returns the fused model."""
    models = {}
    for fused in (False, True):
        keras.utils.set_random_seed(0)
        model, optimizer = make()
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                      steps_per_execution=steps_per_execution)
        if fused:
            assert ks.fuse_steps(model)
        model.fit(x, y, batch_size=10, epochs=2, verbose=0, shuffle=False)
        models[fused] = model
    for a, b in zip(models[False].weights, models[True].weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    return models[True]


def test_a_plain_keras_optimizer_trains_fused_exactly_like_keras_fit():
    """No SparseOptimizer, so no mask-update steps for the host to find: every chunk runs the
    K-step program, whose steps are Keras's own train_step."""
    def make():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
        return model, keras.optimizers.SGD(0.1, momentum=0.9)

    x, y, _ = _data()
    model = _keras_fit_and_fused_fit(make, x, y, steps_per_execution=5)
    function = model.train_function
    assert int(model.optimizer.iterations.numpy()) == 20
    # Traced twice at the first step, which makes variables; the quiet set needs a SparseOptimizer.
    assert function.fused.experimental_get_tracing_count() == 2
    assert function.quiet_fused.experimental_get_tracing_count() == 0


def test_steps_with_convolutions_run_as_a_graph_loop_of_the_one_step_xla_program_at_k_above_one():
    """XLA's CPU compiler runs the convolutions of a loop body slowly, so for a convnet the K-step
    program is a graph loop that calls the one-step XLA program, as ks.Trainer runs them: found
    once in the traced K-step XLA program. RigL every 3 steps until step 6 of 8, 2 steps a call:
    the updates (steps 0 and 3) run in the one-step program with the decision, steps 1, 2 and 4-7
    in the loop, whose steps run the one traced without it."""
    def make():
        model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                  keras.layers.Dense(4)])
        return model, ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.RigL(sparsity=0.5, update_frequency=3),
                                         total_steps=8, model=model)

    rng = np.random.RandomState(0)
    model = _keras_fit_and_fused_fit(make, rng.rand(40, 6, 6, 1).astype("float32"), rng.randint(0, 4, 40),
                                     steps_per_execution=2)
    function = model.train_function
    assert function.convolutions is True
    # Each traced once: the loop (made after the XLA program that found the convolutions), the
    # one-step programs without and with the decision; the loop with the decision never runs.
    assert [getattr(function, name).experimental_get_tracing_count()
            for name in ("quiet_fused", "quiet_one_step", "one_step", "fused")] == [1, 1, 1, 0]


def test_one_step_a_call_trains_exactly_like_keras_fit_with_one_program_a_batch_shape():
    """K = 1: the batch pulled in Python and the one-step XLA program called directly; RigL's
    updates decided in-graph. The same 26 steps, logs, weights and masks as Keras's own loop."""
    runs = {fused: _fit(fused, steps_per_execution=1) for fused in (False, True)}
    _assert_same_training(runs)
    function = runs[True][0].train_function
    # One program for the iterator's batches, the epoch's last short one included (traced twice
    # at the first step, which makes variables: the optimizer's, the metrics').
    assert function.one_step.experimental_get_tracing_count() == 2
    assert function.quiet_one_step.experimental_get_tracing_count() == 0


def _repeated_dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def _generator(x, y):
    """26 batches of 8: a Python generator, which Keras's fit reads through its own pipeline."""
    return ((x[i:i + 8], y[i:i + 8]) for _ in range(2) for i in range(0, 104, 8))


@pytest.mark.parametrize("make_data, steps_per_epoch, steps, ends", [
    # Keras's loop runs whole chunks while the data lasts, the same iterator across epochs: 10
    # steps an epoch; 15, then the 11 batches left (Keras numbers the calls' ends by K).
    (_repeated_dataset, 7, 20, [4, 9, 4, 9]),
    (_generator, 13, 26, [4, 9, 14, 4, 9, 14]),
])
def test_steps_per_epoch_runs_the_steps_and_batches_keras_fit_runs(make_data, steps_per_epoch, steps, ends):
    """At 5 a call, with the next chunk pulled in the background: the fused function runs Keras's
    loop's steps on the same batches, with the same callback calls."""
    x, y, _ = _data()
    runs = {}
    for fused in (False, True):
        model, optimizer = _model_and_optimizer()
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                      steps_per_execution=5)
        if fused:
            assert ks.fuse_steps(model)
        batches = _Batches()
        model.fit(make_data(x, y), epochs=2, steps_per_epoch=steps_per_epoch, verbose=0, callbacks=[batches])
        runs[fused] = (int(optimizer.iterations.numpy()), batches.ends, [w.numpy() for w in model.weights])
    assert runs[True][:2] == runs[False][:2] == (steps, ends)
    for a, b in zip(runs[False][2], runs[True][2]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm, decides", [("rigl", True), ("static", False)])
def test_the_one_step_program_decides_mask_updates_in_graph_only_where_the_schedule_has_some(algorithm, decides):
    model, optimizer = _model_and_optimizer(algorithm)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    assert ks.fuse_steps(model)
    x, y, _ = _data()
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    function = model.train_function
    assert (function.one_step.experimental_get_tracing_count() > 0) == decides
    assert (function.quiet_one_step.experimental_get_tracing_count() > 0) != decides
    program = function.iterator_programs[1].one_step
    conditionals = [op for op in program.graph.get_operations() if op.type in ("If", "StatelessIf")]
    assert bool(conditionals) == decides
    assert int(optimizer.iterations.numpy()) == 10 and ks.sparsity(model) == pytest.approx(0.5, abs=0.01)


def _compiled(algorithm="static", steps_per_execution=5):
    model, optimizer = _model_and_optimizer(algorithm)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                  steps_per_execution=steps_per_execution)
    assert ks.fuse_steps(model)
    return model, optimizer


def test_an_error_in_the_data_reaches_fit_through_the_background_pull():
    """The seventh batch fails a check in the input pipeline: its chunk (batches 5-9) was pulled in
    the background during the first call, and fit raises the pipeline's error at the second."""
    model, optimizer = _compiled()
    x, y, _ = _data()

    def check(index, batch):
        tf.debugging.assert_none_equal(index, tf.constant(6, tf.int64), message="bad batch 6")
        return batch

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).enumerate().map(check)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad batch 6"):
        model.fit(data, epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 5


def test_the_pull_thread_ends_with_its_model():
    before = {t for t in threading.enumerate() if t.name == "keras-sparse-pull"}
    model, _ = _compiled()
    x, y, _ = _data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    (worker,) = {t for t in threading.enumerate() if t.name == "keras-sparse-pull"} - before
    del model
    gc.collect()
    worker.join(timeout=10)
    assert not worker.is_alive()


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_fused_fit_reads_a_dataset_of_dict_inputs(steps_per_execution):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="features")
    model = keras.Model({"features": inputs}, keras.layers.Dense(4)(keras.layers.Dense(16, activation="relu")(inputs)))
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.StaticSparse(sparsity=0.5), model=model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                  steps_per_execution=steps_per_execution)
    assert ks.fuse_steps(model)
    x, y, _ = _data()
    model.fit(tf.data.Dataset.from_tensor_slices(({"features": x}, y)).batch(10), epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 10
    assert ks.sparsity(model) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_sparse_inputs_go_to_keras_own_train_function_when_fused_right_after_compile(steps_per_execution):
    """fuse_steps called straight after compile (before fit made a train function): batches of
    sparse tensors, which the fused programs do not take, still train through Keras's function."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), sparse=True)
    dense = keras.layers.Lambda(lambda t: tf.sparse.to_dense(t), output_shape=(8,))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(16, activation="relu")(dense)))
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithms.StaticSparse(sparsity=0.5), model=model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                  steps_per_execution=steps_per_execution)
    assert ks.fuse_steps(model)
    x, y, _ = _data()
    x[x < 0.5] = 0.0
    model.fit(tf.data.Dataset.from_tensor_slices((tf.sparse.from_dense(x), y)).batch(10), epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 10
    assert ks.sparsity(model) == pytest.approx(0.5, abs=0.01)
    function = model.train_function
    traced = (function.one_step, function.quiet_one_step, function.fused, function.quiet_fused)
    assert [program.experimental_get_tracing_count() for program in traced] == [0, 0, 0, 0]


@pytest.mark.parametrize("compile_args, says", [
    ({"jit_compile": False, "steps_per_execution": 5}, True),
    ({"jit_compile": True, "steps_per_execution": 5}, False),  # fused
    ({"run_eagerly": True}, False),  # debugging: its speed is not the point
])
def test_the_callback_says_once_when_fit_runs_keras_own_loop_for_want_of_jit_compile(capsys, compile_args, says):
    model, optimizer = _model_and_optimizer("static")
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_args)
    x, y, _ = _data()
    callback = ks.SparsityCallback()
    for _ in range(2):
        model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[callback])
    lines = [line for line in capsys.readouterr().err.splitlines() if "Keras's own loop" in line]
    assert len(lines) == (1 if says else 0)
    assert all("jit_compile=True" in line for line in lines)


@pytest.mark.parametrize("compile_args, reason", [
    ({"jit_compile": False, "steps_per_execution": 5}, "jit_compile=True"),
    ({"run_eagerly": True, "steps_per_execution": 5}, "eagerly"),
])
def test_fuse_steps_changes_nothing_where_it_does_not_apply(compile_args, reason):
    model, optimizer = _model_and_optimizer("static")
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_args)
    before = model.train_function
    assert not ks.fuse_steps(model)
    assert reason in can_fuse(model) and model.train_function is before


def test_fusing_again_keeps_the_compiled_function_compile_undoes_it_and_the_callback_fuses():
    model, optimizer = _model_and_optimizer("static")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer, loss, jit_compile=True, steps_per_execution=5)
    assert ks.fuse_steps(model)
    fused = model.train_function
    assert ks.fuse_steps(model) and model.train_function is fused  # nothing traced again
    model.compile(optimizer, loss, jit_compile=True, steps_per_execution=5)
    assert model.train_function is None  # Keras's compile resets it: the fused loop is gone
    x, y, _ = _data()
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[ks.SparsityCallback()])
    function = model.train_function
    assert function.quiet_fused.experimental_get_tracing_count() == 2  # static: no updates, ever,
    assert function.fused.experimental_get_tracing_count() == 0  # so the other set never compiles
    model.compile(optimizer, loss, jit_compile=True, steps_per_execution=5)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[ks.SparsityCallback(fuse_steps=False)])
    assert not hasattr(model.train_function, "fused")
