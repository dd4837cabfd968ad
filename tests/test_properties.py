"""Property tests (hypothesis) over random layer shapes, sparsities, distributions and seeds.

1. Active counts: every layer starts with exactly ``num_active(size, target)`` weights, the
   targets being ``distributions.layer_sparsities``; ER/ERK never exceed density 1 and meet the
   global budget, the layers left sparse absorbing what the forced-dense ones take.
2. Pruned weights are exactly zero after every step of every algorithm (Trainer runs).
3. SET and RigL never change a layer's active count (``updated_masks`` called directly, and
   through the Trainer).
4. Masks are identical with and without XLA (``jit_compile``), step by step; weights agree to
   float tolerance.

Compiling is what costs here: the Trainer runs of (2) use ``jit_compile=False`` with a few
examples each, and (4) compares against the XLA runs ``conftest.algorithm_runs`` already
trains for ``test_algorithms`` (built once per session).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import keras_sparse as ks
from keras_sparse import algorithms, distributions, mask_ops, schedules
from keras_sparse.callbacks import Callback

# No example database (nothing written into the repository); no deadline (TF's first calls are slow).
FAST = settings(max_examples=200, deadline=None, database=None)  # pure Python / NumPy: ~1 ms an example
EAGER = settings(max_examples=80, deadline=None, database=None)  # eager TF: ~10 ms an example
# Trainer runs (~1 s each): two examples per algorithm, and no shrinking of a failure (that
# would train hundreds of models); the fixtures they use are pure factories.
TRAINING = settings(max_examples=2, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

DYNAMIC = {"set": algorithms.SET, "rigl": algorithms.RigL}
RANDOM_START = [algorithms.StaticSparse, algorithms.SET, algorithms.RigL]

# Kernels of 1 to 4 dims of size 1..8, 1 to 5 of them, named like mask keys.
shape_st = st.lists(st.integers(1, 8), min_size=1, max_size=4).map(tuple)
shapes_st = st.lists(shape_st, min_size=1, max_size=5).map(
    lambda shapes: {f"layer_{i}/kernel": shape for i, shape in enumerate(shapes)})
# Sparsities in [0, 0.99): arbitrary floats and round percentages (which put size * density on
# a rounding tie x.5 often, where float32 and float64 arithmetic disagree).
sparsity_st = st.one_of(st.floats(0.0, 0.99, exclude_max=True), st.integers(0, 98).map(lambda p: p / 100))
seed_st = st.integers(0, 2**31 - 1)
named_st = st.sampled_from(["uniform", "erdos_renyi", "erdos_renyi_kernel"])


def _size(shape) -> int:
    return int(np.prod(shape))


def _raw_density(shape, all_dims: bool) -> float:
    """ER / ERK's unscaled density: sum of the (last two, or all) dims over their product."""
    dims = list(shape) if all_dims else list(shape)[-2:]
    return sum(dims) / math.prod(dims)


def _values(rng: np.random.Generator, shape, ties: bool) -> np.ndarray:
    """Normal float32 values; with ``ties``, rounded to a few levels (many equal, many zeros)."""
    values = rng.normal(size=shape)
    return (np.round(values) if ties else values).astype(np.float32)


# ============================================================ 1. active counts
@FAST
@given(shapes=shapes_st, sparsity=sparsity_st, name=st.sampled_from(["erdos_renyi", "erdos_renyi_kernel"]))
def test_erdos_renyi_is_capped_proportional_and_meets_the_budget(shapes, sparsity, name):
    result = distributions.layer_sparsities(shapes, sparsity, name)
    assert result.keys() == shapes.keys()
    sizes = {k: _size(s) for k, s in shapes.items()}
    density = {k: 1.0 - s for k, s in result.items()}
    # Never denser than dense, never empty.
    assert all(0.0 <= s < 1.0 for s in result.values()), result
    # The float budget is met exactly, forced-dense layers included: what they take beyond their
    # proportional share comes off the layers left sparse.
    total = sum(sizes.values())
    assert sum(sizes[k] * density[k] for k in shapes) == pytest.approx((1 - sparsity) * total, rel=1e-9, abs=1e-9)
    # "Water filling": one scale c with density = min(1, c * raw) for every layer, i.e. the
    # sparse layers are proportional to raw and exactly those that would pass 1 are dense.
    raw = {k: _raw_density(s, name == "erdos_renyi_kernel") for k, s in shapes.items()}
    sparse = [k for k in shapes if result[k] > 0.0]
    if sparse:  # (all dense only at sparsity ~ 0)
        c = density[sparse[0]] / raw[sparse[0]]
        for k in sparse:
            assert density[k] / raw[k] == pytest.approx(c, rel=1e-9), (k, result)
        for k in set(shapes) - set(sparse):
            assert c * raw[k] >= 1.0 - 1e-9, (k, result)
    else:
        assert sparsity == pytest.approx(0.0, abs=1e-9)
    # Integer counts: each layer rounds to nearest (at most 1/2 off) unless the at-least-one
    # rule lifts it, so the total is within the sum of those bounds of the global target.
    counts = {k: mask_ops.num_active(sizes[k], result[k]) for k in shapes}
    bounds = {k: max(0.5, 1.0 - sizes[k] * density[k]) for k in shapes}
    for k in shapes:
        assert 1 <= counts[k] <= sizes[k]
        assert abs(counts[k] - sizes[k] * density[k]) <= bounds[k] + 1e-9, k
    assert abs(sum(counts.values()) - (1 - sparsity) * total) <= sum(bounds.values()) + 1e-6


@FAST
@given(shapes=shapes_st, sparsity=sparsity_st, first_layer_dense=st.booleans())
def test_uniform_is_the_global_sparsity_everywhere_except_a_dense_first_layer(shapes, sparsity, first_layer_dense):
    result = distributions.layer_sparsities(shapes, sparsity, "uniform", first_layer_dense=first_layer_dense)
    first = next(iter(shapes))
    assert result == {k: 0.0 if (first_layer_dense and k == first) else sparsity for k in shapes}
    # The dense first layer is not made up by the others: the model ends up that much denser.
    sizes = {k: _size(s) for k, s in shapes.items()}
    expected = (1 - sparsity) * sum(sizes.values()) + (sparsity * sizes[first] if first_layer_dense else 0.0)
    assert sum(sizes[k] * (1 - result[k]) for k in shapes) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@FAST
@given(cls=st.sampled_from(RANDOM_START), shapes=shapes_st, sparsity=sparsity_st, name=named_st,
       first_layer_dense=st.booleans(), seed=seed_st)
def test_random_initial_masks_have_exactly_the_distributions_counts(cls, shapes, sparsity, name,
                                                                      first_layer_dense, seed):
    options = {"first_layer_dense": first_layer_dense} if name == "uniform" else {}
    algo = cls(sparsity=sparsity, distribution=name, seed=seed, **options)
    algo.setup(shapes, total_steps=100, steps_per_epoch=10)
    targets = distributions.layer_sparsities(shapes, sparsity, name, **options)
    assert algo.targets == targets
    masks = algo.initial_masks({k: np.ones(s, np.float32) for k, s in shapes.items()})
    assert masks.keys() == shapes.keys()
    for key, shape in shapes.items():
        assert masks[key].shape == shape and masks[key].dtype == bool, key
        assert int(masks[key].sum()) == mask_ops.num_active(_size(shape), targets[key]), key


@FAST
@given(shapes=shapes_st, sparsity=sparsity_st, seed=seed_st, ties=st.booleans())
def test_snip_keeps_exactly_the_global_count_of_top_scores(shapes, sparsity, seed, ties):
    rng = np.random.default_rng(seed)
    weights = {k: _values(rng, s, ties) for k, s in shapes.items()}
    gradients = {k: _values(rng, s, ties) for k, s in shapes.items()}
    algo = algorithms.SNIP(sparsity=sparsity, seed=seed)
    algo.setup(shapes, total_steps=10, steps_per_epoch=5)
    masks = algo.initial_masks(weights, lambda: gradients)
    assert masks.keys() == shapes.keys()
    assert all(masks[k].shape == s and masks[k].dtype == bool for k, s in shapes.items())
    total = sum(_size(s) for s in shapes.values())
    assert sum(int(m.sum()) for m in masks.values()) == mask_ops.num_active(total, sparsity)
    # The kept scores |g * w| are the largest over all layers together.
    scores = {k: np.abs(gradients[k] * weights[k]) for k in shapes}
    kept = np.concatenate([scores[k][masks[k]] for k in shapes])
    dropped = np.concatenate([scores[k][~masks[k]] for k in shapes])
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()


# ==================================================== 3. SET / RigL counts, direct
@EAGER
@given(name=st.sampled_from(sorted(DYNAMIC)), shapes=st.lists(shape_st, min_size=1, max_size=3).map(
           lambda shapes: {f"layer_{i}/kernel": shape for i, shape in enumerate(shapes)}),
       seed=seed_st, step=st.integers(0, 120), end=st.integers(1, 100), drop_fraction=st.floats(0.0, 1.0),
       ties=st.booleans(), zero_gradients=st.booleans(), masked_weights_zero=st.booleans())
def test_set_and_rigl_updates_keep_every_layers_active_count(name, shapes, seed, step, end, drop_fraction, ties,
                                                             zero_gradients, masked_weights_zero):
    algo = DYNAMIC[name](sparsity=0.5, distribution="uniform", drop_fraction=drop_fraction, update_frequency=1,
                         end_step=end, seed=seed)
    algo.setup(shapes, total_steps=200, steps_per_epoch=10)
    rng = np.random.default_rng(seed)
    masks, weights, gradients = {}, {}, {}
    for key, shape in shapes.items():
        masks[key] = mask_ops.random_mask(shape, int(rng.integers(0, _size(shape) + 1)), rng)  # any count, 0 to all
        weight = _values(rng, shape, ties)
        weights[key] = np.where(masks[key], weight, 0.0).astype(np.float32) if masked_weights_zero else weight
        gradients[key] = np.zeros(shape, np.float32) if zero_gradients else _values(rng, shape, ties)
    new = algo.updated_masks(tf.constant(step, tf.int64), {k: tf.constant(v) for k, v in weights.items()},
                             {k: tf.constant(v) for k, v in masks.items()},
                             {k: tf.constant(v) for k, v in gradients.items()})
    assert new.keys() == shapes.keys()
    fraction = float(schedules.cosine_drop_fraction(step, drop_fraction, end))
    for key, shape in shapes.items():
        mask = np.asarray(new[key])
        assert mask.shape == shape and mask.dtype == bool, key
        assert mask.sum() == masks[key].sum(), key
        # As many grown as dropped, and no more dropped than the schedule's fraction.
        dropped, grown = masks[key] & ~mask, mask & ~masks[key]
        assert dropped.sum() == grown.sum() <= math.ceil(fraction * masks[key].sum()), key
        if step >= end:  # the drop fraction is 0 from end_step on: nothing moves
            np.testing.assert_array_equal(mask, masks[key], err_msg=key)


@FAST
@given(name=st.sampled_from(sorted(DYNAMIC)), total=st.integers(1, 80), frequency=st.integers(1, 10),
       end=st.one_of(st.none(), st.integers(0, 80)), freeze=st.one_of(
           st.none(), st.tuples(st.just("step"), st.integers(0, 80)), st.tuples(st.just("epoch"), st.floats(0, 4))),
       steps_per_epoch=st.integers(1, 20))
def test_dynamic_update_steps_follow_frequency_end_and_freeze(name, total, frequency, end, freeze, steps_per_epoch):
    options = {}
    if freeze is not None:
        options["freeze_step" if freeze[0] == "step" else "freeze_epoch"] = freeze[1]
    algo = DYNAMIC[name](update_frequency=frequency, end_step=end, **options)
    freeze_at = None if freeze is None else (freeze[1] if freeze[0] == "step" else round(freeze[1] * steps_per_epoch))
    if freeze_at is not None and not 0 <= freeze_at <= total:
        with pytest.raises(ValueError, match="freeze"):
            algo.setup({"a/kernel": (4, 4)}, total_steps=total, steps_per_epoch=steps_per_epoch)
        return
    algo.setup({"a/kernel": (4, 4)}, total_steps=total, steps_per_epoch=steps_per_epoch)
    last = end if end is not None else int(0.75 * total)
    for step in range(total + 2):
        expected = 0 <= step < last and step % frequency == 0 and (freeze_at is None or step < freeze_at)
        assert algo.is_update_step(step) == expected, step
        # RigL needs the dense gradient exactly at its updates (none after a freeze); SET never.
        assert algo.uses_dense_gradient(step) == (expected and name == "rigl"), step


# ==================================================== magnitude pruning, direct
@EAGER
@given(shapes=shapes_st, sparsity=sparsity_st, name=named_st, initial=st.floats(0.0, 1.0), begin=st.integers(0, 4),
       frequency=st.integers(1, 4), updates=st.integers(0, 4), seed=seed_st, ties=st.booleans())
# Rounding ties where float32 (the schedule) and float64 (num_active) round differently: the last
# update used to keep 5 of 45 weights at 0.9 (num_active says 4), and 1 of 10 at 0.85 in eager
# mode but 2 under XLA or in a graph.
@example(shapes={"a/kernel": (45,)}, sparsity=0.9, name="uniform", initial=0.0, begin=0, frequency=1, updates=2,
         seed=0, ties=False)
@example(shapes={"a/kernel": (10,)}, sparsity=0.85, name="uniform", initial=0.0, begin=0, frequency=1, updates=2,
         seed=0, ties=False)
@example(shapes={"a/kernel": (10,)}, sparsity=0.85, name="uniform", initial=1.0, begin=1, frequency=1, updates=2,
         seed=0, ties=False)  # a constant schedule: at the target from the first update
@example(shapes={"a/kernel": (3, 4)}, sparsity=0.5, name="uniform", initial=0.0, begin=2, frequency=1, updates=0,
         seed=0, ties=False)  # one-shot (begin == end): tfmot's schedule is 0/0 = NaN, which pruned everything
def test_magnitude_pruning_only_prunes_and_ends_at_exact_counts(shapes, sparsity, name, initial, begin, frequency,
                                                               updates, seed, ties):
    initial *= sparsity  # in [0, sparsity]
    end = begin + updates * frequency
    algo = algorithms.MagnitudePruning(sparsity, name, initial_sparsity=initial, begin_step=begin, end_step=end,
                                       frequency=frequency)
    algo.setup(shapes, total_steps=end + 3, steps_per_epoch=end + 3)
    masks = algo.initial_masks({})
    assert all(m.all() for m in masks.values())
    rng = np.random.default_rng(seed)
    for step in range(end + 3):
        if not algo.is_update_step(step):
            continue
        weights = {k: tf.constant(np.where(masks[k], _values(rng, s, ties), 0.0).astype(np.float32))
                   for k, s in shapes.items()}
        new = {k: np.asarray(v) for k, v in algo.updated_masks(tf.constant(step, tf.int64), weights, masks, {}).items()}
        for key in shapes:
            assert not np.any(new[key] & ~masks[key]), f"a pruned weight came back at step {step} in {key}"
        masks = new
    targets = distributions.layer_sparsities(shapes, sparsity, name)
    for key, shape in shapes.items():
        assert int(masks[key].sum()) == mask_ops.num_active(_size(shape), targets[key]), key


# ============================================ 2 and 3 through the Trainer
STEPS_PER_EPOCH, EPOCHS = 5, 2  # 10 steps; SET/RigL update at 2, 4, 6 (end 7), frozen RigL at 2, 4


def _algorithm(name: str, sparsity: float, distribution: str, seed: int) -> algorithms.SparseAlgorithm:
    dynamic = dict(sparsity=sparsity, distribution=distribution, drop_fraction=0.5, update_frequency=2, seed=seed)
    return {
        "dense": lambda: algorithms.Dense(seed=seed),
        "static": lambda: algorithms.StaticSparse(sparsity, distribution, seed=seed),
        "magnitude": lambda: algorithms.MagnitudePruning(sparsity, distribution, begin_step=1, end_step=7,
                                                         frequency=2),
        "snip": lambda: algorithms.SNIP(sparsity, seed=seed),
        "set": lambda: algorithms.SET(**dynamic),
        "rigl": lambda: algorithms.RigL(**dynamic),
        "rigl_frozen": lambda: algorithms.RigL(**dynamic, freeze_epoch=1),
    }[name]()


ALGORITHMS = ["dense", "static", "magnitude", "snip", "set", "rigl", "rigl_frozen"]


class Recorder(Callback):
    """Masks and kernels after set-up and after every step, checking the invariant as it goes."""

    def __init__(self):
        self.masks: dict[int, dict[str, np.ndarray]] = {}
        self.kernels: dict[int, dict[str, np.ndarray]] = {}
        self.update_steps: list[int] = []

    def _record(self, trainer) -> None:
        step = trainer.step
        kernels = ks.masked_kernels(trainer.model)
        self.masks[step] = {k.key: np.asarray(k.mask.numpy(), dtype=bool) for k in kernels}
        self.kernels[step] = {k.key: k.kernel.numpy().copy() for k in kernels}
        for key, mask in self.masks[step].items():
            kernel = self.kernels[step][key]
            assert mask.shape == kernel.shape, key
            assert np.all(kernel[~mask] == 0.0), f"a pruned weight of {key} is not zero after {step} steps"
        if step > 0 and trainer.algorithm.is_update_step(step - 1):
            self.update_steps.append(step - 1)

    def on_train_begin(self, trainer) -> None:
        self._record(trainer)

    def on_step_end(self, trainer, losses) -> None:
        self._record(trainer)


def _counts(masks: dict[str, np.ndarray]) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in masks.items()}


def check_run(name: str, algo: algorithms.SparseAlgorithm, recorder: Recorder, total_steps: int) -> None:
    """The per-algorithm properties of a recorded run (the zero invariant is checked as it runs)."""
    masks = recorder.masks
    assert sorted(masks) == list(range(total_steps + 1))
    sizes = {k: m.size for k, m in masks[0].items()}
    targets = {k: mask_ops.num_active(sizes[k], algo.targets[k]) for k in sizes}
    for step in range(total_steps):
        if step not in recorder.update_steps:
            for key in sizes:
                np.testing.assert_array_equal(masks[step + 1][key], masks[step][key],
                                              err_msg=f"{key} changed at step {step}, not an update step")
    if name in ("dense", "magnitude"):
        assert all(m.all() for m in masks[0].values())
    if name == "dense":
        assert all(m.all() for m in masks[total_steps].values())
    elif name == "snip":  # one global count, chosen once
        assert sum(_counts(masks[0]).values()) == mask_ops.num_active(sum(sizes.values()), algo.sparsity)
        assert not recorder.update_steps
    elif name == "magnitude":
        for step in range(total_steps):
            for key in sizes:
                assert not np.any(masks[step + 1][key] & ~masks[step][key]), f"{key} regrew at step {step}"
        assert _counts(masks[total_steps]) == targets
    else:  # static, SET, RigL: the distribution's counts from the start, never changed
        for step in range(total_steps + 1):
            assert _counts(masks[step]) == targets, f"counts changed at step {step}"
        if name == "rigl_frozen":  # frozen after its first epoch
            assert all(step < algo.steps_per_epoch for step in recorder.update_steps)


@pytest.mark.parametrize("name", ALGORITHMS)
@TRAINING
@given(seed=st.integers(0, 1000), sparsity=st.sampled_from([0.3, 0.5, 0.7, 0.85, 0.9]),
       distribution=named_st, model=st.sampled_from(["mlp", "convnet"]))
def test_trainer_keeps_pruned_weights_zero_and_counts_exact(name, seed, sparsity, distribution, model, mlp, convnet,
                                                           dataset):
    if model == "mlp":
        net, data = mlp(seed=seed), dataset(STEPS_PER_EPOCH * 8, (8,), 4, batch=8, seed=seed)
    else:
        net, data = convnet(seed=seed), dataset(STEPS_PER_EPOCH * 8, (6, 6, 1), 3, batch=8, seed=seed)
    algo = _algorithm(name, sparsity, distribution, seed)
    # Momentum: a dropped weight would drift off zero without the trainer's re-masking.
    trainer = ks.Trainer(ks.wrap(net), algo, keras.optimizers.SGD(0.1, momentum=0.9),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                         steps_per_execution=1, progress=False)
    recorder = Recorder()
    trainer.fit(data, epochs=EPOCHS, callbacks=[recorder])
    check_run(name, algo, recorder, STEPS_PER_EPOCH * EPOCHS)
    expected_updates = {"magnitude": [1, 3, 5, 7], "set": [0, 2, 4, 6], "rigl": [0, 2, 4, 6], "rigl_frozen": [0, 2, 4]}
    assert recorder.update_steps == expected_updates.get(name, [])


# ============================================================ 4. XLA vs no XLA
@pytest.mark.parametrize("name", ALGORITHMS)
def test_masks_identical_with_and_without_xla(algorithm_runs, name, convnet, dataset):
    """Replays conftest's XLA run of ``name`` (``_Runs._train``: convnet seed 11, 6 batches of 8
    from data seed 5, SGD(0.05, momentum 0.9), 2 epochs) with ``jit_compile=False``."""
    compiled = algorithm_runs[name]
    assert compiled.trainer.xla.choice is True
    algo = algorithm_runs.factories[name]()
    trainer = ks.Trainer(ks.wrap(convnet(seed=11)), algo, keras.optimizers.SGD(0.05, momentum=0.9),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                         steps_per_execution=1, progress=False)
    recorder = Recorder()
    trainer.fit(dataset(48, (6, 6, 1), 3, batch=8, seed=5), epochs=2, callbacks=[recorder])
    total = trainer.step
    assert total == compiled.trainer.step == 12
    for key, kernel in recorder.kernels[0].items():  # same model, data and initial masks as conftest's run
        assert np.array_equal(kernel, compiled.snapshots[0].kernels[key]), \
            f"{key}: this replay no longer starts where conftest's _Runs._train does; keep the two in step"
    check_run(name, algo, recorder, total)
    for step in range(total + 1):
        xla = compiled.snapshots[step]
        for key, mask in recorder.masks[step].items():
            np.testing.assert_array_equal(mask, xla.masks[key], err_msg=f"{name}: mask {key} after {step} steps")
            np.testing.assert_allclose(recorder.kernels[step][key], xla.kernels[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: kernel {key} after {step} steps")
    for ours, theirs in zip(trainer.model.trainable_weights, compiled.trainer.model.trainable_weights):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=ours.path)
    if name in ("magnitude", "set", "rigl", "rigl_frozen"):  # the comparison covered real mask updates
        assert recorder.update_steps
        assert any(not np.array_equal(recorder.masks[0][k], recorder.masks[total][k]) for k in recorder.masks[0])
