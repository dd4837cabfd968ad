"""Data sets as batched ``tf.data`` pipelines.

Offline, with no network: ``mnist1d`` (Greydanus 2020, generated procedurally from its seed:
4000 train / 1000 test sequences of length 40, 10 classes) and ``digits`` (scikit-learn's
bundled 8×8 digits). Any other name is loaded with tensorflow-datasets (``mnist``,
``fashion_mnist``, ``cifar10``, …) from ``data_dir`` or tfds's default directory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import gin
import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError


class DataUnavailableError(ConfigError):
    """A data set is unknown, or not on disk and cannot be downloaded."""


@dataclasses.dataclass
class Data:
    """A data set ready for training: batched pipelines and what a model needs to know."""

    name: str
    train_epoch: Callable[[int], tf.data.Dataset]
    test: tf.data.Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    steps_per_epoch: int


def _mnist1d(seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    state = np.random.get_state()  # make_dataset reseeds NumPy's global generator
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    return (data["x"][..., None].astype("float32"), data["y"].astype("int64"),
            data["x_test"][..., None].astype("float32"), data["y_test"].astype("int64"))


def _digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(12345).permutation(len(y))  # a fixed split, whatever the run's seed
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


OFFLINE = {"mnist1d": _mnist1d, "digits": _digits}


def _tfds(name: str, data_dir: str | None, download: bool):
    import tensorflow_datasets as tfds

    where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises DatasetNotFoundError for an unknown name
        raise DataUnavailableError(
            f"Unknown data set {name!r}: use one of {sorted(OFFLINE)} or a tensorflow-datasets name ({error.__class__.__name__})."
        ) from None
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(f"Data set {name!r} is not prepared in {where}: download it there (tfds build {name}) or set data.download = True.")
        try:
            builder.download_and_prepare()
        except Exception as error:
            raise DataUnavailableError(
                f"Data set {name!r} is not in {where} and could not be downloaded ({type(error).__name__}): "
                f"copy it there, set data.data_dir, or use the offline data set 'mnist1d'."
            ) from None
    info = builder.info
    train = builder.as_dataset(split="train", as_supervised=True)
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


@gin.configurable("data", denylist=["batch_size", "seed"])
def load(batch_size: int, seed: int = 0, name: str = "mnist1d", data_dir: str | None = None,
         download: bool = True, augment: bool = False, eval_batch_size: int = 1000) -> Data:
    """Loads data set ``name`` as shuffled training batches and test batches.

    Training batches drop the last partial batch (a fixed shape compiles once under XLA);
    ``train_epoch(e)`` gives epoch ``e``'s batches, shuffled from ``(seed, e)`` alone.
    ``augment`` adds random crops and flips (CIFAR), also drawn from ``(seed, e)``.

    Raises:
        DataUnavailableError: for an unknown name or a tfds data set that is neither on disk
            nor downloadable; the message names the data set and where it was looked for.
    """
    if batch_size < 1:
        raise ConfigError(f"training.batch_size={batch_size} must be a positive number.")
    if name in OFFLINE:
        x, y, x_test, y_test = OFFLINE[name](seed)
        train = tf.data.Dataset.from_tensor_slices((x, y))
        test = tf.data.Dataset.from_tensor_slices((x_test, y_test))
        input_shape, num_classes, train_size = x.shape[1:], int(y.max()) + 1, len(y)
    else:
        train, test, input_shape, num_classes, train_size = _tfds(name, data_dir, download)
        train, test = train.map(_standardize_images), test.map(_standardize_images)
        if train_size <= 60000:
            train = train.cache()
        test = test.cache()
    if batch_size > train_size:
        raise ConfigError(f"training.batch_size={batch_size} is larger than the {train_size} training examples of {name!r}.")
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
    return Data(name, train_epoch, test, tuple(int(d) for d in input_shape), num_classes, train_size,
                train_size // batch_size)
