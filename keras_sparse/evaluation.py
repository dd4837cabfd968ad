"""Evaluation for the training loop: the mean loss and any Keras metrics over a data set."""

from __future__ import annotations

from typing import Any, Sequence

import keras
import tensorflow as tf

from keras_sparse.epochs import without_autotune


def resolve_metric(metric: Any, y_shape: tf.TensorShape, prediction_shape: tf.TensorShape) -> keras.metrics.Metric:
    """A Keras metric from what ``model.compile(metrics=...)`` takes: a ``Metric`` as it is; the
    names ``"accuracy"``/``"acc"`` as the accuracy that fits the labels (one-hot, integer class
    ids, or a single sigmoid output), as ``compile`` resolves them; any other name or function
    through ``keras.metrics.get``."""
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if metric in ("accuracy", "acc"):
        if prediction_shape[-1] == 1:
            return keras.metrics.BinaryAccuracy(name=metric)
        if y_shape.rank == prediction_shape.rank and y_shape[-1] == prediction_shape[-1]:
            return keras.metrics.CategoricalAccuracy(name=metric)
        return keras.metrics.SparseCategoricalAccuracy(name=metric)
    found = keras.metrics.get(metric)
    if isinstance(found, keras.metrics.Metric):
        return found
    return keras.metrics.MeanMetricWrapper(found, name=metric if isinstance(metric, str) else found.__name__)


class Evaluator:
    """Mean loss and ``metrics`` of ``model`` over a data set, in one compiled program.

    Under a strategy each replica predicts its share of a batch; the predictions are gathered
    and the metrics updated once, so every Keras metric works as on one device.
    """

    def __init__(self, model: keras.Model, loss: keras.losses.Loss, metrics: Sequence = (),
                 strategy: tf.distribute.Strategy | None = None, jit_compile: bool = True):
        self.model = model
        self.loss = loss
        self.strategy = strategy or tf.distribute.get_strategy()
        self._specs = list(metrics or ())
        self._metrics: list[keras.metrics.Metric] | None = None  # resolved from the first batch's shapes
        self._loss_mean: keras.metrics.Mean | None = None
        replicas = self.strategy.num_replicas_in_sync
        self._step = tf.function(self._distributed_step if replicas > 1 else self._step_fn,
                                 jit_compile=jit_compile and replicas == 1)
        self._pipeline: tuple | None = None  # reused while the data set is the same object (see EpochIterator)

    def _build(self, y, predictions) -> None:
        self._metrics = [resolve_metric(m, y.shape, predictions.shape) for m in self._specs]
        self._loss_mean = keras.metrics.Mean(name="loss")

    def _update(self, y, predictions) -> None:
        batch = tf.cast(tf.shape(predictions)[0], tf.float32)
        self._loss_mean.update_state(tf.reduce_mean(self.loss(y, predictions)), sample_weight=batch)
        for metric in self._metrics:
            metric.update_state(y, predictions)

    def _step_fn(self, x, y):
        self._update(y, self.model(x, training=False))

    def _distributed_step(self, x, y):
        predictions = self.strategy.run(lambda x: self.model(x, training=False), args=(x,))
        self._update(self.strategy.gather(y, axis=0), self.strategy.gather(predictions, axis=0))

    def batches(self, data: tf.data.Dataset) -> tf.data.Dataset:
        """``data`` as ``evaluate`` iterates it: without autotuning (``epochs.without_autotune``),
        the same pipeline object while ``data`` is."""
        if self._pipeline is None or self._pipeline[0] is not data:
            self._pipeline = (data, without_autotune(data))
        return self._pipeline[1]

    def evaluate(self, data: tf.data.Dataset) -> dict[str, float]:
        """``{"loss": …, <metric name>: …}`` over all of ``data`` (batches of ``(x, y)``)."""
        batches = self.batches(data)
        if self._metrics is None:
            # One forward pass on a first batch: the predictions' shape picks the accuracy kind.
            for x, y in batches.take(1):
                self._build(y, self.model(x, training=False))
        if self.strategy.num_replicas_in_sync > 1:
            batches = self.strategy.experimental_distribute_dataset(batches)
        for metric in [self._loss_mean, *self._metrics]:
            metric.reset_state()
        for x, y in batches:
            self._step(x, y)
        return {metric.name: float(metric.result()) for metric in [self._loss_mean, *self._metrics]}
