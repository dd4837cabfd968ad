"""Sparse-training algorithms: initial masks, mask updates by hand, and short training runs.

The training runs (``algorithm_runs`` in conftest) train the tiny convnet for 12 steps with
each algorithm and snapshot masks and kernels before every step.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import algorithms, distributions, mask_ops

ALL_RUNS = ["dense", "static", "magnitude", "snip", "set", "rigl", "rigl_frozen"]
CHANGING_RUNS = ["magnitude", "set", "rigl", "rigl_frozen"]

SHAPES = {"conv/kernel": (3, 3, 2, 8), "fc/kernel": (72, 16), "mid/kernel": (16, 16), "out/kernel": (16, 3)}


def _size(shape):
    return int(np.prod(shape))


def _masks_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ registry
def test_registry():
    assert sorted(algorithms.REGISTRY) == ["dense", "magnitude", "rigl", "set", "snip", "static"]
    assert algorithms.get("rigl") is algorithms.RigL
    assert algorithms.get("static") is algorithms.StaticSparse
    with pytest.raises(ValueError, match="lottery"):
        algorithms.get("lottery")


@pytest.mark.parametrize("make", [
    lambda: algorithms.StaticSparse(sparsity=1.0),
    lambda: algorithms.RigL(sparsity=-0.5),
    lambda: algorithms.RigL(distribution="nope"),
    lambda: algorithms.SET(drop_fraction=1.5),
    lambda: algorithms.RigL(update_frequency=0),
    lambda: algorithms.RigL(freeze_step=3, freeze_epoch=1),
    lambda: algorithms.MagnitudePruning(frequency=0),
    lambda: algorithms.SNIP(scoring_batches=0),
])
def test_invalid_settings_raise(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------- initial masks
DISTRIBUTIONS = [
    ("uniform", {}),
    ("uniform", {"first_layer_dense": True}),
    ("erdos_renyi", {}),
    ("erdos_renyi_kernel", {}),
    ({"conv": 0.2, "out/kernel": 0.0}, {}),
]


@pytest.mark.parametrize("cls", [algorithms.StaticSparse, algorithms.SET, algorithms.RigL])
@pytest.mark.parametrize("distribution, options", DISTRIBUTIONS)
def test_random_initial_masks_have_exact_counts(cls, distribution, options):
    algo = cls(sparsity=0.8, distribution=distribution, seed=4, **options)
    algo.setup(SHAPES, total_steps=100, steps_per_epoch=10)
    expected = distributions.layer_sparsities(SHAPES, 0.8, distribution, **options)
    assert algo.targets == pytest.approx(expected)
    masks = algo.initial_masks({k: np.ones(s, np.float32) for k, s in SHAPES.items()})
    assert masks.keys() == SHAPES.keys()
    for key, shape in SHAPES.items():
        assert masks[key].shape == shape and masks[key].dtype == bool
        assert masks[key].sum() == mask_ops.num_active(_size(shape), expected[key]), key
    if options.get("first_layer_dense"):
        assert masks["conv/kernel"].all()
    # Seeded: the same seed gives the same masks, another seed others.
    again = cls(sparsity=0.8, distribution=distribution, seed=4, **options)
    again.setup(SHAPES, total_steps=100, steps_per_epoch=10)
    assert _masks_equal(masks, again.initial_masks({}))
    other = cls(sparsity=0.8, distribution=distribution, seed=5, **options)
    other.setup(SHAPES, total_steps=100, steps_per_epoch=10)
    assert not _masks_equal(masks, other.initial_masks({}))


@pytest.mark.parametrize("algo", [algorithms.Dense(), algorithms.MagnitudePruning(0.9)])
def test_dense_start(algo):
    algo.setup(SHAPES, total_steps=100, steps_per_epoch=10)
    masks = algo.initial_masks({})
    assert all(masks[k].shape == s and masks[k].all() for k, s in SHAPES.items())


@pytest.mark.parametrize("name", ["static", "set", "rigl", "rigl_frozen"])
def test_trainer_starts_from_exact_counts(algorithm_runs, name):
    run = algorithm_runs[name]
    algo = run.trainer.algorithm
    first = run.snapshots[0].masks
    for key, mask in first.items():
        assert mask.sum() == mask_ops.num_active(mask.size, algo.targets[key]) == round(mask.size / 2), key


@pytest.mark.parametrize("name", ["dense", "magnitude"])
def test_trainer_starts_dense(algorithm_runs, name):
    assert all(m.all() for m in algorithm_runs[name].snapshots[0].masks.values())


# ------------------------------------------------------ runs: the invariant
@pytest.mark.parametrize("name", ALL_RUNS)
def test_pruned_weights_stay_exactly_zero_after_every_step(algorithm_runs, name):
    run = algorithm_runs[name]
    assert sorted(run.snapshots) == list(range(run.trainer.step + 1))
    assert run.trainer.step == 12
    for step, snap in run.snapshots.items():
        for key, mask in snap.masks.items():
            kernel = snap.kernels[key]
            assert np.all(kernel[~mask] == 0.0), (name, step, key)
    final = run.snapshots[12]
    if name == "dense":
        assert all(m.all() for m in final.masks.values())
        assert run.trainer.sparsity() == 0.0
    else:
        total = sum(m.size for m in final.masks.values())
        active = sum(int(m.sum()) for m in final.masks.values())
        assert active == pytest.approx(total / 2, abs=2)
        assert ks.sparsity(run.trainer.model) == pytest.approx(run.trainer.sparsity())
    # The run really trained: every kernel moved.
    for key in final.kernels:
        assert not np.array_equal(final.kernels[key], run.snapshots[0].kernels[key])


@pytest.mark.parametrize("name", ALL_RUNS)
def test_masks_change_only_at_update_steps(algorithm_runs, name):
    run = algorithm_runs[name]
    updates = set(run.recorder.update_steps())
    changed = set()
    for step in range(run.trainer.step):
        if not _masks_equal(run.snapshots[step].masks, run.snapshots[step + 1].masks):
            changed.add(step)
    assert changed <= updates
    if name in CHANGING_RUNS:
        assert changed, "no mask update happened within the run"
    else:
        assert not updates and not changed


def test_update_steps_of_runs(algorithm_runs):
    """The schedules behind the runs, computed independently of the algorithms."""
    expected = {
        "magnitude": [2, 4, 6, 8],            # begin 2, end 8, every 2
        "set": [0, 2, 4, 6, 8],               # every 2, 0 <= step < int(0.75 * 12) = 9
        "rigl": [0, 2, 4, 6, 8],
        "rigl_frozen": [0, 2, 4],             # frozen from the end of epoch 1 (step 6)
    }
    for name, steps in expected.items():
        algo = algorithm_runs.factories[name]()
        algo.setup({"a/kernel": (4, 4)}, total_steps=12, steps_per_epoch=6)
        assert [s for s in range(12) if algo.is_update_step(s)] == steps, name


# --------------------------------------------------------------- SET / RigL
@pytest.mark.parametrize("name", ["set", "rigl", "rigl_frozen"])
def test_dynamic_keeps_active_count_and_really_changes(algorithm_runs, name):
    run = algorithm_runs[name]
    first = run.snapshots[0].masks
    for step, snap in run.snapshots.items():
        for key, mask in snap.masks.items():
            assert mask.sum() == first[key].sum(), (step, key)
    updates = run.recorder.update_steps()
    grown_any = 0
    for step in updates:
        before, after = run.snapshots[step].masks, run.snapshots[step + 1].masks
        assert not _masks_equal(before, after), f"update at step {step} changed nothing"
        for key in before:
            grown = after[key] & ~before[key]
            # Grown weights start at exactly zero.
            assert np.all(run.snapshots[step + 1].kernels[key][grown] == 0.0)
            grown_any += int(grown.sum())
    assert grown_any > 0
    # Every layer's mask moved at some point.
    final = run.snapshots[run.trainer.step].masks
    for key in first:
        assert not np.array_equal(first[key], final[key]), key


def _rigl(**kwargs):
    options = dict(sparsity=0.5, distribution="uniform", drop_fraction=0.5, update_frequency=1, end_step=100)
    options.update(kwargs)
    return algorithms.RigL(**options)


RIGL_CASE = {
    # 4 active: |w| = .9, .1, .5, .3. Drop 2 (fraction 0.5): keep .9 at (0,0) and .5 at (1,0).
    # Grow 2 among the 6 not kept by |g|: (1,1)=4 and (0,2)=3; (1,0)=9 is kept already.
    "a/kernel": dict(
        weight=[[0.9, -0.1, 0.0, 0.0], [0.5, 0.0, -0.3, 0.0]],
        mask=[[1, 1, 0, 0], [1, 0, 1, 0]],
        grad=[[5.0, 0.2, 3.0, -0.1], [-9.0, 4.0, -0.05, 2.0]],
        expected=[[1, 0, 1, 0], [1, 1, 0, 0]],
    ),
    # 2 active: drop 1 (|w|=.1 at 1); its gradient is the largest, so it grows straight back.
    "b/kernel": dict(
        weight=[0.2, 0.1, 0.0, 0.0],
        mask=[1, 1, 0, 0],
        grad=[0.0, -7.0, 1.0, 0.5],
        expected=[1, 1, 0, 0],
    ),
    # 6 active, drop 3 smallest |w| (0.05, -0.1, 0.2); grow the 3 largest |g| elsewhere.
    "c/kernel": dict(
        weight=[[0.05, -0.1, 0.2, 0.0], [0.7, -0.6, 0.4, 0.0]],
        mask=[[1, 1, 1, 0], [1, 1, 1, 0]],
        grad=[[0.3, 0.1, 0.2, -0.9], [10.0, 10.0, 10.0, 0.8]],
        expected=[[1, 0, 0, 1], [1, 1, 1, 1]],
    ),
}


def _rigl_inputs():
    weights = {k: tf.constant(v["weight"], tf.float32) for k, v in RIGL_CASE.items()}
    masks = {k: tf.constant(np.array(v["mask"], bool)) for k, v in RIGL_CASE.items()}
    grads = {k: tf.constant(v["grad"], tf.float32) for k, v in RIGL_CASE.items()}
    return weights, masks, grads


def test_rigl_updated_masks_by_hand_eager_and_xla():
    algo = _rigl()
    algo.setup({k: np.shape(v["weight"]) for k, v in RIGL_CASE.items()}, total_steps=100, steps_per_epoch=10)
    weights, masks, grads = _rigl_inputs()
    # At step 0 the cosine schedule gives the full drop fraction 0.5.
    eager = algo.updated_masks(tf.constant(0, tf.int64), weights, masks, grads)
    compiled = tf.function(algo.updated_masks, jit_compile=True)(tf.constant(0, tf.int64), weights, masks, grads)
    for key, case in RIGL_CASE.items():
        expected = np.array(case["expected"], bool)
        np.testing.assert_array_equal(eager[key].numpy(), expected, err_msg=key)
        np.testing.assert_array_equal(compiled[key].numpy(), expected, err_msg=key)


def test_rigl_drop_fraction_follows_cosine_schedule():
    # 8 active of 16; at step 50 of 100, f = 0.5/2 (1 + cos(pi/2)) = 0.25: drop 2, grow 2.
    algo = _rigl()
    algo.setup({"a/kernel": (4, 4)}, total_steps=100, steps_per_epoch=10)
    weight = np.array([[8, 7, 6, 5], [4, 3, 2, 1], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    mask = weight != 0
    grad = np.zeros((4, 4), np.float32)
    grad[3, 3], grad[3, 2], grad[2, 0] = 5.0, 4.0, 3.0
    new = algo.updated_masks(tf.constant(50), {"a/kernel": tf.constant(weight)}, {"a/kernel": tf.constant(mask)},
                             {"a/kernel": tf.constant(grad)})["a/kernel"].numpy()
    expected = mask.copy()
    expected[1, 2:] = False            # |w| = 2 and 1 dropped
    expected[3, 3] = expected[3, 2] = True  # the two largest |g| grown
    np.testing.assert_array_equal(new, expected)
    # At or after end_step the fraction is 0: nothing moves.
    new = algo.updated_masks(tf.constant(100), {"a/kernel": tf.constant(weight)}, {"a/kernel": tf.constant(mask)},
                             {"a/kernel": tf.constant(grad)})["a/kernel"].numpy()
    np.testing.assert_array_equal(new, mask)


def test_set_updated_masks_drop_by_magnitude_grow_at_random():
    algo = algorithms.SET(sparsity=0.5, distribution="uniform", drop_fraction=0.5, update_frequency=1,
                          end_step=100, seed=7)
    shapes = {"a/kernel": (10, 10)}
    algo.setup(shapes, total_steps=100, steps_per_epoch=10)
    rng = np.random.default_rng(0)
    mask = mask_ops.random_mask((10, 10), 50, rng)
    weight = np.where(mask, rng.normal(size=(10, 10)), 0.0).astype(np.float32)
    inputs = ({"a/kernel": tf.constant(weight)}, {"a/kernel": tf.constant(mask)},
              {"a/kernel": tf.zeros((10, 10))})
    new = algo.updated_masks(tf.constant(0), *inputs)["a/kernel"].numpy()
    assert new.sum() == 50
    # The 25 largest active |w| are kept; 25 others grow.
    order = np.argsort(-np.abs(weight[mask]))
    kept_values = np.abs(weight[mask])[order[:25]]
    kept = mask & (np.abs(weight) >= kept_values.min())
    assert kept.sum() == 25 and np.all(new[kept])
    grown = new & ~kept
    assert grown.sum() == 25
    # Random: the same step repeats, another step differs; a zero gradient does not matter.
    again = algo.updated_masks(tf.constant(0), *inputs)["a/kernel"].numpy()
    np.testing.assert_array_equal(new, again)
    later = algo.updated_masks(tf.constant(1), *inputs)["a/kernel"].numpy()
    assert not np.array_equal(new & ~kept, later & ~kept)


def test_rigl_resets_momentum_of_grown_weights(mlp, dataset):
    keras.utils.set_random_seed(0)
    model = ks.wrap(mlp(seed=2))
    algo = _rigl(update_frequency=2, end_step=10, sparsity=0.6)
    trainer = ks.Trainer(model, algo, keras.optimizers.SGD(0.1, momentum=0.9),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                         progress=False)
    data = dataset(32, (8,), 4, batch=8, seed=1)
    trainer.fit(data, epochs=1, steps_per_epoch=2)  # steps 0 (an update) and 1
    assert trainer.step == 2 and algo.is_update_step(2)
    # Give every slot a nonzero momentum, inactive positions included, then run update step 2.
    slots = {k.key: trainer.optimizer.slots(k) for k in ks.masked_weights(model)}
    assert all(len(s) == 1 for s in slots.values())
    for key, (slot,) in slots.items():
        assert tuple(slot.shape) == tuple(ks.get_masks(model)[key].shape)
        slot.assign(np.ones(slot.shape, np.float32))
    before = ks.get_masks(model)
    trainer.fit(data, epochs=3, steps_per_epoch=1)  # one more epoch of one step: step 2
    assert trainer.step == 3
    after = ks.get_masks(model)
    kernels = {k.key: k.kernel.numpy() for k in ks.masked_kernels(model)}
    total_grown = 0
    for key, (slot,) in slots.items():
        momentum = slot.numpy()
        grown = after[key] & ~before[key]
        total_grown += int(grown.sum())
        assert np.all(momentum[grown] == 0.0), key
        assert np.all(kernels[key][grown] == 0.0), key
        # Everything else kept its momentum: the update step takes no optimizer step (RigL's Algorithm 1).
        assert np.all(momentum[~grown] == 1.0), key
    assert total_grown > 0


# ----------------------------------------------------------- early-frozen RigL
def test_frozen_rigl_mask_never_changes_after_freeze(algorithm_runs):
    run = algorithm_runs["rigl_frozen"]
    algo = run.trainer.algorithm
    freeze = int(round(algo.freeze_epoch * algo.steps_per_epoch))
    assert freeze == 6
    frozen = run.snapshots[freeze].masks
    for step in range(freeze, run.trainer.step + 1):
        assert _masks_equal(run.snapshots[step].masks, frozen), step
    assert not _masks_equal(run.snapshots[0].masks, frozen)


def test_dense_gradient_steps_of_rigl_frozen_and_full(algorithm_runs):
    frozen, full = algorithm_runs["rigl_frozen"].trainer, algorithm_runs["rigl"].trainer
    total, frequency = frozen.step, frozen.algorithm.update_frequency
    end = int(0.75 * total)
    freeze = int(round(frozen.algorithm.freeze_epoch * frozen.algorithm.steps_per_epoch))
    expected_frozen = len([s for s in range(total) if 0 <= s < min(end, freeze) and s % frequency == 0])
    expected_full = len([s for s in range(total) if 0 <= s < end and s % frequency == 0])
    assert (expected_frozen, expected_full) == (3, 5)
    assert frozen.cost.dense_gradient_steps == expected_frozen
    assert full.cost.dense_gradient_steps == expected_full
    assert full.cost.dense_gradient_steps > frozen.cost.dense_gradient_steps
    assert full.summary()["dense_gradient_steps"] == expected_full


@pytest.mark.parametrize("name, expected", [("dense", 12), ("static", 0), ("magnitude", 2), ("snip", 1),
                                            ("set", 0)])
def test_dense_gradient_steps_of_other_algorithms(algorithm_runs, name, expected):
    assert algorithm_runs[name].trainer.cost.dense_gradient_steps == expected


def test_freeze_step_stops_updates():
    algo = _rigl(update_frequency=3, end_step=30, freeze_step=10)
    algo.setup({"a/kernel": (4, 4)}, total_steps=40, steps_per_epoch=8)
    assert [s for s in range(40) if algo.is_update_step(s)] == [0, 3, 6, 9]
    assert [s for s in range(40) if algo.uses_dense_gradient(s)] == [0, 3, 6, 9]
    assert algo.update_horizon() == 10
    algo = _rigl(update_frequency=3, end_step=30, freeze_epoch=2)  # step 16
    algo.setup({"a/kernel": (4, 4)}, total_steps=40, steps_per_epoch=8)
    assert [s for s in range(40) if algo.is_update_step(s)] == [0, 3, 6, 9, 12, 15]


def test_freeze_outside_training_raises():
    algo = _rigl(freeze_step=50)
    with pytest.raises(ValueError, match="freeze"):
        algo.setup({"a/kernel": (4, 4)}, total_steps=40, steps_per_epoch=8)


def test_set_never_needs_dense_gradients():
    algo = algorithms.SET(update_frequency=2)
    algo.setup({"a/kernel": (4, 4)}, total_steps=40, steps_per_epoch=8)
    assert any(algo.is_update_step(s) for s in range(40))
    assert not any(algo.uses_dense_gradient(s) for s in range(40))


# ------------------------------------------------------------------- SNIP
def test_snip_mask_is_global_topk_of_gradient_times_weight(algorithm_runs):
    run = algorithm_runs["snip"]
    keys = list(run.initial_kernels)
    scores = {k: np.abs(run.initial_gradients[k] * run.initial_kernels[k]) for k in keys}
    flat = np.sort(np.concatenate([s.ravel() for s in scores.values()]))[::-1]
    k = mask_ops.num_active(flat.size, 0.5)
    assert flat[k - 1] > flat[k]  # an unambiguous cut
    expected = {key: scores[key] >= flat[k - 1] for key in keys}
    got = run.snapshots[0].masks
    for key in keys:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # Global, not per layer: the layers end up at different sparsities.
    densities = sorted(m.mean() for m in got.values())
    assert densities[-1] - densities[0] > 0.1
    # The mask then stays fixed.
    assert _masks_equal(run.snapshots[run.trainer.step].masks, got)


def test_snip_initial_masks_by_hand():
    algo = algorithms.SNIP(sparsity=0.5)
    algo.setup({"a/kernel": (2, 2), "b/kernel": (2,)}, total_steps=10, steps_per_epoch=5)
    weights = {"a/kernel": np.array([[1.0, -2.0], [3.0, 0.5]]), "b/kernel": np.array([4.0, -0.1])}
    gradients = {"a/kernel": np.array([[1.0, 1.0], [-0.1, 2.0]]), "b/kernel": np.array([0.1, 50.0])}
    # |g*w|: a = [[1, 2], [.3, 1]], b = [.4, 5]; keep 3 of 6: 5, 2, then 1 (first of the tie at 1).
    masks = algo.initial_masks(weights, lambda: gradients)
    np.testing.assert_array_equal(masks["a/kernel"], [[True, True], [False, False]])
    np.testing.assert_array_equal(masks["b/kernel"], [False, True])


# -------------------------------------------------------- magnitude pruning
def test_magnitude_updated_masks_by_hand():
    algo = algorithms.MagnitudePruning(0.5, "uniform", begin_step=0, end_step=10, frequency=5)
    algo.setup({"a/kernel": (2, 4)}, total_steps=20, steps_per_epoch=5)
    weight = tf.constant([[0.1, -0.8, 0.3, 0.05], [-0.4, 0.2, 0.9, -0.6]])
    ones = tf.ones((2, 4), tf.bool)
    # Step 10 = end: sparsity 0.5, keep the 4 largest |w|.
    new = algo.updated_masks(tf.constant(10), {"a/kernel": weight}, {"a/kernel": ones}, {})["a/kernel"]
    np.testing.assert_array_equal(new.numpy(), [[False, True, False, False], [True, False, True, True]])
    # Step 5: s = 0.5 (1 - (1/2)^3) = 0.4375 -> round(8 * 0.5625) = round(4.5) = 4 (half to even).
    new = algo.updated_masks(tf.constant(5), {"a/kernel": weight}, {"a/kernel": ones}, {})["a/kernel"]
    assert new.numpy().sum() == 4
    # A pruned weight stays pruned even if its stored value were large.
    mask = tf.constant([[True, False, True, True], [True, True, True, True]])
    new = algo.updated_masks(tf.constant(10), {"a/kernel": weight}, {"a/kernel": mask}, {})["a/kernel"]
    np.testing.assert_array_equal(new.numpy(), [[False, False, True, False], [True, False, True, True]])


def test_magnitude_run_reaches_target_and_only_prunes(algorithm_runs):
    run = algorithm_runs["magnitude"]
    for step in range(run.trainer.step):
        for key, mask in run.snapshots[step + 1].masks.items():
            assert not np.any(mask & ~run.snapshots[step].masks[key]), "a pruned weight came back"
    for key, mask in run.snapshots[run.trainer.step].masks.items():
        assert mask.sum() == mask_ops.num_active(mask.size, 0.5), key


TFMOT_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tf_keras
    import tensorflow_model_optimization as tfmot

    def masks_of(config):
        kernels = np.load(config["weights"])
        names = ["h", "o"]
        model = tf_keras.Sequential([tf_keras.Input((10,)), tf_keras.layers.Dense(8, name="h"),
                                     tf_keras.layers.Dense(3, name="o")])
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=config["initial"], final_sparsity=config["final"], begin_step=config["begin"],
            end_step=config["end"], frequency=config["frequency"])
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        for layer, name in zip(pruned.layers, names):
            layer.pruning_vars[0][0].assign(kernels[name])
        pruned.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss="mse")
        history = []

        class Record(tf_keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                history.append({name: layer.pruning_vars[0][1].numpy().astype(bool)
                                for layer, name in zip(pruned.layers, names)})

        n = config["steps"]
        pruned.fit(np.ones((n, 10), np.float32), np.zeros((n, 3), np.float32), batch_size=1, epochs=1,
                   shuffle=False, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), Record()])
        np.savez(config["out"], **{f"{i}_{name}": m[name] for i, m in enumerate(history) for name in names})

    for config in json.loads(sys.argv[1]):  # each its own model, schedule and step counter
        masks_of(config)
""")


# Settings chosen so that no layer's size * (1 - s_t) is a rounding tie (x.5): at a tie
# tfmot itself is not consistent (its graph-mode mask update, after Grappler's rewrites,
# rounded 24 * 0.1875 = 4.5 up to 5 where eager mode and the plain formula give 4).
TFMOT_SETTINGS = [
    (0.0, 0.8, 1, 5, 2),   # s = 0, 0.7, 0.8 at steps 1, 3, 5
    (0.1, 0.9, 2, 8, 3),   # s = 0.1, 0.8, 0.9 at steps 2, 5, 8
]


def _tfmot_kernels():
    rng = np.random.default_rng(3)
    return {"h": rng.normal(size=(10, 8)).astype(np.float32), "o": rng.normal(size=(8, 3)).astype(np.float32)}


def tfmot_masks_run(directory):
    """tfmot's masks after each batch for every setting of TFMOT_SETTINGS: one child process
    (tf_keras) runs them all, each with its own model, schedule and pruning step. Returns the
    process and each setting's file of masks."""
    np.savez(directory / "weights.npz", **_tfmot_kernels())
    configs = [dict(initial=initial, final=final, begin=begin, end=end, frequency=frequency, steps=end + 2,
                    weights=str(directory / "weights.npz"), out=str(directory / f"masks_{i}.npz"))
               for i, (initial, final, begin, end, frequency) in enumerate(TFMOT_SETTINGS)]
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-c", TFMOT_SCRIPT, json.dumps(configs)], env=env,
                          capture_output=True, text=True, timeout=300)
    return done, {setting: config["out"] for setting, config in zip(TFMOT_SETTINGS, configs)}


# conftest.BackgroundRuns starts the tfmot child process when the session starts, beside the
# in-process tests.
BACKGROUND = {"test_magnitude_pruning_matches_tfmot": {"tfmot_masks": tfmot_masks_run}}


@pytest.fixture(scope="module")
def tfmot_masks(background):
    """tfmot's masks for each setting of TFMOT_SETTINGS (see tfmot_masks_run)."""
    done, files = background.result(__name__, "tfmot_masks")[1]
    assert done.returncode == 0, done.stderr[-3000:]
    return {setting: dict(np.load(path)) for setting, path in files.items()}


@pytest.mark.parametrize("initial, final, begin, end, frequency", TFMOT_SETTINGS)
def test_magnitude_pruning_matches_tfmot(tfmot_masks, initial, final, begin, end, frequency):
    for step in range(begin, end + 1, frequency):
        p = (step - begin) / (end - begin)
        s = final + (initial - final) * (1 - p) ** 3
        for size in (80, 24):
            assert abs(size * (1 - s) % 1 - 0.5) > 1e-3, "pick settings without rounding ties"
    kernels = _tfmot_kernels()
    steps = end + 2
    theirs = tfmot_masks[(initial, final, begin, end, frequency)]

    algo = algorithms.MagnitudePruning(final, "uniform", initial_sparsity=initial, begin_step=begin,
                                       end_step=end, frequency=frequency)
    shapes = {"h/kernel": (10, 8), "o/kernel": (8, 3)}
    algo.setup(shapes, total_steps=steps, steps_per_epoch=steps)
    masks = {k: tf.ones(s, tf.bool) for k, s in shapes.items()}
    weights = {"h/kernel": tf.constant(kernels["h"]), "o/kernel": tf.constant(kernels["o"])}
    # tfmot increments its pruning step before updating in the forward pass, so its i-th
    # batch (0-based) prunes at schedule step i + 1.
    changes = 0
    for batch in range(steps):
        schedule_step = batch + 1
        if algo.is_update_step(schedule_step):
            new = algo.updated_masks(tf.constant(schedule_step, tf.int64), weights, masks, {})
            changes += int(any(not np.array_equal(new[k].numpy(), masks[k].numpy()) for k in masks))
            masks = new
        for name in ["h", "o"]:
            np.testing.assert_array_equal(masks[f"{name}/kernel"].numpy(), theirs[f"{batch}_{name}"],
                                          err_msg=f"batch {batch}, layer {name}")
    assert changes >= 2
    assert int(masks["h/kernel"].numpy().sum()) == mask_ops.num_active(80, final)
