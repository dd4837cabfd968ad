"""Tests for keras_sparse.data: offline sets, tfds path (mocked), clear errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_sparse import data


def test_mnist1d_shapes_and_split():
    d = data.load(batch_size=100, name="mnist1d")
    assert (d.input_shape, d.num_classes, d.train_size, d.steps_per_epoch) == ((40, 1), 10, 4000, 40)
    x, y = next(iter(d.train_epoch(0)))
    assert x.shape == (100, 40, 1) and y.dtype.name == "int64"
    assert sum(int(b[0].shape[0]) for b in d.test) == 1000


def test_mnist1d_leaves_numpy_global_rng_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    data.load(batch_size=50, name="mnist1d")
    assert np.random.rand() == expected


def test_digits_offline():
    d = data.load(batch_size=32, name="digits")
    assert d.input_shape == (8, 8, 1) and d.num_classes == 10
    x, _ = next(iter(d.train_epoch(0)))
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0


def test_training_order_is_seeded():
    def labels(seed, epoch):
        return np.concatenate([y.numpy() for _, y in data.load(batch_size=500, seed=seed, name="mnist1d").train_epoch(epoch)])

    first = labels(3, 0)
    assert np.array_equal(first, labels(3, 0))  # an epoch's order depends on (seed, epoch) alone
    assert not np.array_equal(first, labels(4, 0))
    second = labels(3, 1)
    assert not np.array_equal(first, second)  # reshuffled every epoch
    assert np.array_equal(np.sort(first), np.sort(second))  # the same examples


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=64):
        d = data.load(batch_size=16, name=name, augment=name == "cifar10")
        x, y = next(iter(d.train_epoch(0)))
    assert d.input_shape == shape and d.num_classes == 10
    assert tuple(x.shape) == (16, *shape) and x.dtype.name == "float32"
    assert float(np.max(x)) <= 1.0


def test_tfds_set_not_on_disk_names_set_and_place(tmp_path):
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(batch_size=16, name="mnist", data_dir=str(tmp_path), download=False)
    message = str(error.value).splitlines()[0]
    assert "'mnist'" in message and str(tmp_path) in message


def test_unknown_data_set():
    with pytest.raises(data.DataUnavailableError, match="Unknown data set 'no_such_set'"):
        data.load(batch_size=16, name="no_such_set")


def test_batch_larger_than_data_set():
    with pytest.raises(ValueError, match="larger than the 4000 training examples"):
        data.load(batch_size=5000, name="mnist1d")
