"""Data sets as batched ``tf.data`` pipelines.

Offline, with no network: ``mnist1d`` (Greydanus 2020, generated procedurally from its seed:
4000 train / 1000 test sequences of length 40, 10 classes) and ``digits`` (scikit-learn's
bundled 8×8 digits). Any other name is loaded with tensorflow-datasets (``mnist``,
``fashion_mnist``, ``cifar10``, …) from ``data_dir`` or tfds's default directory; a set that is
not there is downloaded, and without a network that fails within seconds with one line that says
where to put it.

Three splits: ``validation`` is a share of the *training* examples (``validation_fraction``)
held out for per-epoch metrics, ``test`` is the data set's test split, evaluated once at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
import urllib.request
from typing import Callable

import gin
import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError
from keras_sparse.registry import Registry


class DataUnavailableError(ConfigError):
    """A data set is unknown, or not on disk and cannot be downloaded."""


# The held-out validation examples are drawn with this fixed seed, not the run's: runs with
# different seeds (and every cell of a study) validate on the same examples.
VALIDATION_SPLIT_SEED = 20_240_601


@dataclasses.dataclass
class Data:
    """A data set ready for training: batched pipelines and what a model needs to know.

    ``train_size`` and ``steps_per_epoch`` count the training examples left after the
    validation examples are held out; ``validation`` is None when none are.
    """

    name: str
    train_epoch: Callable[[int], tf.data.Dataset]
    test: tf.data.Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    steps_per_epoch: int
    validation: tf.data.Dataset | None = None
    validation_size: int = 0


OFFLINE: Registry[Callable[[int], tuple[np.ndarray, ...]]] = Registry("offline data set")


def _make_mnist1d(args) -> dict:
    """``mnist1d``'s ``make_dataset(args)``, leaving NumPy's global generator as it was (the
    package reseeds it)."""
    from mnist1d.data import make_dataset

    state = np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        np.random.set_state(state)


@OFFLINE.register("mnist1d")
def _mnist1d(seed: int) -> tuple[np.ndarray, ...]:
    return _standard_mnist1d()


@functools.lru_cache(maxsize=1)
def _standard_mnist1d() -> tuple[np.ndarray, ...]:
    """The standard MNIST-1D split (the package's default arguments, whatever the run's seed),
    generated once a process: studies and tests load it many times. Read-only, so that no caller
    can change what the next one gets."""
    from mnist1d.data import get_dataset_args

    data = _make_mnist1d(get_dataset_args())
    arrays = (data["x"][..., None].astype("float32"), data["y"].astype("int64"),
              data["x_test"][..., None].astype("float32"), data["y_test"].astype("int64"))
    for array in arrays:
        array.flags.writeable = False
    return arrays


#: The seed of the examples ``mnist1d_large`` adds (the standard set's is the package's 42).
LARGE_MNIST1D_SEED = 43


@gin.configurable("mnist1d_large")
def large_mnist1d_size(train_examples: int = 28_800) -> int:
    """How many training examples ``data.name = "mnist1d_large"`` has (gin:
    ``mnist1d_large.train_examples``). The default makes an epoch about as long as the paper's
    CIFAR-10 epoch (~390 steps at batch 128): 28,800 examples, 10% of them held out for
    validation, are 405 steps of batch 64 (Van Gelder et al. 2020 judge RigL's structure
    "after one epoch")."""
    standard = len(_standard_mnist1d()[1])
    if not isinstance(train_examples, int) or train_examples < standard or (train_examples - standard) % 10:
        raise ConfigError(f"mnist1d_large.train_examples={train_examples!r}: use a whole number of at least "
                          f"{standard} (the standard training examples) that exceeds it by a multiple of 10 "
                          "(the generator makes the same number of every digit).")
    return train_examples


@OFFLINE.register("mnist1d_large")
def _mnist1d_large(seed: int) -> tuple[np.ndarray, ...]:
    return _larger_mnist1d(large_mnist1d_size())


@functools.lru_cache(maxsize=2)
def _larger_mnist1d(train_examples: int) -> tuple[np.ndarray, ...]:
    """MNIST-1D with ``train_examples`` training examples and the standard test split: the
    standard training examples first, then new ones that the ``mnist1d`` package generates with
    its standard arguments and seed ``LARGE_MNIST1D_SEED``, as many of every digit. The package
    standardises each set it makes by that set's own mean and standard deviation: both sets
    are drawn from the same generator, so they agree up to sampling error."""
    from mnist1d.data import get_dataset_args

    x, y, x_test, y_test = _standard_mnist1d()
    extra = train_examples - len(y)
    if extra:
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = extra, 1.0, LARGE_MNIST1D_SEED
        more = _make_mnist1d(args)
        x = np.concatenate([x, more["x"][..., None].astype("float32")])
        y = np.concatenate([y, more["y"].astype("int64")])
    for array in (x, y):
        array.flags.writeable = False
    return x, y, x_test, y_test


@OFFLINE.register("digits")
def _digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(12345).permutation(len(y))  # a fixed split, whatever the run's seed
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]




# Where tensorflow-datasets keeps its own files and many of its image sets: if this host cannot be
# reached, the machine has no network (or no DNS) and a download cannot work.
PROBE_HOST = "storage.googleapis.com"
PROBE_TIMEOUT_S = 3.0


def _no_network(host: str = PROBE_HOST, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``host`` cannot be reached (DNS and a TCP connection to port 443, ``timeout`` in all),
    or None if it can, or if a proxy is configured (then the proxy resolves names).

    tfds retries a failed download 10 times with exponential backoff (minutes, offline), and a
    stalled DNS lookup has no timeout of its own: the probe runs in a daemon thread and is
    abandoned after ``timeout``.
    """
    if any(key in ("http", "https", "all") for key in urllib.request.getproxies()):
        return None
    outcome: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"cannot reach {host}: {error.strerror or error}")

    thread = threading.Thread(target=probe, daemon=True, name="keras_sparse-network-probe")
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer from {host} within {timeout:g} s"


def _variant_folder_filter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Variant folder")


def _data_home(data_dir: str | None) -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _not_downloadable(name: str, where: str, reason: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"Data set {name!r} is not in {where} and cannot be downloaded ({reason}): on a machine with internet "
        f"run `tfds build {name} --data_dir=DIR` and copy DIR/{name} into {where} (or set data.data_dir), "
        "or use an offline data set, data.name = 'mnist1d' or 'digits'.")


def _tfds(name: str, data_dir: str | None, download: bool):
    # tfds warns "Variant folder .../mnist/3.0.1 has no dataset_info.json" for a set that is not
    # prepared (even when that folder does not exist): our own error says so in one line.
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_variant_folder_filter)
    try:
        return _tfds_splits(name, data_dir, download)
    finally:
        absl_logger.removeFilter(_variant_folder_filter)


def _tfds_splits(name: str, data_dir: str | None, download: bool):
    """The train and test splits of tfds set ``name``, prepared in ``data_dir``; never waits on the
    network when there is none (``tfds.builder`` of a community set like ``huggingface:x``, and a
    download, are probed first)."""
    import tensorflow_datasets as tfds

    where = _data_home(data_dir)
    if ":" in name and (reason := _no_network()):  # a community namespace: tfds.builder fetches its index
        raise _not_downloadable(name, where, f"no network, {reason}")
    try:
        # try_gcs=False: read dataset info from data_dir and the tfds package, never from GCS.
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except Exception as error:  # tfds raises DatasetNotFoundError for an unknown name
        raise DataUnavailableError(
            f"Unknown data set {name!r}: use one of {sorted(OFFLINE)} or a tensorflow-datasets name "
            f"({error.__class__.__name__})."
        ) from None
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(f"Data set {name!r} is not prepared in {where}: download it there "
                                       f"(tfds build {name}) or set data.download = True.")
        # tfds.testing.mock_data makes download_and_prepare a no-op: then nothing goes on the network.
        mocked = type(builder).download_and_prepare.__module__.startswith("tensorflow_datasets.testing")
        reason = None if mocked else _no_network()
        if reason:
            raise _not_downloadable(name, where, f"no network, {reason}")
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except Exception as error:
            detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise _not_downloadable(name, where, f"{type(error).__name__}{': ' + detail if detail else ''}") from None
    info = builder.info
    # shuffle_files=False: the examples come in the order tfds stored them (shuffled once, when the
    # set was prepared), the same in every run; the validation split is taken from it.
    train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=False)
    test = builder.as_dataset(split="test", as_supervised=True)
    image_shape = tuple(info.features["image"].shape)
    train_size = int(train.cardinality())
    if train_size < 0:
        train_size = info.splits["train"].num_examples
    return train, test, image_shape, info.features["label"].num_classes, train_size


def _standardize_images(image, label):
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int64)


def _augment_crop_flip(position, example, seed: int):
    image, label = example
    height, width = image.shape[0], image.shape[1]
    # Stateless ops keyed by (epoch seed, position in the epoch): reproducible, and resumable.
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])
    image = tf.image.resize_with_crop_or_pad(image, height + 8, width + 8)
    image = tf.image.stateless_random_crop(image, [height, width, image.shape[-1]], seed=key)
    return tf.image.stateless_random_flip_left_right(image, seed=key + 1), label


def validation_count(total: int, fraction: float) -> int:
    """How many of ``total`` training examples ``fraction`` holds out (at least one if > 0)."""
    return 0 if fraction == 0 else max(1, int(round(fraction * total)))


def _split_arrays(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, ...]:
    """Training and validation arrays: a fixed random share held out (``VALIDATION_SPLIT_SEED``);
    the training examples keep their order."""
    held_out = np.zeros(len(y), dtype=bool)
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(len(y))
    held_out[order[:validation_count(len(y), fraction)]] = True
    return x[~held_out], y[~held_out], x[held_out], y[held_out]


def _check_sizes(name: str, batch_size: int, fraction: float, total: int) -> int:
    """The number of training examples left; a ConfigError if that is not one full batch."""
    if batch_size > total:
        raise ConfigError(f"training.batch_size={batch_size} is larger than the {total} training examples of {name!r}.")
    left = total - validation_count(total, fraction)
    if left < batch_size:
        raise ConfigError(f"data.validation_fraction={fraction:g} leaves {left} of the {total} training examples of "
                          f"{name!r}, less than one batch (training.batch_size={batch_size}): lower either.")
    return left


@gin.configurable("data", denylist=["batch_size", "seed"])
def load(batch_size: int, seed: int = 0, name: str = "mnist1d", data_dir: str | None = None,
         download: bool = True, augment: bool = False, eval_batch_size: int = 1000,
         validation_fraction: float = 0.1) -> Data:
    """Loads data set ``name`` as shuffled training batches, validation batches and test batches.

    Training batches drop the last partial batch (a fixed shape compiles once under XLA);
    ``train_epoch(e)`` gives epoch ``e``'s batches, shuffled from ``(seed, e)`` alone.
    ``augment`` adds random crops and flips (CIFAR), also drawn from ``(seed, e)``.

    ``validation_fraction`` of the training examples (0.1: 10%) are held out as ``validation``,
    batched like ``test`` (by ``eval_batch_size``). The split is fixed, whatever the run's
    seed: runs with different seeds validate on the same examples. Offline sets hold out a
    random share drawn with ``VALIDATION_SPLIT_SEED``; tfds sets the last examples of their
    train split in stored order (tfds shuffles the examples once, when it prepares a set).
    ``validation_fraction = 0`` trains on every training example (``validation`` is None).

    Raises:
        DataUnavailableError: for an unknown name or a tfds data set that is neither on disk
            nor downloadable; the message names the data set and where it was looked for.
        ConfigError: for a ``validation_fraction`` outside [0, 1), or one that leaves less
            than one training batch.
    """
    if batch_size < 1:
        raise ConfigError(f"training.batch_size={batch_size} must be a positive number.")
    if not isinstance(validation_fraction, (int, float)) or not 0 <= validation_fraction < 1:
        raise ConfigError(f"data.validation_fraction={validation_fraction!r} must be at least 0 and below 1: "
                          "e.g. 0.1 holds out 10% of the training examples, 0 none.")
    if name in OFFLINE:
        x, y, x_test, y_test = OFFLINE.get(name)(seed)
        total = len(y)
        train_size = _check_sizes(name, batch_size, validation_fraction, total)
        input_shape, num_classes = x.shape[1:], int(y.max()) + 1
        validation = None
        if validation_fraction:
            x, y, x_val, y_val = _split_arrays(x, y, validation_fraction)
            validation = tf.data.Dataset.from_tensor_slices((x_val, y_val))
        train = tf.data.Dataset.from_tensor_slices((x, y))
        test = tf.data.Dataset.from_tensor_slices((x_test, y_test))
    else:
        train, test, input_shape, num_classes, total = _tfds(name, data_dir, download)
        train_size = _check_sizes(name, batch_size, validation_fraction, total)
        validation = train.skip(train_size).map(_standardize_images).cache() if validation_fraction else None
        train = train.take(train_size).map(_standardize_images)
        test = test.map(_standardize_images)
        if train_size <= 60000:
            train = train.cache()
        test = test.cache()

    def train_epoch(epoch: int) -> tf.data.Dataset:
        # The order of epoch e depends on (seed, e) only, so a run resumed at epoch e sees
        # exactly the batches an uninterrupted run would.
        epoch_seed = (seed * 1_000_003 + epoch) % (2**31 - 1)
        batches = train.shuffle(min(train_size, 60000), seed=epoch_seed, reshuffle_each_iteration=False)
        if augment:
            batches = batches.enumerate().map(functools.partial(_augment_crop_flip, seed=epoch_seed),
                                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return batches.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    test = test.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
    if validation is not None:
        validation = validation.batch(eval_batch_size).prefetch(tf.data.AUTOTUNE)
    return Data(name, train_epoch, test, tuple(int(d) for d in input_shape), num_classes, train_size,
                train_size // batch_size, validation, total - train_size)
