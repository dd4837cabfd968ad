"""Trainer: XLA on/off, checkpoint resume, compile counts, FLOPs and dense-gradient accounting."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    RUN_EPOCHS,
    RUN_STEPS_PER_EPOCH,
    RUN_TOTAL_STEPS,
    build_convnet,
    loss_fn,
    make_dataset,
    run_algorithms,
)

import keras_sparse as ks
from keras_sparse import algorithms, mask_ops


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _rigl(**kwargs):
    options = dict(sparsity=0.5, distribution="uniform", drop_fraction=0.5, update_frequency=2, end_step=7, seed=1)
    options.update(kwargs)
    return algorithms.RigL(**options)


def test_rejects_unwrapped_model(mlp):
    with pytest.raises(ValueError, match="wrap"):
        ks.Trainer(mlp(seed=0), algorithms.StaticSparse(), keras.optimizers.SGD(0.1), _loss(), progress=False)


def test_unknown_length_data_needs_steps_per_epoch(mlp, dataset):
    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1), _loss(),
                         jit_compile=False, progress=False)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        trainer.fit(dataset(16, (8,), 4, batch=8).repeat(), epochs=1)


def test_xla_on_and_off_agree(mlp, dataset):
    data = dataset(32, (8,), 4, batch=8, seed=2)
    results = {}
    for jit in (True, False):
        model = ks.wrap(mlp(seed=4))
        trainer = ks.Trainer(model, _rigl(update_frequency=1, end_step=4), keras.optimizers.SGD(0.1, momentum=0.9),
                             _loss(), jit_compile=jit, progress=False)
        initial = {k: v.copy() for k, v in ks.get_masks(model).items()}
        trainer.fit(data, epochs=1)
        assert trainer.step == 4
        results[jit] = (initial, ks.get_masks(model), [w.numpy() for w in model.weights], trainer)
    (init_x, masks_x, weights_x, trainer_x), (init_g, masks_g, weights_g, _) = results[True], results[False]
    assert trainer_x.cost.dense_gradient_steps == 4  # updates at steps 0, 1, 2, 3
    for key in masks_x:
        np.testing.assert_array_equal(init_x[key], init_g[key])
        np.testing.assert_array_equal(masks_x[key], masks_g[key], err_msg=key)
    assert any(not np.array_equal(init_x[k], masks_x[k]) for k in masks_x), "no mask update happened"
    for a, b in zip(weights_x, weights_g):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_resume(tmp_path, mlp, dataset):
    """Fit one epoch with a logdir; a new Trainer on a fresh wrapped copy resumes at the right
    step and ends bit-for-bit where an uninterrupted two-epoch run ends."""
    data = dataset(32, (8,), 4, batch=8, seed=3)  # 4 steps an epoch; RigL updates at 0, 2, 4, 6
    logdir = str(tmp_path / "run")

    def trainer_for(model, logdir):
        return ks.Trainer(model, _rigl(), keras.optimizers.SGD(0.1, momentum=0.9), _loss(), jit_compile=False,
                          logdir=logdir, progress=False)

    first = trainer_for(ks.wrap(mlp(seed=5)), logdir)
    first.fit(data, epochs=1)
    assert first.step == 4
    assert os.path.isdir(os.path.join(logdir, "checkpoints"))
    after_epoch_one = {k: v.copy() for k, v in ks.get_masks(first.model).items()}

    fresh_model = ks.wrap(mlp(seed=99))  # different initial weights: all must come from the checkpoint
    resumed = trainer_for(fresh_model, logdir)
    history = resumed.fit(data, epochs=1)  # already done: restores, trains nothing
    assert resumed.step == 4 and [record["epoch"] for record in history] == [1]  # history comes back too
    for key, mask in ks.get_masks(fresh_model).items():
        np.testing.assert_array_equal(mask, after_epoch_one[key])
    for a, b in zip(first.model.weights, fresh_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    history = resumed.fit(data, epochs=2)
    assert resumed.step == 8
    assert [record["epoch"] for record in history] == [1, 2]

    straight = trainer_for(ks.wrap(mlp(seed=5)), None)
    straight.fit(data, epochs=2)
    assert straight.step == 8
    for a, b in zip(straight.model.weights, fresh_model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    for a, b in zip(straight.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), err_msg=a.path)
    assert resumed.cost.dense_gradient_steps == straight.cost.dense_gradient_steps == 4
    assert resumed.cost.training_flops == pytest.approx(straight.cost.training_flops, rel=1e-12)


def test_each_program_compiles_once(algorithm_runs):
    trainer = algorithm_runs["rigl"].trainer
    assert trainer.xla.choice is True
    assert trainer.programs.trace_counts()["train"] == trainer.programs.trace_counts()["update"] == 1


@pytest.mark.parametrize("name, expected", [
    ("dense", 12.0),                      # every step is one dense step
    ("static", 12 * 0.5),                 # 3 x half the forward cost: half a dense step
    ("rigl", 7 * 0.5 + 5 * (2 * 0.5 + 1) / 3),         # 5 update steps (0, 2, …, 8) need the dense gradient
    ("rigl_frozen", 9 * 0.5 + 3 * (2 * 0.5 + 1) / 3),  # only 3 (0, 2, 4) before the freeze
])
def test_training_flops(algorithm_runs, name, expected):
    trainer = algorithm_runs[name].trainer
    assert trainer.cost.training_flops == pytest.approx(expected, rel=1e-9)
    assert trainer.summary()["training_flops_relative_to_dense"] == pytest.approx(expected / 12, rel=1e-9)


def test_training_flops_snip_weighs_layers_by_their_cost(algorithm_runs):
    """SNIP's layers end at different densities: each counts with its forward MACs."""
    run = algorithm_runs["snip"]
    # Convnet on 6x6x1: conv 3x3x1x4 on 4x4 outputs, depthwise 2x2x4x1 on 3x3, fc 36x8, logits 8x3.
    macs = {"conv/kernel": 36 * 16, "depthwise/kernel": 16 * 9, "fc/kernel": 288, "logits/kernel": 24}
    masks = run.snapshots[0].masks
    density = sum(macs[k] * masks[k].mean() for k in macs) / sum(macs.values())
    assert not 0.49 < density < 0.51  # differs from the global density 0.5
    expected = 1 + 12 * density  # one dense scoring batch, then 12 sparse steps
    assert run.trainer.cost.training_flops == pytest.approx(expected, rel=1e-9)


def test_history_summary_and_evaluate(algorithm_runs, dataset):
    trainer = algorithm_runs["static"].trainer
    assert [r["epoch"] for r in trainer.history] == [1, 2]
    assert [r["step"] for r in trainer.history] == [6, 12]
    assert all(r["sparsity"] == pytest.approx(0.5) for r in trainer.history)
    summary = trainer.summary()
    assert summary["steps"] == 12 and summary["sparsity"] == pytest.approx(0.5)
    assert summary["layer_sparsity"] == {key: pytest.approx(0.5) for key in ks.get_masks(trainer.model)}
    assert summary["algorithm"]["name"] == "static" and summary["algorithm"]["sparsity"] == 0.5

    data = dataset(20, (6, 6, 1), 3, batch=8, seed=9)  # a ragged last batch
    x = np.concatenate([b[0].numpy() for b in data])
    y = np.concatenate([b[1].numpy() for b in data])
    logits = trainer.model(x, training=False).numpy()
    result = trainer.evaluate(data)
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(logits, -1) == y))
    assert result["loss"] == pytest.approx(float(_loss()(y, logits)), rel=1e-5)


def test_snip_scores_on_gradients_summed_over_batches(mlp, dataset):
    data = dataset(24, (8,), 4, batch=8, seed=6)
    model = ks.wrap(mlp(seed=7))
    kernels = ks.masked_kernels(model)
    weights = {k.key: k.kernel.numpy().copy() for k in kernels}
    summed = {k.key: 0.0 for k in kernels}
    for x, y in data.take(2):
        with tf.GradientTape() as tape:
            loss = _loss()(y, model(x, training=True))
        for k, g in zip(kernels, tape.gradient(loss, [k.kernel for k in kernels])):
            summed[k.key] = summed[k.key] + g.numpy()
    scores = {key: np.abs(summed[key] * weights[key]) for key in weights}
    flat = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[::-1]
    k = mask_ops.num_active(flat.size, 0.8)
    assert flat[k - 1] > flat[k]

    trainer = ks.Trainer(model, algorithms.SNIP(0.8, scoring_batches=2), keras.optimizers.SGD(0.1), _loss(),
                         jit_compile=False, progress=False)
    trainer.fit(data, epochs=1, steps_per_epoch=1)
    assert trainer.cost.dense_gradient_steps == 2
    for key, mask in ks.get_masks(model).items():
        np.testing.assert_array_equal(mask, scores[key] >= flat[k - 1], err_msg=key)


@pytest.mark.parametrize("optimizer, names", [
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9), ["momentum"]),
    (lambda: keras.optimizers.Adam(), ["momentum", "velocity"]),
    (lambda: keras.optimizers.SGD(0.1), []),
])
def test_optimizer_slots_of_each_kernel(mlp, optimizer, names):
    """The slots the trainer resets for grown weights: exactly the kernel's own, not the bias's."""
    model = ks.wrap(mlp(seed=0))
    trainer = ks.Trainer(model, algorithms.StaticSparse(0.5), optimizer(), _loss(), progress=False)
    for k in ks.masked_kernels(model):
        slots = trainer.optimizer.slots(k)
        assert sorted(s.name.rsplit("_", 1)[-1] for s in slots) == names
        assert all(tuple(s.shape) == tuple(k.kernel.shape) for s in slots)
        assert all("bias" not in s.name for s in slots)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", keras.losses.sparse_categorical_crossentropy])
def test_a_loss_given_by_name_or_as_a_function_works(loss, mlp, dataset):
    data = dataset(32, (8,), 4, batch=8, seed=3)
    model = ks.wrap(mlp(seed=5))
    trainer = ks.Trainer(model, ks.algorithms.StaticSparse(sparsity=0.5), keras.optimizers.SGD(0.1), loss,
                         jit_compile=False, progress=False)
    history = trainer.fit(data, epochs=1, validation_data=data)
    assert np.isfinite(history[0]["train_loss"]) and np.isfinite(history[0]["val_loss"])


# ------------------------------------------- the optimised step against a plain reference
def _reference_training(name: str) -> tuple[keras.Model, int]:
    """The conftest run of algorithm ``name``, written as the plainest possible eager loop:
    numpy SGD with momentum, masks as numpy arrays, the algorithm's hooks called directly.
    Returns the model and its dense-gradient step count."""
    model = ks.wrap(build_convnet(seed=11))
    data = make_dataset(RUN_STEPS_PER_EPOCH * 8, (6, 6, 1), 3, batch=8, seed=5)
    algorithm = run_algorithms()[name]()
    kernels = {k.key: k for k in ks.masked_kernels(model)}
    algorithm.setup({key: tuple(k.kernel.shape) for key, k in kernels.items()}, RUN_TOTAL_STEPS, RUN_STEPS_PER_EPOCH)
    variables = model.trainable_variables
    index = {key: next(i for i, v in enumerate(variables) if v is k.kernel) for key, k in kernels.items()}

    def gradients(x, y) -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            loss = loss_fn()(y, model(x, training=True))
        return [g.numpy() for g in tape.gradient(loss, variables)]

    def scoring_gradients() -> dict[str, np.ndarray]:
        saved = [v.numpy() for v in model.non_trainable_variables]  # BatchNorm statistics
        total = {key: 0.0 for key in kernels}
        for x, y in data.take(algorithm.scoring_batches):
            g = gradients(x, y)
            total = {key: total[key] + g[index[key]] for key in kernels}
        for v, value in zip(model.non_trainable_variables, saved):
            v.assign(value)
        return total

    masks = algorithm.initial_masks({key: k.kernel.numpy() for key, k in kernels.items()},
                                    scoring_gradients if algorithm.scoring_batches else None)
    for key, k in kernels.items():
        k.kernel.assign(np.where(masks[key], k.kernel.numpy(), 0.0))
        k.mask.assign(masks[key])
    velocity = [np.zeros(v.shape, np.float32) for v in variables]
    dense_gradient_steps = algorithm.scoring_batches
    step = 0
    for _ in range(RUN_EPOCHS):
        for x, y in data:
            g = gradients(x, y)
            update = algorithm.is_update_step(step)
            if not (update and algorithm.skips_optimizer_step):  # RigL and SET update instead of a step
                for key in kernels:
                    g_masked = np.where(masks[key], g[index[key]], 0.0)
                    velocity[index[key]] = 0.9 * velocity[index[key]] - 0.05 * g_masked
                for i, v in enumerate(variables):
                    if i not in index.values():
                        velocity[i] = 0.9 * velocity[i] - 0.05 * g[i]
                    v.assign(v.numpy() + velocity[i])
                for key, k in kernels.items():
                    k.kernel.assign(np.where(masks[key], k.kernel.numpy(), 0.0))
            dense_gradient_steps += algorithm.uses_dense_gradient(step)
            if update:
                new = algorithm.updated_masks(tf.constant(step, tf.int64),
                                              {key: tf.constant(k.kernel.numpy()) for key, k in kernels.items()},
                                              {key: tf.constant(m) for key, m in masks.items()},
                                              {key: tf.constant(g[index[key]]) for key in kernels})
                for key, k in kernels.items():
                    old, now = masks[key], np.asarray(new[key])
                    k.kernel.assign(np.where(old & now, k.kernel.numpy(), 0.0))
                    velocity[index[key]][now & ~old] = 0.0  # grown weights start with no momentum
                    k.mask.assign(now)
                    masks[key] = now
            step += 1
    return model, dense_gradient_steps


@pytest.mark.parametrize("name", sorted(run_algorithms()))
def test_optimised_steps_match_a_plain_reference_loop(algorithm_runs, name):
    """The compiled steps give the masks and weights of the plain eager loop above: one
    XLA-compiled step per call, and 4 staged steps per call (calls end at each mask update) at
    the default jit_compile="auto", whose calls run with and without XLA in turn while it times
    them, so both settings are checked."""
    reference, reference_dense_steps = _reference_training(name)
    one_step = algorithm_runs[name].trainer
    staged = ks.Trainer(ks.wrap(build_convnet(seed=11)), run_algorithms()[name](),
                        keras.optimizers.SGD(0.05, momentum=0.9), loss_fn(), progress=False, steps_per_execution=4)
    staged.fit(make_dataset(RUN_STEPS_PER_EPOCH * 8, (6, 6, 1), 3, batch=8, seed=5), epochs=RUN_EPOCHS)
    expected = ks.get_masks(reference)
    assert any(not m.all() for m in expected.values()) or name == "dense"
    for trainer in (one_step, staged):
        masks = ks.get_masks(trainer.model)
        for key in expected:
            np.testing.assert_array_equal(masks[key], expected[key], err_msg=f"{key}, {trainer.steps_per_execution}")
        # (The conftest run made one extra forward pass in training mode, which moved its
        # BatchNorm statistics: compare those for the staged run only.)
        compared = trainer.model.weights if trainer is staged else trainer.model.trainable_weights
        for a in compared:
            b = next(w for w in reference.weights if w.path == a.path)
            np.testing.assert_allclose(np.asarray(a.numpy(), np.float32), np.asarray(b.numpy(), np.float32),
                                       rtol=1e-4, atol=1e-5, err_msg=a.path)
        assert trainer.cost.dense_gradient_steps == reference_dense_steps
        assert trainer.step == RUN_TOTAL_STEPS
    assert staged.cost.training_flops == pytest.approx(one_step.cost.training_flops, rel=1e-12)
    assert [r["train_loss"] for r in staged.history] == pytest.approx([r["train_loss"] for r in one_step.history],
                                                                     rel=1e-5)


def test_a_longer_second_fit_says_once_that_it_runs_past_the_schedule(mlp, dataset, capsys):
    """The first fit places the schedule (12 steps); a later, longer fit keeps it and says so in one
    line on stderr, once."""
    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), _rigl(update_frequency=3), keras.optimizers.SGD(0.1), _loss(),
                         progress=False, jit_compile=False)
    trainer.fit(dataset(96, (8,), 4, batch=8), epochs=1)
    assert "past" not in capsys.readouterr().err
    for epochs in (2, 3):
        trainer.fit(dataset(96, (8,), 4, batch=8), epochs=epochs)
    err = capsys.readouterr().err
    assert err.count("past the schedule's 12 steps") == 1 and "runs to step 24" in err


def test_staged_calls_end_at_mask_updates(mlp, dataset):
    """RigL updates at steps 0, 3, 6 and 9; batches are staged 5 at a time (steps 0-4, 5-9, 10-11)
    and a call ends after an update step or at the end of its stack."""
    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), _rigl(update_frequency=3, end_step=10), keras.optimizers.SGD(0.1),
                         _loss(), progress=False, steps_per_execution=5, jit_compile=True)

    class CallEnds(ks.Callback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, trainer, losses):
            self.steps.append(trainer.step)

    ends = CallEnds()
    trainer.fit(dataset(96, (8,), 4, batch=8), epochs=1, callbacks=[ends])  # 12 steps
    # Steps done after each call: 0 | 1-3 | 4 | 5-6 | 7-9 | 10-11.
    assert ends.steps == [1, 4, 5, 7, 10, 12]
    assert trainer.programs.trace_counts()["staged"] == 1  # stacks of 5 and of 2 batches: one trace for any length


def test_calls_end_after_the_steps_a_callback_asks_for(mlp, dataset):
    """Batches staged 5 at a time (12 steps); a callback asking for steps 3 and 7 gets on_step_end
    right after each of them, besides the stack ends."""
    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1), _loss(),
                         progress=False, steps_per_execution=5, jit_compile=False)

    class Snapshots(ks.Callback):
        def __init__(self):
            self.steps = []

        def step_boundaries(self, trainer):
            return [3, 7]

        def on_step_end(self, trainer, losses):
            self.steps.append(trainer.step)

    snapshots = Snapshots()
    trainer.fit(dataset(96, (8,), 4, batch=8), epochs=1, callbacks=[snapshots])
    assert snapshots.steps == [3, 5, 7, 10, 12]


@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_steps_per_execution_must_be_a_positive_whole_number(mlp, value):
    with pytest.raises(ValueError, match="steps_per_execution"):
        ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1), _loss(),
                   progress=False, steps_per_execution=value)


def test_a_short_last_batch_gets_a_call_of_its_own(mlp, dataset):
    """Batches 8, 8, 8, 4 with 2 staged steps a call: calls of 2, 1 and 1 steps, the same
    weights as one step a call."""
    data = dataset(28, (8,), 4, batch=8, seed=3)
    weights = {}
    for steps in (1, 2):
        trainer = ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1), _loss(),
                             progress=False, steps_per_execution=steps)
        trainer.fit(data, epochs=2)
        assert trainer.step == 8
        weights[steps] = trainer.model.get_weights()
    for a, b in zip(weights[1], weights[2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_numpy_arrays_and_a_binary_string_loss(mlp):
    """Arrays (x, y) are batched in order, like model.fit(x, y, shuffle=False); a loss by name
    matches the labels' rank to the predictions' as model.compile does."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)).astype("float32"), rng.integers(0, 2, size=40).astype("float32")
    trainer = ks.Trainer(ks.wrap(mlp(seed=1, n_out=1)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1),
                         "binary_crossentropy", jit_compile=False, progress=False)
    history = trainer.fit((x, y), epochs=2, batch_size=8, validation_data=(x, y))
    assert trainer.step == 10 and np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["val_loss"])
    with pytest.raises(ValueError, match="arrays"):
        trainer.fit("x.npy", epochs=3)


def test_staged_updates_compile_once_per_stack_shape(mlp, dataset):
    """Mask updates at new places in a stack (steps 0, 5, 10 in epoch 1; 15 and 20, places 3 and
    8 of their stacks, in epoch 2) must not compile the program again: an index that XLA takes as
    a compile-time constant did (seconds each, when the last step was sliced with t[i])."""
    import time

    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), _rigl(update_frequency=5, end_step=30), keras.optimizers.SGD(0.1),
                         _loss(), progress=False, steps_per_execution=12, jit_compile=True)
    data = dataset(96, (8,), 4, batch=8)  # 12 steps an epoch, one stack
    started = time.perf_counter()
    trainer.fit(data, epochs=1)
    first = time.perf_counter() - started  # includes the one compilation
    started = time.perf_counter()
    trainer.fit(data, epochs=2)
    second = time.perf_counter() - started
    assert trainer.step == 24 and trainer.cost.dense_gradient_steps == 5
    assert trainer.programs.trace_counts()["staged"] == 1
    assert second < first / 3, (first, second)
