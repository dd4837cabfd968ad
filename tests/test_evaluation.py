"""Evaluation with any Keras metrics, exact on hand-made predictions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sparse import evaluation


class Fixed(keras.Model):
    """Returns the predictions stored for each input index (x holds the indices)."""

    def __init__(self, predictions):
        super().__init__()
        self.table = tf.constant(predictions, tf.float32)

    def call(self, x, training=False):
        return tf.gather(self.table, tf.cast(tf.reshape(x, [-1]), tf.int32))


def _data(y, batch=3):
    return tf.data.Dataset.from_tensor_slices((np.arange(len(y), dtype=np.float32), y)).batch(batch)


def test_integer_labels_accuracy_loss_and_other_metrics():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    y = np.array([0, 1, 0, 1, 1])  # argmax right for examples 0, 1 and 4
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    result = evaluation.Evaluator(Fixed(logits), loss, ["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(
        k=2, name="top2")], jit_compile=False).evaluate(_data(y))
    assert set(result) == {"loss", "accuracy", "top2"}
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["top2"] == pytest.approx(5 / 5)  # labels tied at the top-2 boundary count as in it (in_top_k)
    assert result["loss"] == pytest.approx(float(loss(y, logits)), rel=1e-6)  # a ragged last batch weighs its size


@pytest.mark.parametrize("labels, predictions, kind", [
    (np.eye(3)[[0, 2]], np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]), keras.metrics.CategoricalAccuracy),
    (np.array([1.0, 0.0]), np.array([[0.8], [0.9]]), keras.metrics.BinaryAccuracy),
    (np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]), keras.metrics.SparseCategoricalAccuracy),
])
def test_accuracy_follows_the_labels_as_compile_resolves_it(labels, predictions, kind):
    metric = evaluation.resolve_metric("accuracy", tf.TensorShape(labels.shape), tf.TensorShape(predictions.shape))
    assert isinstance(metric, kind) and metric.name == "accuracy"


def test_the_evaluation_pipeline_runs_without_autotuning_and_is_reused():
    evaluator = evaluation.Evaluator(Fixed(np.zeros((4, 2))), keras.losses.MeanSquaredError(), jit_compile=False)
    data = _data(np.zeros((4, 2)))
    assert evaluator.batches(data).options().autotune.enabled is False
    assert evaluator.batches(data) is evaluator.batches(data)
    assert evaluator.evaluate(data) == {"loss": 0.0}
