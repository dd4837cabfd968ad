"""shrink_channels: dead output channels removed physically, same outputs as the masked model.

Hand-made small models with chosen dead channels: the exact shapes after shrinking, outputs
equal to the masked model's at float32 tolerance on random inputs, the dead channels' constants
folded into the consumers' biases (or a ConstantOffset after a zero-padded Conv), channels that
must stay, the refusals, and the SavedModel export of a shrunk model.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse.errors import ConfigError
from keras_sparse.shrink import ConstantOffset

L = keras.layers


def kill(model: keras.Model, channels: dict[str, list[int]]) -> None:
    """Turns the named layers' output channels off through the masks (the model is wrapped)."""
    masks = ks.get_masks(model)
    for name, dead in channels.items():
        masks[f"{name}/kernel"][..., dead] = False
    ks.set_masks(model, masks)


def randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Statistics and affine parameters away from their identity initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.uniform(0.2, 1.0, layer.beta.shape).astype("float32"))  # > 0: survives ReLU
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype("float32"))


def randomize_biases(model: keras.Model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(0.1, 1.0, layer.bias.shape).astype("float32"))  # > 0: relu keeps it


def same_outputs(a: keras.Model, b: keras.Model, shape, seed: int = 0) -> None:
    x = np.random.default_rng(seed).normal(size=(16, *shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), rtol=1e-5, atol=1e-5)


def kernel_shape(model: keras.Model, name: str) -> tuple:
    return tuple(model.get_layer(name).kernel.shape)


def dense_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu", name="h1"),
                              L.Dense(5, activation="tanh", name="h2"), L.Dense(3, name="out")])
    randomize_biases(model)
    return ks.wrap(model, quiet=True)


def test_dense_shapes_outputs_and_bias_folding():
    model = dense_model()
    kill(model, {"h1": [1, 4, 6], "h2": [0]})
    shrunk = ks.shrink_channels(model)
    assert kernel_shape(shrunk, "h1") == (6, 5)
    assert kernel_shape(shrunk, "h2") == (5, 4)
    assert kernel_shape(shrunk, "out") == (4, 3)
    same_outputs(model, shrunk, (6,))
    # h1's dead units output relu(bias): h2's bias takes their weighted sum.
    h1, h2 = model.get_layer("h1"), model.get_layer("h2")
    dead = [1, 4, 6]
    expected = h2.bias.numpy() + np.maximum(h1.bias.numpy()[dead], 0) @ h2.kernel.numpy()[dead]
    np.testing.assert_allclose(shrunk.get_layer("h2").bias.numpy(), expected[1:], rtol=1e-6)
    assert not any(isinstance(layer, ConstantOffset) for layer in shrunk.layers)
    assert ks.shrink_channels(ks.strip(model)).count_params() == shrunk.count_params()  # masks not needed


def test_nothing_dead_changes_nothing_and_outputs_keep_their_channels():
    model = dense_model()
    kill(model, {"out": [2]})  # a model output keeps its shape
    shrunk = ks.shrink_channels(model)
    assert [kernel_shape(shrunk, n) for n in ("h1", "h2", "out")] == [(6, 8), (8, 5), (5, 3)]
    same_outputs(model, shrunk, (6,))


def conv_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 2))
    x = L.Conv1D(6, 3, name="c1")(inputs)  # valid: 8 positions
    x = L.ReLU()(L.BatchNormalization(name="bn1")(x))
    x = L.MaxPooling1D(2)(x)  # 4 positions
    x = L.Conv1D(4, 3, padding="same", use_bias=False, name="c2")(x)
    x = L.ReLU()(L.BatchNormalization(name="bn2")(x))
    x = L.Dropout(0.5)(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    randomize_batch_norms(model)
    return ks.wrap(model, quiet=True)


def test_conv_batch_norm_flatten():
    model = conv_model()
    kill(model, {"c1": [0, 3], "c2": [2]})
    shrunk = ks.shrink_channels(model)
    assert kernel_shape(shrunk, "c1") == (3, 2, 4)
    assert tuple(shrunk.get_layer("bn1").gamma.shape) == (4,)
    assert kernel_shape(shrunk, "c2") == (3, 4, 3)
    assert tuple(shrunk.get_layer("bn2").moving_mean.shape) == (3,)
    # Flatten of 4 positions x 3 channels: channel 2 of c2 left positions p * 4 + 2.
    assert kernel_shape(shrunk, "out") == (12, 3)
    dead_rows = [p * 4 + 2 for p in range(4)]
    kept = np.delete(model.get_layer("out").kernel.numpy(), dead_rows, axis=0)
    np.testing.assert_array_equal(shrunk.get_layer("out").kernel.numpy(), kept)
    # c1's dead channels reach c2 as nonzero constants, which its zero padding does not see at
    # the borders: a ConstantOffset carries them.
    assert isinstance(shrunk.get_layer("c2_offset"), ConstantOffset)
    same_outputs(model, shrunk, (10, 2))


def residual_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(4, 3, padding="same", name="stem")(inputs))
    y = L.Conv2D(4, 1, activation="relu", name="branch")(x)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(L.ReLU()(x))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    randomize_biases(model)
    return ks.wrap(model, quiet=True)


def test_residual_add_removes_a_channel_only_where_every_branch_is_dead():
    model = residual_model()
    kill(model, {"stem": [1, 2], "branch": [1]})  # 1 dead in both branches, 2 in the stem only
    shrunk = ks.shrink_channels(model)
    assert kernel_shape(shrunk, "stem") == (3, 3, 3, 3)
    assert kernel_shape(shrunk, "branch") == (1, 1, 3, 3)
    assert kernel_shape(shrunk, "out") == (3, 2)
    # A 1x1 conv reads no padding: the stem's constant channel folds into its bias.
    assert not any(isinstance(layer, ConstantOffset) for layer in shrunk.layers)
    same_outputs(model, shrunk, (8, 8, 3))


def test_assorted_layers_and_where_a_constant_cannot_be_carried():
    # A Sequential built without an Input, LeakyReLU, an elu Conv, pooling with "same" padding,
    # a Dense on a sequence, global max pooling.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([L.Conv1D(6, 3, padding="same", activation="elu", name="c"), L.AveragePooling1D(
        2, padding="same"), L.Dense(5, name="d"), L.LeakyReLU(), L.GlobalMaxPooling1D(), L.Dense(2, name="out")])
    model.build((None, 11, 3))
    randomize_biases(model)
    kill(ks.wrap(model, quiet=True), {"c": [2, 3], "d": [4]})
    shrunk = ks.shrink_channels(model)
    assert [kernel_shape(shrunk, n) for n in ("c", "d", "out")] == [(3, 3, 4), (4, 4), (4, 2)]
    same_outputs(model, shrunk, (11, 3))
    # Nonzero constants read by a zero-padded Conv of unknown length, or a causal one: kept.
    for inputs, padding in [((None, 3), "same"), ((11, 3), "causal")]:
        model = keras.Sequential([keras.Input(inputs), L.Conv1D(6, 3, padding=padding, name="c"),
                                  L.Conv1D(4, 3, padding=padding, name="c2"), L.GlobalAveragePooling1D(),
                                  L.Dense(2, name="out")])
        randomize_biases(model)
        kill(ks.wrap(model, quiet=True), {"c": [1, 5], "c2": [0]})
        shrunk = ks.shrink_channels(model)
        assert [kernel_shape(shrunk, n) for n in ("c", "c2", "out")] == [(3, 3, 6), (3, 6, 3), (3, 2)]
        same_outputs(model, shrunk, (11, 3))


def test_a_static_channel_mask_from_an_algorithm():
    model = dense_model()
    algorithm = ks.algorithms.StaticSparse(sparsity=0.5, sparsity_type={"h1": "channel", "h2": "channel"})
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.1), algorithm, model=model)
    optimizer.build(model.trainable_variables)
    optimizer.prepare()
    masks = ks.get_masks(model)
    live = {n: int(masks[f"{n}/kernel"].any(axis=0).sum()) for n in ("h1", "h2")}
    assert 0 < live["h1"] < 8 and 0 < live["h2"] < 5
    shrunk = ks.shrink_channels(model)
    assert [kernel_shape(shrunk, n) for n in ("h1", "h2", "out")] == [(6, live["h1"]), (live["h1"], live["h2"]),
                                                                     (live["h2"], 3)]
    same_outputs(model, shrunk, (6,))


def test_mixing_layers_keep_their_inputs():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = L.LayerNormalization(name="norm")(L.Dense(5, name="a")(inputs))
    x = L.Activation("softmax")(L.Dense(4, name="b")(x))
    model = ks.wrap(keras.Model(inputs, L.Dense(2, name="out")(x)), quiet=True)
    kill(model, {"a": [0], "b": [1]})
    shrunk = ks.shrink_channels(model)
    assert [kernel_shape(shrunk, n) for n in ("a", "b", "out")] == [(6, 5), (5, 4), (4, 2)]
    same_outputs(model, shrunk, (6,))


class Custom(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = L.Dense(3)

    def call(self, x):
        return self.fc(x)


def refusal(model: keras.Model) -> str:
    with pytest.raises(ConfigError) as info:
        ks.shrink_channels(model)
    message = str(info.value)
    assert "\n" not in message and "ks.export_saved_model" in message
    return message


def test_refusals_name_the_layer_and_the_fix():
    inputs = keras.Input((6,))
    a, b = L.Dense(4, name="a")(inputs), L.Dense(4, name="b")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate(name="join")([a, b])))
    assert "'join' (Concatenate)" in refusal(model)

    inner = keras.Sequential([keras.Input((6,)), L.Dense(4)], name="inner")
    assert "'inner'" in refusal(keras.Model(inputs, L.Dense(2)(inner(inputs))))

    custom = Custom(name="custom")
    custom(np.zeros((1, 6), "float32"))
    assert "Custom 'custom'" in refusal(custom)

    grouped = keras.Sequential([keras.Input((5, 4)), L.Conv1D(4, 3, groups=2, name="grouped")])
    assert "'grouped' (Conv1D)" in refusal(grouped)

    prelu = keras.Sequential([keras.Input((4,)), L.Dense(4), L.PReLU(name="prelu")])
    assert "'prelu' (PReLU)" in refusal(prelu)


def test_saved_model_export_of_a_shrunk_model(tmp_path):
    model = conv_model()
    kill(model, {"c1": [0, 3], "c2": [2]})
    shrunk = ks.shrink_channels(model)
    path = ks.export_saved_model(shrunk, str(tmp_path / "shrunk"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    x = np.random.default_rng(3).normal(size=(4, 10, 2)).astype("float32")
    (out,) = served(tf.constant(x)).values()
    np.testing.assert_allclose(out.numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    # And the .keras round trip (ConstantOffset is registered).
    shrunk.save(tmp_path / "shrunk.keras")
    np.testing.assert_allclose(np.asarray(keras.models.load_model(tmp_path / "shrunk.keras")(x)),
                               np.asarray(model(x)), rtol=1e-5, atol=1e-5)
