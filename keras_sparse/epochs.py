"""The data side of the training loop: what ``Trainer.fit`` accepts, and each epoch's batches as
the loop takes them (resumed mid-epoch, distributed over replicas, or stacked K at a time)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import tensorflow as tf

from keras_sparse.errors import ConfigError


def as_dataset(data: Any, batch_size: int) -> Any:
    """``data`` as batches: a tf.data data set or a function of the epoch as it is, NumPy arrays
    ``(x, y)`` batched by ``batch_size`` in order (as ``model.fit(x, y, shuffle=False)``)."""
    if data is None or callable(data) or isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(int(batch_size))
    raise ConfigError(f"Trainer takes a tf.data.Dataset, a function epoch -> Dataset, or arrays (x, y); got "
                      f"{type(data).__name__}.")


def cardinality(data: tf.data.Dataset) -> int:
    """The number of batches in ``data``; a one-line error when it is unknown or infinite."""
    n = int(data.cardinality())
    if n <= 0:
        raise ConfigError("The training data has unknown or infinite length: pass steps_per_epoch to fit().")
    return n


def without_autotune(data: tf.data.Dataset) -> tf.data.Dataset:
    """``data`` with tf.data's autotuning turned off, unless ``data``'s options set it.

    Every epoch ends by destroying its iterator, and destroying an iterator over an autotuned
    pipeline can wait for the autotuner to wake: on a small machine, epochs then ended at fixed
    times after their iterator was made, whatever the work (BENCHMARKS.md, "epoch end").
    ``AUTOTUNE`` parallelism then runs one call per core, and ``prefetch(AUTOTUNE)`` sizes its
    buffer with its own simpler tuner. Set ``options.autotune.enabled = True`` to keep autotuning.
    """
    if data.options().autotune.enabled is not None:
        return data
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def stacked(batches: Iterable, size: int) -> Iterator:
    """Batches stacked ``size`` at a time on a new leading axis, in order, for batches whose
    shapes vary: a batch of another shape (a short last batch) starts a new stack, so stacks
    can be shorter."""
    def stack(chunk: list):
        return tf.nest.map_structure(lambda *parts: tf.stack(parts), *chunk)

    def shapes(batch) -> list:
        return [tuple(t.shape) for t in tf.nest.flatten(batch)]

    chunk: list = []
    for batch in batches:
        if chunk and (len(chunk) == size or shapes(batch) != shapes(chunk[0])):
            yield stack(chunk)
            chunk = []
        chunk.append(batch)
    if chunk:
        yield stack(chunk)


class EpochIterator:
    """Each epoch's batches for a loop that runs ``steps_per_execution`` steps a call under
    ``strategy``.

    The pipeline is reused while the source is the same object: TensorFlow optimizes a tf.data
    pipeline the first time it is iterated and keeps the result on the data set object, so a
    pipeline built afresh each epoch would pay for that every epoch.
    """

    def __init__(self, strategy: tf.distribute.Strategy, steps_per_execution: int = 1):
        self.strategy = strategy
        self.steps_per_execution = steps_per_execution
        self._pipeline: tuple | None = None  # (source, (done, steps), batches, stack_in_python)

    def batches(self, source: tf.data.Dataset, done: int, steps_per_epoch: int) -> Iterable:
        """The rest of one epoch of ``source`` (its first ``done`` steps were run before): one
        batch per item, or a stack of up to ``steps_per_execution`` batches per item."""
        key = (done, steps_per_epoch)
        if self._pipeline is None or self._pipeline[0] is not source or self._pipeline[1] != key:
            batches = without_autotune(source.skip(done).take(steps_per_epoch - done))
            stack_in_python = False
            if self.strategy.num_replicas_in_sync > 1:
                batches = self.strategy.experimental_distribute_dataset(batches)
            elif self.steps_per_execution > 1:
                if all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(batches.element_spec)):
                    batches = batches.batch(self.steps_per_execution)  # every batch alike: tf.data stacks them
                else:
                    stack_in_python = True  # a short last batch must start a stack of its own
            self._pipeline = (source, key, batches, stack_in_python)
        _, _, batches, stack_in_python = self._pipeline
        return stacked(batches, self.steps_per_execution) if stack_in_python else batches
