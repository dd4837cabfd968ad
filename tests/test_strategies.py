"""strategies: strategies by name, and the check that a model was built under the strategy."""

import keras
import pytest
import tensorflow as tf

from keras_sparse.errors import ConfigError
from keras_sparse.strategies import check_built_in_scope, make_strategy


def _model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")], name="small")


def test_a_model_built_outside_the_strategy_is_refused_with_the_fix():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inside = _model()
    check_built_in_scope(inside, strategy)
    with pytest.raises(ConfigError, match=r"model 'small' were not created under the strategy: build and wrap the "
                                          r"model inside `with strategy.scope\(\):`"):
        check_built_in_scope(_model(), strategy)


def test_strategies_by_name():
    assert make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ConfigError, match="Unknown training.strategy 'nccl'"):
        make_strategy("nccl")
