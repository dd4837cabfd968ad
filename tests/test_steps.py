"""The compiled step programs: dispatch by signature, losses by name or function."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sparse import steps
from keras_sparse.tuning import XlaChoice


def test_programs_are_called_through_one_concrete_function_per_signature():
    add = tf.function(lambda x, y: x + tf.cast(y["b"], x.dtype))
    dispatch = steps._SignatureDispatch(add)
    first = dispatch(tf.ones([2]), {"b": tf.ones([2], tf.int32)})
    again = dispatch(tf.zeros([2]), {"b": tf.ones([2], tf.int32)})
    dispatch(tf.ones([3]), {"b": tf.ones([3], tf.int32)})  # another shape: a second signature
    assert add.experimental_get_tracing_count() == 2 and len(dispatch._concrete) == 2
    np.testing.assert_array_equal(first, [2.0, 2.0])
    np.testing.assert_array_equal(again, [1.0, 1.0])
    # Arguments that are not tensors go through the tf.function itself.
    np.testing.assert_array_equal(dispatch(np.ones(2, np.float32), {"b": np.zeros(2, np.int32)}), [1.0, 1.0])
    assert len(dispatch._concrete) == 2


def test_int_constants_are_made_once_per_value():
    constants = steps.IntConstants()
    start, count = constants(3, 5)
    assert (int(start), int(count)) == (3, 5) and start.dtype == tf.int32
    again = constants(5, 3)  # the same values, either way round: the same tensors
    assert again[0] is count and again[1] is start
    assert constants(4)[0] is not start


@pytest.mark.parametrize("loss", ["binary_crossentropy", keras.losses.binary_crossentropy])
def test_a_loss_by_name_or_function_matches_the_labels_rank_to_the_predictions(loss):
    y = tf.constant([1.0, 0.0, 1.0])  # (batch,) labels
    p = tf.constant([[0.9], [0.2], [0.6]])  # (batch, 1) probabilities
    expected = keras.losses.BinaryCrossentropy()(y[:, None], p)
    np.testing.assert_allclose(steps.as_loss(loss)(y, p), expected, rtol=1e-6)
    given = keras.losses.BinaryCrossentropy()
    assert steps.as_loss(given) is given


@pytest.mark.parametrize("jit", [True, False])
def test_the_programs_record_the_first_step_whose_loss_is_not_finite(jit):
    import keras_sparse as ks

    model = ks.wrap(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="fc")]), quiet=True)
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.0), ks.algorithms.Dense())
    optimizer.build(model.trainable_variables)
    programs = steps.StepPrograms(model, optimizer, steps.as_loss("mse"), ks.masked_weights(model),
                                  tf.distribute.get_strategy(), XlaChoice(jit))
    good, bad = tf.ones([3, 2]), tf.constant([[1.0, np.nan]] * 3)
    y = tf.zeros([3, 1])
    programs.train[jit](good, y)  # step 0
    assert programs.first_nonfinite_step() is None
    # Steps 1-4 in one staged call: step 3 is the first bad one, step 4 is bad too.
    xs = tf.stack([good, good, bad, bad])
    programs.staged[jit](xs, tf.stack([y] * 4), tf.constant(0), tf.constant(4))
    assert programs.first_nonfinite_step() == 3
    programs.train[jit](bad, y)
    assert programs.first_nonfinite_step() == 3  # the first one stays


@pytest.mark.parametrize("jit", [True, False])
def test_a_call_runs_the_steps_of_a_stack_from_start_with_the_update_on_the_last(jit):
    import keras_sparse as ks

    model = ks.wrap(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False, name="fc")]),
                    quiet=True)
    model.get_layer("fc").kernel.assign([[1.0], [2.0]])
    optimizer = ks.SparseOptimizer(keras.optimizers.SGD(0.0), ks.algorithms.Dense(), total_steps=10)
    optimizer.build(model.trainable_variables)
    programs = steps.StepPrograms(model, optimizer, steps.as_loss("mse"), ks.masked_weights(model),
                                  tf.distribute.get_strategy(), XlaChoice(jit))
    # Four batches of one example; with the kernel [1, 2] and labels 0 their losses are 1, 4, 9, 4.
    xs = tf.constant([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]], [[2.0, 0.0]]])
    ys = tf.zeros([4, 1, 1])
    losses, counts = programs.call(xs, ys, 1, 3, update=True)  # batches 1, 2 plain, batch 3 the update
    assert losses.numpy().tolist() == [4.0, 9.0, 4.0] and counts.numpy().tolist() == [2]
    losses, counts = programs.call(xs, ys, 0, 2, update=False)
    assert losses.numpy().tolist() == [1.0, 4.0] and counts is None
    loss, counts = programs.call(xs[2], ys[2], None, 1, update=False)  # one batch, not a stack
    assert float(loss) == 9.0 and counts is None
    assert int(optimizer.iterations.numpy()) == 6
