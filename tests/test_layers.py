"""MaskedWrapper: every supported layer type, masks as variables, no mask in the forward pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse.layers import (
    PRUNABLE_KERNELS,
    MaskedWrapper,
    holds_unsupported_kernel,
    prunable_kernel_names,
)

L = keras.layers

# (layer factory, input shape without batch, names of the kernels that must be masked)
LAYER_CASES = {
    "Dense": (lambda: L.Dense(4, name="layer"), (6,), ("kernel",)),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c", name="layer"), (6,),
                    ("kernel",)),
    "Conv1D": (lambda: L.Conv1D(3, 2, name="layer"), (8, 2), ("kernel",)),
    "Conv2D": (lambda: L.Conv2D(3, 2, name="layer"), (6, 6, 2), ("kernel",)),
    "Conv3D": (lambda: L.Conv3D(2, 2, name="layer"), (4, 4, 4, 2), ("kernel",)),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(3, 2, name="layer"), (5, 2), ("kernel",)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(3, 2, name="layer"), (4, 4, 2), ("kernel",)),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(2, 2, name="layer"), (3, 3, 3, 2), ("kernel",)),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(2, depth_multiplier=2, name="layer"), (8, 2), ("kernel",)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(2, depth_multiplier=2, name="layer"), (6, 6, 2), ("kernel",)),
    "SeparableConv1D": (lambda: L.SeparableConv1D(3, 2, name="layer"), (8, 2),
                        ("depthwise_kernel", "pointwise_kernel")),
    "SeparableConv2D": (lambda: L.SeparableConv2D(3, 2, name="layer"), (6, 6, 2),
                        ("depthwise_kernel", "pointwise_kernel")),
}


def _model(case: str, seed: int = 0) -> tuple[keras.Model, np.ndarray]:
    make_layer, input_shape, _ = LAYER_CASES[case]
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(input_shape), make_layer()], name="single")
    x = np.random.default_rng(seed).normal(size=(3, *input_shape)).astype("float32")
    return model, x


def _random_masks(model, seed=0):
    rng = np.random.default_rng(seed)
    return {key: rng.random(mask.shape) < 0.5 for key, mask in ks.get_masks(model).items()}


def test_every_listed_layer_type_is_covered():
    assert {cls.__name__ for cls in PRUNABLE_KERNELS} == set(LAYER_CASES)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_wrap_masks_every_kernel_of_each_layer_type(case):
    model, x = _model(case)
    expected_out = model(x).numpy()
    wrapped = ks.wrap(model)

    wrappers = [layer for layer in wrapped.layers if isinstance(layer, MaskedWrapper)]
    assert len(wrappers) == 1
    wrapper = wrappers[0]
    assert wrapper.name == "masked_layer"
    assert type(wrapper.layer).__name__ == case
    _, _, kernel_names = LAYER_CASES[case]
    assert tuple(wrapper.kernel_names) == kernel_names
    kernels = ks.masked_kernels(wrapped)
    assert [k.key for k in kernels] == [f"layer/{name}" for name in kernel_names]
    for k, name in zip(kernels, kernel_names):
        assert k.kernel is getattr(wrapper.layer, name)
        assert tuple(k.mask.shape) == tuple(k.kernel.shape)
        assert k.mask.dtype == "bool"
        assert not k.mask.trainable
        assert np.all(k.mask.numpy())
    # The bias is not masked: the only mask variables are the kernels'.
    assert sorted(v.name for v in wrapper.non_trainable_weights) == sorted(f"{n}_mask" for n in kernel_names)
    # Wrapping changes nothing in the computation and reuses the layer's own weights.
    np.testing.assert_array_equal(wrapped(x).numpy(), expected_out)
    assert wrapper.layer is model.layers[0]


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_masked_layer_computes_with_zeroed_kernel(case):
    model, x = _model(case, seed=1)
    wrapped = ks.wrap(model)
    masks = _random_masks(wrapped, seed=2)
    originals = {k.key: k.kernel.numpy().copy() for k in ks.masked_kernels(wrapped)}
    ks.set_masks(wrapped, masks)
    for k in ks.masked_kernels(wrapped):
        expected = np.where(masks[k.key], originals[k.key], 0.0)
        np.testing.assert_array_equal(k.kernel.numpy(), expected)
    # Reference: a fresh plain layer holding the zeroed kernels computes the same outputs.
    make_layer, input_shape, _ = LAYER_CASES[case]
    reference = keras.Sequential([keras.Input(input_shape), make_layer()])
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(wrapped(x).numpy(), reference(x).numpy(), rtol=1e-6, atol=1e-6)
    assert any(not m.all() for m in masks.values())


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_gradient_is_dense_at_masked_positions(case):
    """The forward pass does not multiply by the mask, so d loss / d kernel is the dense
    gradient at inactive positions too (what RigL's grow criterion needs)."""
    model, x = _model(case, seed=3)
    wrapped = ks.wrap(model)
    kernels = ks.masked_kernels(wrapped)
    # One kernel sparse at a time (a fully masked depthwise channel would make the
    # pointwise gradient of that channel genuinely zero).
    originals = [k.kernel.numpy().copy() for k in kernels]
    for k in kernels:
        for other, value in zip(kernels, originals):
            other.kernel.assign(value)
        mask = _random_masks(wrapped, seed=4)[k.key]
        ks.set_masks(wrapped, {k.key: mask})
        with tf.GradientTape() as tape:
            out = wrapped(x)
            # Linear in the outputs, so d loss / d output is nonzero everywhere.
            loss = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), seed=[1, 2]))
        gradient = tape.gradient(loss, k.kernel).numpy()
        assert (~mask).any()
        assert np.all(gradient[~mask] != 0.0), k.key
        ks.set_masks(wrapped, {k.key: np.ones_like(mask)})


def test_unsupported_layer_cannot_be_wrapped():
    with pytest.raises(ValueError, match="Embedding"):
        MaskedWrapper(L.Embedding(10, 4, name="emb"))
    with pytest.raises(ValueError, match="LSTM"):
        MaskedWrapper(L.LSTM(3, name="rnn"))


def test_prunable_kernel_names_prefers_the_most_specific_class():
    assert prunable_kernel_names(L.SeparableConv2D(2, 2)) == ("depthwise_kernel", "pointwise_kernel")
    assert prunable_kernel_names(L.Conv2DTranspose(2, 2)) == ("kernel",)
    assert prunable_kernel_names(L.BatchNormalization()) is None
    assert prunable_kernel_names(L.Embedding(5, 2)) is None


@pytest.mark.parametrize("layer, input_shape, expected", [
    (lambda: L.Embedding(10, 4), (3,), True),
    (lambda: L.LSTM(3), (4, 2), True),
    (lambda: L.MultiHeadAttention(2, 2), None, True),
    (lambda: L.PReLU(), (4,), True),
    (lambda: L.BatchNormalization(), (4,), False),
    (lambda: L.LayerNormalization(), (4,), False),
    (lambda: L.Dense(3), (4,), False),
    (lambda: L.Dropout(0.5), (4,), False),
])
def test_holds_unsupported_kernel(layer, input_shape, expected):
    layer = layer()
    if input_shape is None:  # MultiHeadAttention takes query and value
        q = keras.Input((3, 4))
        layer(q, q)
    else:
        layer(keras.Input(input_shape))
    assert holds_unsupported_kernel(layer) is expected


def test_holds_unsupported_kernel_false_for_an_already_wrapped_layer():
    wrapper = MaskedWrapper(L.Dense(3))
    wrapper.build((None, 4))
    assert not holds_unsupported_kernel(wrapper)


def test_mask_key_and_kernel_lookup():
    wrapper = MaskedWrapper(L.Dense(3, name="fc"))
    wrapper.build((None, 4))
    assert wrapper.name == "masked_fc"
    assert wrapper.mask_key("kernel") == "fc/kernel"
    assert wrapper.kernel("kernel") is wrapper.layer.kernel
    assert wrapper.input_shape_for_flops == (None, 4)
    with pytest.raises(KeyError):
        wrapper.kernel("nope")


def test_masks_are_saved_by_tf_train_checkpoint(tmp_path, mlp):
    """Trainer resumes through tf.train.Checkpoint: the masks must be in it."""
    wrapped = ks.wrap(mlp(seed=0))
    masks = _random_masks(wrapped, seed=5)
    ks.set_masks(wrapped, masks)
    path = tf.train.Checkpoint(model=wrapped).save(str(tmp_path / "ckpt"))

    fresh = ks.wrap(mlp(seed=1))
    assert all(m.all() for m in ks.get_masks(fresh).values())
    tf.train.Checkpoint(model=fresh).restore(path).assert_existing_objects_matched()
    restored = ks.get_masks(fresh)
    assert restored.keys() == masks.keys()
    for key in masks:
        np.testing.assert_array_equal(restored[key], masks[key])
    for a, b in zip(wrapped.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
