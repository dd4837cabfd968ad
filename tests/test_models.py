"""Tests for keras_sparse.models: every registered model builds, runs and wraps."""

import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import models

SHAPES = {"mnist1d_cnn": (40, 1), "mlp": (8, 8, 1), "lenet_300_100": (28, 28, 1), "lenet5": (28, 28, 1),
          "resnet": (32, 32, 3)}


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
    shapes = {key: value["shape"] for key, value in ks.sparsity_report(model).items()}
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
