"""Sparsity types (keras_sparse/sparsity_types.py): unstructured, N:M, blocks and channels.

Hand-made kernels with the exact masks expected after every mask update of every algorithm ×
type (a NumPy reference with sorts checks the radix select and the pairwise ranks), a few
literal masks that pin the semantics, the bad-input lines, the report, and short runs through
ks.Trainer (gin, TensorBoard) and model.fit.
"""

import glob
import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import algorithms, experiment, schedules, sparsity_types
from keras_sparse.config import parse_gin
from keras_sparse.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# "a" takes the type under test (a map, as a user picks types per layer); "b" stays unstructured.
SHAPES = {"a/kernel": (8, 4), "b/kernel": (4, 4)}
TYPES = ["unstructured", "2:4", "1:4", "4x1", "1x2", "channel"]


# ------------------------------------------------------------ NumPy reference
def groups(kind: str, shape=(8, 4)) -> np.ndarray:
    """Flat indices of each group of an (inputs, outputs) kernel, in the module's group order."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    if kind == "unstructured":
        return index.reshape(-1, 1)
    if ":" in kind:  # groups of m consecutive inputs, per output
        m = int(kind.split(":")[1])
        return index.T.reshape(-1, m)
    if kind == "channel":
        return index.T.reshape(shape[1], -1)
    r, c = (int(v) for v in kind.split("x"))
    tiles = index.reshape(shape[0] // r, r, shape[1] // c, c).transpose(0, 2, 1, 3)
    return tiles.reshape(-1, r * c)


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, ties to the lower index."""
    return np.argsort(-scores, kind="stable")[:int(k)]


def ref_select(kind, scores, k):
    """The mask of ``kind`` with k active entries at the largest scores."""
    flat, group = scores.ravel().astype(np.float64), groups(kind, scores.shape)
    mask = np.zeros(flat.size, bool)
    if ":" in kind:
        for g in group:
            mask[g[top(flat[g], k // len(group))]] = True
    else:
        for g in top(flat[group].sum(axis=1), k // group.shape[1]):
            mask[group[g]] = True
    return mask.reshape(scores.shape)


def ref_drop_and_grow(kind, mask, weight, grow, fraction):
    """SET/RigL's update by the reference: drop the smallest active (whole groups; N:M anywhere),
    grow the best inactive (N:M: each group back to N)."""
    group = groups(kind, mask.shape)
    size = 1 if ":" in kind else group.shape[1]
    n_active = int(mask.sum())
    n_drop = int(np.round(np.float32(fraction) * np.float32(n_active // size))) * size
    drop_scores = np.where(mask, np.abs(weight), -1.0)
    if ":" in kind:
        kept = np.zeros(mask.size, bool)
        kept[top(drop_scores.ravel(), n_active - n_drop)] = True
        kept = kept.reshape(mask.shape)
        grown = np.zeros(mask.size, bool)
        per_group = n_active // len(group)
        for g in group:
            free = g[~kept.ravel()[g]]
            grown[free[top(grow.ravel()[free], per_group - kept.ravel()[g].sum())]] = True
        return kept | grown.reshape(mask.shape)
    kept = ref_select(kind, drop_scores, n_active - n_drop)
    return kept | ref_select(kind, np.where(kept, -np.inf, grow), n_drop)


def check_pattern(kind, mask, per_group=None):
    """Every N:M group has exactly ``per_group`` (default N); blocks and channels are all or nothing."""
    group = mask.ravel()[groups(kind, mask.shape)]
    if ":" in kind:
        n = per_group if per_group is not None else int(kind.split(":")[0])
        assert (group.sum(axis=1) == n).all(), group.sum(axis=1)
    else:
        assert (group.all(axis=1) | ~group.any(axis=1)).all()


# ---------------------------------------------------------- every algorithm × type
def make(name, kind):
    spec = {"a": kind}
    if name == "static":
        return algorithms.StaticSparse(sparsity=0.5, distribution="uniform", seed=3, sparsity_type=spec)
    if name == "magnitude":
        return algorithms.MagnitudePruning(sparsity=0.5, begin_step=0, end_step=4, frequency=2, sparsity_type=spec)
    if name == "snip":
        return algorithms.SNIP(sparsity=0.5, seed=3, sparsity_type=spec)
    cls = algorithms.SET if name == "set" else algorithms.RigL
    freeze = {"freeze_step": 3} if name == "rigl_frozen" else {}
    return cls(sparsity=0.5, distribution="uniform", drop_fraction=0.5, update_frequency=2, end_step=6, seed=3,
               sparsity_type=spec, **freeze)


def values(rng, shape):
    """Distinct magnitudes, random signs: no ties unless a test wants them."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 1.0).reshape(shape) * rng.choice([-1, 1], shape) / size).astype(np.float32)


# Magnitude pruning's counts at its updates (steps 0, 2, 4: schedule sparsity 0, 0.4375, 0.5 of
# layer "a", 32 entries): unstructured round(32 × 0.5625) = 18; N:M from 4 per group to N
# (2:4: 4 − round(2 × 0.875) = 2; 1:4: 4 − round(3 × 0.875) = 1); 4x1: 8 blocks, round(4.5) = 4
# (half to even); 1x2: 16 blocks, 9; channel: 4 channels, round(2.25) = 2.
MAGNITUDE_COUNTS = {"unstructured": [32, 18, 16], "2:4": [32, 16, 16], "1:4": [32, 8, 8], "4x1": [32, 16, 16],
                    "1x2": [32, 18, 16], "channel": [32, 16, 16]}
TARGET_A = {"unstructured": 16, "2:4": 16, "1:4": 8, "4x1": 16, "1x2": 16, "channel": 16}


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("name", ["static", "magnitude", "snip", "set", "rigl", "rigl_frozen"])
def test_every_algorithm_and_type_gives_the_exact_masks(name, kind):
    rng = np.random.default_rng(7)
    algo = make(name, kind)
    algo.setup(SHAPES, total_steps=8, steps_per_epoch=4)
    assert str(algo.structures["a/kernel"]) == kind and str(algo.structures["b/kernel"]) == "unstructured"
    weights = {k: values(rng, s) for k, s in SHAPES.items()}
    grads = {k: values(rng, s) for k, s in SHAPES.items()}
    masks = algo.initial_masks(weights, lambda: grads)
    if name == "snip":
        scores = {k: np.abs(grads[k] * weights[k]) for k in SHAPES}
        if ":" in kind:  # N:M fixed; "b" gets the rest of the 24-entry budget
            expected_a = ref_select(kind, scores["a/kernel"], TARGET_A[kind])
            expected_b = ref_select("unstructured", scores["b/kernel"], 24 - expected_a.sum())
        else:  # one ranking of a's units (mean score) and b's entries, best first while they fit
            group = groups(kind)
            means = np.concatenate([scores["a/kernel"].ravel()[group].mean(axis=1), scores["b/kernel"].ravel()])
            sizes = np.concatenate([np.full(len(group), group.shape[1]), np.ones(16, int)])
            order = np.argsort(-means, kind="stable")
            taken = np.zeros(means.size, bool)
            taken[order[np.cumsum(sizes[order]) <= 24]] = True
            expected_a = np.zeros(32, bool)
            expected_a[group[taken[:len(group)]].ravel()] = True
            expected_a, expected_b = expected_a.reshape(8, 4), taken[len(group):].reshape(4, 4)
        np.testing.assert_array_equal(masks["a/kernel"], expected_a)
        np.testing.assert_array_equal(masks["b/kernel"], expected_b)
    elif name == "magnitude":
        assert all(m.all() for m in masks.values())
    else:  # random, at the exact target
        assert masks["a/kernel"].sum() == TARGET_A[kind] and masks["b/kernel"].sum() == 8
        again = make(name, kind)
        again.setup(SHAPES, total_steps=8, steps_per_epoch=4)
        np.testing.assert_array_equal(again.initial_masks(weights, lambda: grads)["a/kernel"], masks["a/kernel"])
    check_pattern(kind, masks["a/kernel"], per_group=4 if name == "magnitude" else None)

    updates = [step for step in range(8) if algo.is_update_step(step)]
    assert updates == {"static": [], "snip": [], "magnitude": [0, 2, 4], "rigl_frozen": [0, 2]}.get(name, [0, 2, 4])
    for index, step in enumerate(updates):
        weights = {k: values(rng, s) * masks[k] for k, s in SHAPES.items()}  # pruned weights are zero
        grads = {k: values(rng, s) for k, s in SHAPES.items()}
        new = {k: v.numpy() for k, v in algo.updated_masks(tf.constant(step, tf.int64), weights, masks, grads).items()}
        if name == "magnitude":
            count = MAGNITUDE_COUNTS[kind][index]
            expected = ref_select(kind, np.where(masks["a/kernel"], np.abs(weights["a/kernel"]), -1.0), count)
            check_pattern(kind, new["a/kernel"], per_group=count // 8 if ":" in kind else None)
        else:
            fraction = float(schedules.cosine_drop_fraction(step, 0.5, 6))
            grow = algo.grow_scores(tf.constant(step, tf.int64), "a/kernel", weights["a/kernel"],
                                    grads["a/kernel"]).numpy()
            expected = ref_drop_and_grow(kind, masks["a/kernel"], weights["a/kernel"], grow, fraction)
            assert new["a/kernel"].sum() == TARGET_A[kind]
            check_pattern(kind, new["a/kernel"])
        np.testing.assert_array_equal(new["a/kernel"], expected, err_msg=f"update at step {step}")
        masks = new
    holds = algo.structures["a/kernel"].holds(masks["a/kernel"])
    assert holds


# ------------------------------------------------------------- literal masks
def bound(kind, shape, target=0.5):
    return sparsity_types.parse(kind).on(sparsity_types.default_layout("x/kernel", shape), target)


def test_n_by_m_keeps_the_n_largest_of_every_m_inputs_per_output():
    scores = np.array([[1, 8], [5, 7], [3, 6], [4, 5], [9, 1], [2, 2], [0, 3], [7, 2]], np.float32)
    mask = bound("2:4", (8, 2)).select(scores, 8).numpy()
    expected = np.array([[0, 1], [1, 1], [0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], bool)  # ties: lower row
    np.testing.assert_array_equal(mask, expected)


def test_rigl_n_by_m_drops_layer_wide_and_refills_each_group():
    algo = algorithms.RigL(sparsity=0.5, distribution="uniform", drop_fraction=0.5, end_step=100, sparsity_type="2:4")
    algo.setup({"x/kernel": (4, 2)}, total_steps=100, steps_per_epoch=10)
    mask = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
    weight = np.array([[0.1, 0], [0.9, 0], [0, 0.5], [0, 0.3]], np.float32)
    grad = np.array([[5, 7], [0, 2], [8, 0], [9, 1]], np.float32)
    new = algo.updated_masks(tf.constant(0, tf.int64), {"x/kernel": weight}, {"x/kernel": mask},
                             {"x/kernel": grad})["x/kernel"].numpy()
    # Dropped: 0.1 and 0.3, the two smallest. Unstructured RigL would grow 9 and 8, both in column
    # 0 (three active there); 2:4 regrows one per column: 9 in column 0, 7 in column 1.
    np.testing.assert_array_equal(new, np.array([[0, 1], [1, 0], [0, 1], [1, 0]], bool))


def test_rigl_blocks_move_as_blocks():
    algo = algorithms.RigL(sparsity=0.5, distribution="uniform", drop_fraction=0.5, end_step=100, sparsity_type="2x1")
    algo.setup({"x/kernel": (4, 2)}, total_steps=100, steps_per_epoch=10)
    mask = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
    weight = np.array([[0.1, 0], [0.2, 0], [0, 0.5], [0, 0.6]], np.float32)
    grad = np.array([[1, 0], [1, 3], [4, 0], [4, 0]], np.float32)
    new = algo.updated_masks(tf.constant(0, tf.int64), {"x/kernel": weight}, {"x/kernel": mask},
                             {"x/kernel": grad})["x/kernel"].numpy()
    # One of two blocks dropped (rows 0-1 of column 0: |w| sums to 0.3); grown: the block whose
    # gradient sums largest (rows 2-3 of column 0: 8, against 3 and 2).
    np.testing.assert_array_equal(new, np.array([[0, 0], [0, 0], [1, 1], [1, 1]], bool))


def test_channel_magnitude_keeps_whole_columns_by_l1():
    weight = np.array([[1, -4, 0.5, 2], [1, 0.1, -0.5, -2], [1, 0.1, 0.5, 0.1]], np.float32)
    mask = bound("channel", (3, 4)).select(np.abs(weight), 6).numpy()
    np.testing.assert_array_equal(mask, np.array([[0, 1, 0, 1]] * 3, bool))


def test_gradual_n_by_m_steps_through_denser_patterns():
    # 1:4 over a schedule 0 → 0.75: 4, 3, 2, 1 per group as it goes.
    structure = bound("1:4", (8, 2), target=0.75)
    counts = [structure.scheduled_count(tf.constant(s, tf.float32)).numpy() for s in (0.0, 0.2, 0.4, 0.6, 0.75)]
    assert counts == [16, 12, 8, 8, 4]


def test_target_zero_keeps_an_n_by_m_layer_dense_and_n_by_m_ignores_other_targets():
    algo = algorithms.StaticSparse(sparsity=0.9, distribution={"a": 0.0}, sparsity_type="2:4")
    algo.setup(SHAPES, total_steps=10, steps_per_epoch=5)
    masks = algo.initial_masks({k: np.ones(s, np.float32) for k, s in SHAPES.items()})
    assert masks["a/kernel"].all() and masks["b/kernel"].sum() == 8  # dense; 2:4 (not 90%)
    check_pattern("2:4", masks["b/kernel"])


@pytest.mark.parametrize("kind", ["2:4", "4x1", "channel"])
def test_mask_updates_are_the_same_under_xla_and_in_a_graph(kind):
    algo = algorithms.RigL(sparsity=0.5, distribution="uniform", drop_fraction=0.5, end_step=100, sparsity_type=kind)
    algo.setup({"x/kernel": (3, 8, 4)}, total_steps=100, steps_per_epoch=10)
    rng = np.random.default_rng(1)
    mask = algo.initial_masks({"x/kernel": np.ones((3, 8, 4), np.float32)})["x/kernel"]
    weight, grad = values(rng, (3, 8, 4)) * mask, values(rng, (3, 8, 4))

    def update(step, weight, mask, grad):
        return algo.updated_masks(step, {"x/kernel": weight}, {"x/kernel": mask}, {"x/kernel": grad})["x/kernel"]

    args = (tf.constant(0, tf.int64), weight, mask, grad)
    xla = tf.function(update, jit_compile=True)(*args).numpy()
    graph = tf.function(update, jit_compile=False)(*args).numpy()
    np.testing.assert_array_equal(xla, graph)
    assert algo.structures["x/kernel"].holds(xla) and xla.sum() == mask.sum()


# ---------------------------------------------------------------- layouts
def layer_layout(layer, shape, weight="kernel"):
    model = keras.Sequential([keras.Input(shape), layer])
    ks.wrap(model, include=lambda lay, var: var.path.endswith(weight), quiet=True)
    return sparsity_types.layout_of(ks.masked_weights(model)[0])


def test_layouts_put_n_by_m_on_the_input_channels():
    assert layer_layout(keras.layers.Conv2D(4, 3), (5, 5, 8)).in_axis == 2
    transpose = layer_layout(keras.layers.Conv2DTranspose(4, 3), (5, 5, 8))  # kernel (3, 3, 4, 8)
    assert (transpose.in_axis, transpose.out_axes) == (3, (2,))
    einsum = layer_layout(keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4)), (3, 8))
    assert (einsum.in_axis, einsum.out_axes) == (0, (1, 2))
    depthwise = layer_layout(keras.layers.DepthwiseConv2D(3), (5, 5, 8))
    assert (depthwise.in_axis, depthwise.out_axes) == (None, (2, 3))
    # A conv kernel's groups of 4 run along its input channels (axis 2).
    structure = sparsity_types.NByM(1, 4).on(sparsity_types.Layout("c/kernel", (1, 1, 8, 1), 2, (3,)), 0.5)
    scores = np.arange(8, dtype=np.float32).reshape(1, 1, 8, 1)
    np.testing.assert_array_equal(structure.select(scores, 2).numpy().ravel(), [0, 0, 0, 1, 0, 0, 0, 1])


# ------------------------------------------------------------------ bad input
def prepare(model, algorithm):
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithm, total_steps=10, model=model)
    optimizer.prepare()


@pytest.mark.parametrize("make_model, spec, words", [
    (lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="fc")]), "2:4",
     ["fc/kernel (Dense)", "6 input channels do not divide into groups of 4", "M divides 6", "{'fc': 'unstructured'}"]),
    (lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="fc")]), "4x1",
     ["fc/kernel (Dense)", "6x4 view", "4x1 blocks"]),
    (lambda: keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 8, name="emb"),
                               keras.layers.Dense(4, name="fc")]), {"emb": "2:4"},
     ["emb/embeddings (Embedding)", "no input channels", "'channel'"]),
    (lambda: keras.Sequential([keras.Input((6, 6, 4)), keras.layers.DepthwiseConv2D(3, name="dw")]), "2:4",
     ["dw/kernel (DepthwiseConv2D)", "no input channels"]),
])
def test_a_type_a_layer_cannot_take_is_one_line_naming_it(make_model, spec, words):
    model = ks.wrap(make_model(), embeddings=True, include=None, quiet=True)
    with pytest.raises(ConfigError) as error:
        prepare(model, algorithms.StaticSparse(sparsity=0.5, sparsity_type=spec))
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 4), name="w")

    def call(self, x):
        return x @ self.w


def test_channel_on_a_layer_without_known_output_channels():
    model = keras.Sequential([keras.Input((4,)), Scale(name="scale")])
    ks.wrap(model, include="scale", quiet=True)
    with pytest.raises(ConfigError, match=r"scale/w \(Scale\) cannot be channel sparse: keras-sparse does not know"):
        prepare(model, algorithms.StaticSparse(sparsity=0.5, sparsity_type="channel"))


@pytest.mark.parametrize("spec, words", [
    ("3/4", "Unknown sparsity type '3/4'"), ("4:2", "needs 1 <= N < M"), ("1x1", "larger than one entry"),
    ({"nope": "2:4"}, "names ['nope'], which are not masked layers"),
])
def test_bad_type_names(spec, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        algo = algorithms.RigL(sparsity_type=spec)
        algo.setup(SHAPES, total_steps=10, steps_per_epoch=5)


def test_names_round_trip_and_maps_pick_the_most_specific_entry():
    for name in TYPES:
        assert str(sparsity_types.parse(name)) == name
    assert sparsity_types.parse("block:4x1") == sparsity_types.Block(4, 1)
    chosen = sparsity_types.resolve({"a": "2:4", "a/kernel": "channel", "*": "4x1"}, ["a/kernel", "b/kernel"])
    assert {k: str(v) for k, v in chosen.items()} == {"a/kernel": "channel", "b/kernel": "4x1"}
    algo = algorithms.from_config(algorithms.RigL(sparsity_type={"a": "2:4"}).config())
    assert algo.sparsity_type == {"a": "2:4"}


# ---------------------------------------------------------------- report, fit, gin
def tiny_cnn():
    inputs = keras.Input((16, 4))
    x = keras.layers.Conv1D(8, 3, padding="same", name="conv", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_model_fit_with_n_by_m_magnitude_pruning_and_the_report():
    keras.utils.set_random_seed(0)
    model = ks.wrap(tiny_cnn(), quiet=True)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 16, 4)).astype(np.float32), rng.integers(0, 3, 64)
    algo = algorithms.MagnitudePruning(sparsity=0.5, begin_step=0, end_step=6, frequency=2,
                                       sparsity_type={"conv": "2:4"})
    model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.05), algo, total_steps=8),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                  steps_per_execution=2)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    report = ks.sparsity_report(model)
    assert report["conv/kernel"]["type"] == "2:4" and report["conv/kernel"]["pattern_holds"]
    assert report["conv/kernel"]["sparsity"] == 0.5 and report["logits/kernel"]["type"] == "unstructured"
    groups_of_four = np.moveaxis(ks.get_masks(model)["conv/kernel"], 1, -1).reshape(-1, 4)  # kernel (3, 4, 8)
    assert (groups_of_four.sum(axis=1) == 2).all()
    # A pattern broken by hand is reported as broken.
    masks = ks.get_masks(model)
    masks["conv/kernel"][0, :, 0] = True
    ks.set_masks(model, masks)
    assert not ks.sparsity_report(model)["conv/kernel"]["pattern_holds"]


def read_images(logdir):
    images = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "images":
                    png = tf.make_ndarray(value.tensor)[2]
                    images[value.tag] = tf.io.decode_png(png).numpy()[:, :, 0] > 0
    return images


def test_gin_binding_trains_a_tiny_run_with_every_type_and_tensorboard_shows_the_masks(tmp_path):
    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "rigl.gin")],
                  ["training.epochs = 1", "training.batch_size = 500", "model.width = 8", "RigL.update_frequency = 2",
                   "RigL.sparsity_type = {'conv2': '2:4', 'conv3': '4x1', 'conv4': 'channel'}",
                   "training.progress = False", "training.export = False", "training.jit_compile = False",
                   "training.steps_per_execution = 2"])
        metrics = experiment.train(str(tmp_path), seed=0)
    finally:
        gin.clear_config()
    structure = json.loads((tmp_path / "metrics.json").read_text())["layer_structure"]
    assert metrics["algorithm"]["sparsity_type"] == {"conv2": "2:4", "conv3": "4x1", "conv4": "channel"}
    assert {k: v["type"] for k, v in structure.items()} == {
        "conv1/kernel": "unstructured", "conv2/kernel": "2:4", "conv3/kernel": "4x1", "conv4/kernel": "channel",
        "logits/kernel": "unstructured"}
    assert all(v["pattern_holds"] for v in structure.values())
    # TensorBoard's pictures (rows: kernel positions × input channels; columns: outputs) show the
    # patterns: 2 of every 4 input channels, blocks of 4 rows, whole columns.
    images = read_images(str(tmp_path))
    conv2, conv3, conv4 = images["masks/conv2/kernel"], images["masks/conv3/kernel"], images["masks/conv4/kernel"]
    assert conv2.shape == (24, 8) and (conv2.T.reshape(-1, 4).sum(axis=1) == 2).all()
    blocks = conv3.reshape(6, 4, 8).transpose(0, 2, 1).reshape(-1, 4)
    assert (blocks.all(axis=1) | ~blocks.any(axis=1)).all() and blocks.any(axis=1).sum() > 0
    assert (conv4.all(axis=0) | ~conv4.any(axis=0)).all() and 0 < conv4.all(axis=0).sum() < 8


def test_the_n_by_m_gin_config_binds_the_types():
    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "rigl_n_by_m.gin")], [])
        algo = algorithms.RigL()
    finally:
        gin.clear_config()
    assert algo.sparsity_type == {"conv2": "2:4", "conv3": "2:4", "conv4": "2:4"}


def test_trainer_under_xla_with_several_steps_a_call_keeps_every_pattern():
    # XLA is the subject here: K = 4 steps a call, masks updated in-graph at steps 0, 2, 4, 6.
    keras.utils.set_random_seed(1)
    model = ks.wrap(tiny_cnn(), quiet=True)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(128, 16, 4)).astype(np.float32), rng.integers(0, 3, 128)
    algo = algorithms.RigL(sparsity=0.5, distribution="uniform", update_frequency=2, drop_fraction=0.5,
                           sparsity_type={"conv": "2:4", "logits": "channel"})
    trainer = ks.Trainer(model, algo, keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), jit_compile=True, steps_per_execution=4, progress=False)
    trainer.fit((x, y), epochs=1, batch_size=16)
    initial = algo.initial_masks({})  # random from the seed: the masks training started from
    report = ks.sparsity_report(model)
    assert [report[k]["type"] for k in ("conv/kernel", "logits/kernel")] == ["2:4", "channel"]
    assert report["conv/kernel"]["pattern_holds"] and report["logits/kernel"]["pattern_holds"]
    masks = ks.get_masks(model)
    assert (np.moveaxis(masks["conv/kernel"], 1, -1).reshape(-1, 4).sum(axis=1) == 2).all()
    assert masks["logits/kernel"].all(axis=0).sum() == 2 == masks["logits/kernel"].any(axis=0).sum()
    assert not np.array_equal(masks["conv/kernel"], initial["conv/kernel"])  # RigL moved weights within groups
