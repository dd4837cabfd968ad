"""wrap / get_masks / set_masks / sparsity / strip / export_saved_model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse.layers import MaskedWrapper

L = keras.layers


def _functional(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(5, activation="relu", name="fc")(x)
    x = L.Dropout(0.5, seed=1, name="drop")(x)
    outputs = L.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs, name="func")


def _nested(seed=0):
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential([keras.Input((4,)), L.Dense(6, activation="tanh", name="inner_fc"),
                              L.LayerNormalization(name="inner_ln")], name="inner")
    inputs = keras.Input((4,))
    x = L.Dense(4, name="pre")(inputs)
    x = inner(x)
    outputs = L.Dense(3, name="post")(x)
    return keras.Model(inputs, outputs, name="outer")


def _x(shape, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _keys(model):
    return [k.key for k in ks.masked_kernels(model)]


# -------------------------------------------------------------------------- wrap
def test_wrap_sequential(mlp):
    model = mlp(seed=0)
    x = _x((8,))
    wrapped = ks.wrap(model)
    assert isinstance(wrapped, keras.Sequential)
    assert _keys(wrapped) == ["hidden_0/kernel", "hidden_1/kernel", "logits/kernel"]
    assert all(isinstance(layer, MaskedWrapper) for layer in wrapped.layers)
    np.testing.assert_array_equal(wrapped(x).numpy(), model(x).numpy())


def test_wrap_functional_leaves_biases_and_batchnorm_dense():
    model = _functional()
    x = _x((6, 6, 2))
    wrapped = ks.wrap(model)
    assert _keys(wrapped) == ["conv/kernel", "fc/kernel", "out/kernel"]
    types = {layer.name: type(layer).__name__ for layer in wrapped.layers}
    assert types["bn"] == "BatchNormalization"
    assert types["masked_conv"] == types["masked_fc"] == types["masked_out"] == "MaskedWrapper"
    # The only bool variables are the three kernel masks; biases and BN weights carry none.
    bool_vars = sorted(v.path for v in wrapped.weights if v.dtype == "bool")
    assert len(bool_vars) == 3 and all(p.endswith("/kernel_mask") for p in bool_vars)
    masked_ids = {id(k.kernel) for k in ks.masked_kernels(wrapped)}
    unmasked = [v.name for v in wrapped.weights if v.dtype != "bool" and id(v) not in masked_ids]
    assert sorted(unmasked) == sorted(["bias", "gamma", "beta", "moving_mean", "moving_variance",
                                       "bias", "bias"])
    np.testing.assert_array_equal(wrapped(x, training=False).numpy(), model(x, training=False).numpy())


def test_wrap_nested_model():
    model = _nested()
    x = _x((4,))
    wrapped = ks.wrap(model)
    assert _keys(wrapped) == ["pre/kernel", "inner_fc/kernel", "post/kernel"]
    inner = next(layer for layer in wrapped.layers if isinstance(layer, keras.Model))
    assert any(isinstance(layer, MaskedWrapper) for layer in inner.layers)
    np.testing.assert_array_equal(wrapped(x).numpy(), model(x).numpy())


def test_wrap_nested_model_with_nothing_to_mask_inside():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4,)), L.BatchNormalization(name="inner_bn")], name="inner")
    inputs = keras.Input((4,))
    outputs = L.Dense(3, name="post")(inner(inputs))
    wrapped = ks.wrap(keras.Model(inputs, outputs))
    assert _keys(wrapped) == ["post/kernel"]


def test_wrap_nested_model_whose_only_dense_is_excluded():
    wrapped = ks.wrap(_nested(), exclude=["inner_fc"])
    assert _keys(wrapped) == ["pre/kernel", "post/kernel"]


def test_wrap_is_idempotent(mlp):
    once = ks.wrap(mlp(seed=0))
    masks = {k: np.arange(v.size).reshape(v.shape) % 2 == 0 for k, v in ks.get_masks(once).items()}
    ks.set_masks(once, masks)
    twice = ks.wrap(once)
    assert _keys(twice) == _keys(once)
    for key, value in ks.get_masks(twice).items():
        np.testing.assert_array_equal(value, masks[key])


@pytest.mark.parametrize("exclude", [["hidden_0", "logits"], ("hidden_0", "logits"),
                                     lambda layer: layer.name != "hidden_1"])
def test_wrap_exclude(mlp, exclude):
    wrapped = ks.wrap(mlp(seed=0), exclude=exclude)
    assert _keys(wrapped) == ["hidden_1/kernel"]
    names = {layer.name: type(layer).__name__ for layer in wrapped.layers}
    assert names == {"hidden_0": "Dense", "masked_hidden_1": "MaskedWrapper", "logits": "Dense"}


def test_wrap_exclude_single_name(mlp):
    assert _keys(ks.wrap(mlp(seed=0), exclude="logits")) == ["hidden_0/kernel", "hidden_1/kernel"]


@pytest.mark.parametrize("make_layer, name, input_shape", [
    (lambda: L.Embedding(10, 4, name="emb"), "emb", (3,)),
    (lambda: L.LSTM(4, name="rnn"), "rnn", (3, 2)),
])
def test_wrap_rejects_unsupported_layer_unless_excluded(make_layer, name, input_shape):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(input_shape), make_layer(), L.Flatten(), L.Dense(2, name="head")])
    with pytest.raises(ValueError, match=name):
        ks.wrap(model)
    wrapped = ks.wrap(model, exclude=[name])
    assert _keys(wrapped) == ["head/kernel"]
    wrapped = ks.wrap(model, exclude=lambda layer: layer.name == name)
    assert _keys(wrapped) == ["head/kernel"]


def test_wrap_rejects_model_without_prunable_layer(mlp):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), L.BatchNormalization(), L.Activation("relu")])
    with pytest.raises(ValueError, match="no prunable layer"):
        ks.wrap(model)
    with pytest.raises(ValueError, match="no prunable layer"):
        ks.wrap(mlp(seed=0), exclude=lambda layer: True)


def test_wrap_rejects_unbuilt_and_subclassed_models():
    with pytest.raises(ValueError, match="not built"):
        ks.wrap(keras.Sequential([L.Dense(3)]))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(2)

        def call(self, x):
            return self.fc(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed"):
        ks.wrap(sub)


def test_masked_kernels_rejects_duplicate_names(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    wrapped.layers[1].layer.name = "hidden_0"  # force a clash with the first layer's key
    with pytest.raises(ValueError, match="hidden_0"):
        ks.masked_kernels(wrapped)


# -------------------------------------------------------------- get/set masks
def test_get_set_masks_round_trip(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    rng = np.random.default_rng(0)
    masks = {key: rng.random(value.shape) < 0.3 for key, value in ks.get_masks(wrapped).items()}
    ks.set_masks(wrapped, masks)
    got = ks.get_masks(wrapped)
    assert got.keys() == masks.keys()
    for key in masks:
        assert got[key].dtype == bool
        np.testing.assert_array_equal(got[key], masks[key])


def test_set_masks_zeroes_pruned_weights_only(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    before = {k.key: k.kernel.numpy().copy() for k in ks.masked_kernels(wrapped)}
    mask = np.zeros((8, 16), bool)
    mask[::2, 1::3] = True
    ks.set_masks(wrapped, {"hidden_0/kernel": mask})
    kernels = {k.key: k.kernel.numpy() for k in ks.masked_kernels(wrapped)}
    np.testing.assert_array_equal(kernels["hidden_0/kernel"][mask], before["hidden_0/kernel"][mask])
    assert np.all(kernels["hidden_0/kernel"][~mask] == 0.0)
    assert np.all(before["hidden_0/kernel"] != 0.0)
    # Kernels not named keep their mask and values.
    np.testing.assert_array_equal(kernels["logits/kernel"], before["logits/kernel"])
    assert ks.get_masks(wrapped)["logits/kernel"].all()


def test_set_masks_accepts_integer_arrays(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    ks.set_masks(wrapped, {"logits/kernel": np.eye(12, 4, dtype=np.int32)})
    np.testing.assert_array_equal(ks.get_masks(wrapped)["logits/kernel"], np.eye(12, 4, dtype=bool))


def test_set_masks_unknown_key_raises(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    with pytest.raises(ValueError, match="hidden_9/kernel"):
        ks.set_masks(wrapped, {"hidden_9/kernel": np.ones((8, 16), bool)})


def test_set_masks_wrong_shape_raises_naming_layer(mlp):
    wrapped = ks.wrap(mlp(seed=0))
    with pytest.raises(ValueError, match="hidden_1/kernel.*\\(16, 11\\)"):
        ks.set_masks(wrapped, {"hidden_1/kernel": np.ones((16, 11), bool)})
    # Nothing was changed by the failed call.
    assert all(m.all() for m in ks.get_masks(wrapped).values())


def test_sparsity_and_report_exact(mlp):
    wrapped = ks.wrap(mlp(seed=0))  # kernels 8x16=128, 16x12=192, 12x4=48: 368 weights
    m0 = np.zeros((8, 16), bool)
    m0.flat[:32] = True  # 32 active of 128
    m1 = np.ones((16, 12), bool)  # 192 of 192
    m2 = np.zeros((12, 4), bool)
    m2[0, 0] = True  # 1 of 48
    ks.set_masks(wrapped, {"hidden_0/kernel": m0, "hidden_1/kernel": m1, "logits/kernel": m2})
    assert ks.sparsity(wrapped) == pytest.approx(1.0 - (32 + 192 + 1) / 368, abs=1e-12)
    assert ks.sparsity_report(wrapped) == {
        "hidden_0/kernel": {"shape": [8, 16], "size": 128, "active": 32, "sparsity": pytest.approx(0.75)},
        "hidden_1/kernel": {"shape": [16, 12], "size": 192, "active": 192, "sparsity": 0.0},
        "logits/kernel": {"shape": [12, 4], "size": 48, "active": 1, "sparsity": pytest.approx(47 / 48)},
    }


def test_sparsity_of_fresh_wrap_is_zero(mlp):
    assert ks.sparsity(ks.wrap(mlp(seed=0))) == 0.0


# ------------------------------------------------------------- strip / export
def _sparse_functional():
    model = ks.wrap(_functional(seed=2))
    rng = np.random.default_rng(1)
    ks.set_masks(model, {key: rng.random(m.shape) < 0.4 for key, m in ks.get_masks(model).items()})
    # Non-trivial BN statistics, so a dropped moving_mean would show.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=bn.moving_variance.shape).astype("float32"))
    return model


def _assert_plain(model):
    for layer in model.layers:
        assert not isinstance(layer, MaskedWrapper)
        if isinstance(layer, keras.Model):
            _assert_plain(layer)
    assert not any(v.dtype == "bool" for v in model.weights)
    assert not any("mask" in v.name for v in model.weights)


def test_strip_gives_plain_model_with_exact_zeros():
    model = _sparse_functional()
    x = _x((6, 6, 2), n=7)
    masks = ks.get_masks(model)
    plain = ks.strip(model)
    _assert_plain(plain)
    assert [type(layer).__name__ for layer in plain.layers] == [
        "InputLayer", "Conv2D", "BatchNormalization", "Flatten", "Dense", "Dropout", "Dense"]
    for name, key in [("conv", "conv/kernel"), ("fc", "fc/kernel"), ("out", "out/kernel")]:
        kernel = plain.get_layer(name).kernel.numpy()
        assert np.all(kernel[~masks[key]] == 0.0)
        assert np.array_equal(np.signbit(kernel[~masks[key]]), np.zeros((~masks[key]).sum(), bool))  # +0.0
        assert np.all(kernel[masks[key]] != 0.0)
    np.testing.assert_array_equal(plain(x, training=False).numpy(), model(x, training=False).numpy())
    # The stripped model owns copies: changing it leaves the wrapped model alone.
    plain.get_layer("out").kernel.assign(np.ones((5, 2), "float32"))
    assert not np.all(model.get_layer("masked_out").layer.kernel.numpy() == 1.0)


def test_strip_nested_model():
    model = ks.wrap(_nested(seed=3))
    rng = np.random.default_rng(2)
    ks.set_masks(model, {key: rng.random(m.shape) < 0.5 for key, m in ks.get_masks(model).items()})
    x = _x((4,))
    plain = ks.strip(model)
    _assert_plain(plain)
    np.testing.assert_array_equal(plain(x).numpy(), model(x).numpy())


def test_export_saved_model_round_trip(tmp_path):
    model = _sparse_functional()
    x = _x((6, 6, 2), n=4, seed=3)
    expected = model(x, training=False).numpy()
    path = str(tmp_path / "export")
    assert ks.export_saved_model(model, path) == path
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1].keys()
    outputs = signature(**{input_name: tf.constant(x)})
    (result,) = outputs.values()
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The exported kernels are the plain, stripped ones: exact zeros where masked.
    masks = ks.get_masks(model)
    values = {v.shape.as_list().__repr__(): v.numpy() for v in loaded.variables if v.dtype != tf.bool}
    assert not any(v.dtype == tf.bool for v in loaded.variables)
    conv = values[repr([3, 3, 2, 3])]
    assert np.all(conv[~masks["conv/kernel"]] == 0.0) and np.all(conv[masks["conv/kernel"]] != 0.0)

    # Exporting again to the same path replaces the export.
    ks.set_masks(model, {"out/kernel": np.zeros((5, 2), bool)})
    ks.export_saved_model(model, path)
    outputs = tf.saved_model.load(path).signatures["serving_default"](**{input_name: tf.constant(x)})
    (result,) = outputs.values()
    np.testing.assert_allclose(result.numpy(), model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_keras_save_and_load_keeps_masks(tmp_path, mlp):
    wrapped = ks.wrap(mlp(seed=0))
    rng = np.random.default_rng(4)
    masks = {key: rng.random(m.shape) < 0.5 for key, m in ks.get_masks(wrapped).items()}
    ks.set_masks(wrapped, masks)
    wrapped.save(tmp_path / "wrapped.keras")
    loaded = keras.models.load_model(tmp_path / "wrapped.keras")
    for key, mask in ks.get_masks(loaded).items():
        np.testing.assert_array_equal(mask, masks[key])
    x = _x((8,))
    np.testing.assert_array_equal(loaded(x).numpy(), wrapped(x).numpy())
