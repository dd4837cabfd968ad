"""Tests for keras_sparse.data: offline sets, tfds path (mocked), clear errors."""

import configparser
import os
import socket
import time

import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_sparse import data
from keras_sparse.errors import ConfigError


def test_mnist1d_shapes_and_split():
    d = data.load(batch_size=100, name="mnist1d", validation_fraction=0)
    assert (d.input_shape, d.num_classes, d.train_size, d.steps_per_epoch) == ((40, 1), 10, 4000, 40)
    assert d.validation is None and d.validation_size == 0
    x, y = next(iter(d.train_epoch(0)))
    assert x.shape == (100, 40, 1) and y.dtype.name == "int64"
    assert sum(int(b[0].shape[0]) for b in d.test) == 1000
    d = data.load(batch_size=100, name="mnist1d")  # by default 10% of the training examples validate
    assert (d.train_size, d.validation_size, d.steps_per_epoch) == (3600, 400, 36)
    assert [int(x.shape[0]) for x, _ in d.validation] == [400]


def test_mnist1d_large_adds_new_training_examples_and_keeps_the_standard_test_split():
    gin.clear_config()
    gin.bind_parameter("mnist1d_large.train_examples", 4100)
    try:
        d = data.load(batch_size=50, name="mnist1d_large", validation_fraction=0)
        x, y, x_test, y_test = data.OFFLINE.get("mnist1d_large")(0)
    finally:
        gin.clear_config()
    assert (d.input_shape, d.num_classes, d.train_size, d.steps_per_epoch) == ((40, 1), 10, 4100, 82)
    standard = data.OFFLINE.get("mnist1d")(0)
    assert np.array_equal(x_test, standard[2]) and np.array_equal(y_test, standard[3])
    assert np.array_equal(x[:4000], standard[0]) and np.array_equal(y[:4000], standard[1])
    assert np.array_equal(np.bincount(y[4000:]), [10] * 10)  # as many new examples of every digit
    seen = {row.tobytes() for row in np.concatenate([standard[0], x_test])}
    assert not any(row.tobytes() in seen for row in x[4000:])  # new examples, none from the test split
    assert abs(float(x[4000:].mean())) < 0.2 and abs(float(x[4000:].std()) - 1.0) < 0.1  # standardised


@pytest.mark.parametrize("size", [3990, 4005, 4100.0])
def test_mnist1d_large_refuses_a_size_it_cannot_make(size):
    with pytest.raises(ConfigError, match=r"^mnist1d_large.train_examples=.*at least 4000"):
        data.large_mnist1d_size(size)


def _examples(dataset):
    return np.concatenate([x.numpy().reshape(len(x), -1) for x, _ in dataset])


def test_validation_split_is_held_out_of_training_and_fixed_across_seeds():
    name, total = "digits", 1437
    d = data.load(batch_size=100, seed=1, name=name)  # default: 10% held out
    held_out = int(round(0.1 * total))
    assert (d.train_size, d.validation_size, d.steps_per_epoch) == (
        total - held_out, held_out, (total - held_out) // 100)
    validation = _examples(d.validation)
    assert len(validation) == held_out
    assert [int(x.shape[0]) for x, _ in d.validation][0] == min(held_out, 1000)  # batched like test
    train = _examples(d.train_epoch(0))
    assert not {row.tobytes() for row in train} & {row.tobytes() for row in validation}  # disjoint
    other_seed = data.load(batch_size=100, seed=7, name=name)
    np.testing.assert_array_equal(_examples(other_seed.validation), validation)  # the same examples
    all_train = data.load(batch_size=100, name=name, validation_fraction=0)
    assert all_train.train_size == total and all_train.validation is None
    quarter = data.load(batch_size=100, name=name, validation_fraction=0.25, eval_batch_size=50)
    assert quarter.validation_size == int(round(0.25 * total))
    assert max(int(x.shape[0]) for x, _ in quarter.validation) == 50


@pytest.mark.parametrize("fraction,message", [
    (-0.1, "validation_fraction=-0.1 must be at least 0 and below 1"),
    (1.0, "validation_fraction=1.0 must be at least 0 and below 1"),
    (0.99, "validation_fraction=0.99 leaves 14 of the 1437 training examples of 'digits', less than one batch"),
])
def test_bad_validation_fraction_is_one_line(fraction, message):
    with pytest.raises(ConfigError, match=message) as error:
        data.load(batch_size=100, name="digits", validation_fraction=fraction)
    assert str(error.value).splitlines()[0].startswith("data.validation_fraction=")  # gin adds a 2nd line


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
        loaded = data.load(batch_size=400, seed=seed, name="mnist1d")
        return np.concatenate([y.numpy() for _, y in loaded.train_epoch(epoch)])

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
        validation = [x for x, _ in d.validation]
    assert d.input_shape == shape and d.num_classes == 10
    assert (d.train_size, d.validation_size, d.steps_per_epoch) == (58, 6, 3)  # 10% of 64 held out
    assert sum(len(v) for v in validation) == 6 and validation[0].dtype.name == "float32"
    assert tuple(x.shape) == (16, *shape) and x.dtype.name == "float32"
    assert float(np.max(x)) <= 1.0


def test_tfds_set_not_on_disk_names_set_and_place(tmp_path):
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(batch_size=16, name="mnist", data_dir=str(tmp_path), download=False)
    message = str(error.value).splitlines()[0]
    assert "'mnist'" in message and str(tmp_path) in message


def test_offline_download_fails_in_seconds_with_one_line(tmp_path, monkeypatch):
    """No network: the probe fails at once and tfds's download (10 retries, 3 min 24 s) never starts."""
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def must_not_download(*args, **kwargs):
        raise AssertionError("download_and_prepare was called without a network")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_download)
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(batch_size=16, name="mnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    message = str(error.value).splitlines()[0]  # gin adds "In call to configurable 'data'" below
    assert "'mnist'" in message and str(tmp_path) in message and "no network" in message
    assert "tfds build mnist" in message and "storage.googleapis.com" in message


def test_stalled_dns_is_abandoned_after_the_timeout(monkeypatch):
    # The stalled lookup then finds no address (an empty list, as getaddrinfo can answer), so the
    # abandoned probe thread ends on the OSError it catches, not on a None it was never given.
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(30) or [])
    for key in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    start = time.monotonic()
    assert "no answer from example.org within 0.2 s" == data._no_network("example.org", timeout=0.2)
    assert time.monotonic() - start < 2


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise ConnectionError("Failed to get url https://example.org/train.gz.\nMore details on a second line")

    monkeypatch.setattr(data, "_no_network", lambda *args, **kwargs: None)  # as if online
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fails)
    with pytest.raises(data.DataUnavailableError) as error:
        data.load(batch_size=16, name="mnist", data_dir=str(tmp_path))
    message = str(error.value).splitlines()[0]
    assert "'mnist'" in message and "More details" not in message and str(tmp_path) in message
    assert "ConnectionError: Failed to get url https://example.org/train.gz." in message


def test_the_install_provides_what_a_tfds_download_imports():
    """tfds imports importlib_resources to prepare a set but declares it only for Python < 3.9: a
    download failed with ModuleNotFoundError even online. setup.cfg installs it."""
    from tensorflow_datasets.core import dataset_builder

    assert dataset_builder.importlib_resources.abc.Traversable  # tfds's own (lazy) import of it
    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
    assert "importlib_resources" in setup["options"]["install_requires"]


def test_unknown_data_set():
    with pytest.raises(data.DataUnavailableError, match="Unknown data set 'no_such_set'"):
        data.load(batch_size=16, name="no_such_set")


def test_batch_larger_than_data_set():
    with pytest.raises(ValueError, match="larger than the 4000 training examples"):
        data.load(batch_size=5000, name="mnist1d")
    with pytest.raises(ValueError, match="leaves 1293 of the 1437 training examples of 'digits'"):
        data.load(batch_size=1300, name="digits")
