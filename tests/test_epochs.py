"""The epoch iterator: resumed epochs, stacking K batches a call, pipeline reuse, no autotuning."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_arrays

from keras_sparse import epochs
from keras_sparse.errors import ConfigError


def _batches(n=32, batch=8, options: tf.data.Options | None = None, drop_remainder=True) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices(make_arrays(n, (8,), 4)).batch(batch, drop_remainder=drop_remainder)
    return data if options is None else data.with_options(options)


def test_an_epoch_pipeline_is_built_once_per_data_set():
    iterator = epochs.EpochIterator(tf.distribute.get_strategy(), steps_per_execution=2)
    source = _batches()  # fixed-shape batches, so tf.data does the stacking
    first = iterator.batches(source, 0, 4)
    assert iterator.batches(source, 0, 4) is first  # the next epoch reuses it
    assert iterator.batches(source, 1, 4) is not first  # a resumed epoch skips its done steps
    assert [y.shape[0] for _, y in iterator.batches(source, 1, 4)] == [2, 1]  # 3 steps left, 2 a call
    assert iterator.batches(_batches(), 0, 4) is not first  # another data set


def test_batches_of_varying_shape_are_stacked_in_order_and_a_short_one_starts_a_stack():
    iterator = epochs.EpochIterator(tf.distribute.get_strategy(), steps_per_execution=2)
    source = _batches(28, drop_remainder=False)  # 8, 8, 8, 4
    stacks = list(iterator.batches(source, 0, 4))
    assert [tuple(y.shape) for _, y in stacks] == [(2, 8), (1, 8), (1, 4)]
    expected = np.concatenate([y.numpy() for _, y in source])
    np.testing.assert_array_equal(np.concatenate([y.numpy().reshape(-1) for _, y in stacks]), expected)


@pytest.mark.parametrize("setting", [None, True, False])
def test_without_autotune_turns_autotuning_off_unless_the_data_set_chose(setting):
    options = None
    if setting is not None:
        options = tf.data.Options()
        options.autotune.enabled = setting
    data = _batches(options=options)
    result = epochs.without_autotune(data)
    assert result.options().autotune.enabled is (False if setting is None else setting)
    assert [y.numpy().tolist() for _, y in result] == [y.numpy().tolist() for _, y in data]  # same batches


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_epoch_pipelines_run_without_autotuning_unless_chosen(steps_per_execution):
    iterator = epochs.EpochIterator(tf.distribute.get_strategy(), steps_per_execution)
    assert iterator.batches(_batches(), 0, 4).options().autotune.enabled is False
    keep = tf.data.Options()
    keep.autotune.enabled = True  # the user's choice stands
    assert iterator.batches(_batches(options=keep), 0, 4).options().autotune.enabled is True


def test_as_dataset_and_cardinality():
    x, y = make_arrays(10, (3,), 2)
    batches = epochs.as_dataset((x, y), batch_size=4)
    assert [b[1].shape[0] for b in batches] == [4, 4, 2] and epochs.cardinality(batches) == 3
    with pytest.raises(ConfigError, match="arrays"):
        epochs.as_dataset("x.npy", 4)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        epochs.cardinality(batches.repeat())
