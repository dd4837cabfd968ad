"""Tests for keras_sparse.models: every registered model builds, runs and wraps."""

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import models

SHAPES = {"mnist1d_cnn": (40, 1), "mlp": (8, 8, 1), "lenet_300_100": (28, 28, 1), "lenet5": (28, 28, 1),
          "resnet": (32, 32, 3), "mnist1d_transformer": (40, 1)}


def test_every_model_has_an_input_shape():
    assert set(SHAPES) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_builds_runs_and_wraps(name):
    model = models.build(SHAPES[name], 10, name=name)
    x = np.zeros((2, *SHAPES[name]), "float32")
    assert model(x).shape == (2, 10)
    wrapped = ks.wrap(model)
    assert ks.masked_kernels(wrapped)
    assert wrapped(x).shape == (2, 10)


def test_lenet_300_100_layer_sizes():
    model = ks.wrap(models.build((28, 28, 1), 10, name="lenet_300_100"))
    shapes = {key: value["shape"] for key, value in ks.sparsity_report(model).items() if key != "total"}
    assert shapes == {"fc1/kernel": [784, 300], "fc2/kernel": [300, 100], "logits/kernel": [100, 10]}


def test_resnet20_has_19_convs_and_depth_is_checked():
    model = models.build((32, 32, 3), 10, name="resnet", depth=20)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D" and "shortcut" not in layer.name]
    assert len(convs) == 19
    with pytest.raises(ValueError, match="6n\\+2"):
        models.build((32, 32, 3), 10, name="resnet", depth=21)


def test_unknown_model():
    with pytest.raises(ValueError, match="Unknown model 'nope'"):
        models.build((4,), 2, name="nope")


def test_mnist1d_transformer_builds_and_fits():
    model = models.build((40, 1), 10, name="mnist1d_transformer", depth=2)
    assert model.name == "mnist1d_transformer"
    x = np.random.default_rng(0).normal(size=(4, 40, 1)).astype("float32")
    assert model(x[:2]).shape == (2, 10)
    attention = [layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert [layer.name for layer in attention] == ["block1_attention", "block2_attention"]
    assert model.get_layer("patch_embedding").output.shape == (None, 10, 64)  # 10 patches of 4 values
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    history = model.fit(x, np.array([0, 1, 2, 3]), batch_size=2, epochs=1, verbose=0)  # 2 steps
    assert np.isfinite(history.history["loss"][0])


def test_mnist1d_transformer_options_are_checked():
    model = models.build((40, 1), 10, name="mnist1d_transformer", patch_size=8, dim=32, heads=2, depth=3)
    assert sum(isinstance(layer, keras.layers.MultiHeadAttention) for layer in model.layers) == 3
    assert model.get_layer("patches").output.shape == (None, 5, 8)
    with pytest.raises(ValueError, match="patch_size=3"):
        models.build((40, 1), 10, name="mnist1d_transformer", patch_size=3)
    with pytest.raises(ValueError, match="heads=3"):
        models.build((40, 1), 10, name="mnist1d_transformer", heads=3)


def test_mnist1d_transformer_masks_attention_and_feed_forward_kernels():
    model = ks.wrap(models.build((40, 1), 10, name="mnist1d_transformer"), quiet=True)
    keys = [w.key for w in ks.masked_weights(model)]
    for block in (1, 2):
        for name in ("query", "key", "value", "attention_output"):
            assert f"block{block}_attention/{name}/kernel" in keys
        assert f"block{block}_ffn1/kernel" in keys and f"block{block}_ffn2/kernel" in keys
    assert "patch_embedding/kernel" in keys and "logits/kernel" in keys
    assert not any("embeddings" in key or "bias" in key for key in keys)  # position embedding: only on request
    assert ks.sparsity_report(model)["total"]["masked_share_of_parameters"] > 0.9
