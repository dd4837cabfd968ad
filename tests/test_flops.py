"""Forward multiply-accumulates per masked weight (``forward_macs(model, weights)``) and the RigL
paper's step-cost formulas."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import flops
from keras_sparse.errors import ConfigError

L = keras.layers


def macs_by_key(model: keras.Model) -> dict[str, int]:
    weights = ks.masked_weights(model)
    result = flops.forward_macs(model, weights)
    assert isinstance(result, list) and all(type(m) is int for m in result)
    return dict(zip((w.key for w in weights), result))


def one_layer_macs(make_layer, input_shape, **wrap_options) -> dict[str, int]:
    """forward_macs of every masked weight of a one-layer Sequential model "m" on ``input_shape``,
    keyed by the path below the layer (``"kernel"``, ``"lstm_cell/recurrent_kernel"``, …)."""
    model = ks.wrap(keras.Sequential([keras.Input(input_shape), make_layer()], name="m"), quiet=True, **wrap_options)
    return {key.split("/", 1)[1]: value for key, value in macs_by_key(model).items()}


@pytest.mark.parametrize("make_layer, input_shape, expected", [
    # Dense 6->4: 24 MACs; on 5 positions (batch, T, d): 120; on (batch, 3, 5, d): 15 positions.
    (lambda: L.Dense(4, name="l"), (6,), {"kernel": 24}),
    (lambda: L.Dense(4, name="l"), (5, 6), {"kernel": 120}),
    (lambda: L.Dense(4, name="l"), (3, 5, 6), {"kernel": 360}),
    # Conv1D 2->3, width 2 on length 8 (valid): 7 outputs x 12 kernel weights; stride 2 'same': 4 x 12.
    (lambda: L.Conv1D(3, 2, name="l"), (8, 2), {"kernel": 84}),
    (lambda: L.Conv1D(3, 2, strides=2, padding="same", name="l"), (8, 2), {"kernel": 48}),
    # Conv2D 2->3, 2x2 on 6x6: 25 positions x 24; 'same': 36 x 24; stride 2 'same': 9 x 24; stride 2 valid: 9 x 24.
    (lambda: L.Conv2D(3, 2, name="l"), (6, 6, 2), {"kernel": 600}),
    (lambda: L.Conv2D(3, 2, padding="same", name="l"), (6, 6, 2), {"kernel": 864}),
    (lambda: L.Conv2D(3, 2, strides=2, padding="same", name="l"), (6, 6, 2), {"kernel": 216}),
    (lambda: L.Conv2D(3, 3, strides=2, name="l"), (7, 7, 2), {"kernel": 9 * 54}),
    (lambda: L.Conv2D(3, 2, data_format="channels_first", name="l"), (2, 6, 6), {"kernel": 600}),
    # Conv3D 1->2, 2x2x2 on 4x4x4: 27 positions x 16.
    (lambda: L.Conv3D(2, 2, name="l"), (4, 4, 4, 1), {"kernel": 432}),
    # Depthwise 2x2 on 6x6x2 (multiplier 1): 5x5x2 outputs x 4 MACs each; multiplier 2: twice that.
    (lambda: L.DepthwiseConv2D(2, name="l"), (6, 6, 2), {"kernel": 200}),
    (lambda: L.DepthwiseConv2D(2, depth_multiplier=2, name="l"), (6, 6, 2), {"kernel": 400}),
    (lambda: L.DepthwiseConv1D(3, name="l"), (8, 2), {"kernel": 36}),
    # Separable: depthwise 25 x 8, pointwise 25 positions x (2 in x 3 out).
    (lambda: L.SeparableConv2D(3, 2, name="l"), (6, 6, 2), {"depthwise_kernel": 200, "pointwise_kernel": 150}),
    (lambda: L.SeparableConv1D(3, 2, name="l"), (8, 2), {"depthwise_kernel": 28, "pointwise_kernel": 42}),
    # Transposed conv: each of the 4x4 input positions meets all 2x2x3x2 kernel weights, whatever the stride.
    (lambda: L.Conv2DTranspose(3, 2, name="l"), (4, 4, 2), {"kernel": 384}),
    (lambda: L.Conv2DTranspose(3, 2, strides=2, name="l"), (4, 4, 2), {"kernel": 384}),
    (lambda: L.Conv1DTranspose(3, 2, name="l"), (4, 2), {"kernel": 48}),
    # EinsumDense: output elements x contracted kernel dims.
    (lambda: L.EinsumDense("ab,bc->ac", output_shape=4, name="l"), (6,), {"kernel": 24}),
    (lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 4), name="l"), (5, 6), {"kernel": 120}),
    (lambda: L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 3), name="l"), (5, 6), {"kernel": 180}),
    # RNN cells: kernel and recurrent kernel once per time step. LSTM(4) on 7 steps of 3 features:
    # kernel 3 x 16 = 48, recurrent 4 x 16 = 64; GRU has 3 gates, SimpleRNN one.
    (lambda: L.LSTM(4, name="l"), (7, 3), {"lstm_cell/kernel": 336, "lstm_cell/recurrent_kernel": 448}),
    (lambda: L.LSTM(4, return_sequences=True, name="l"), (7, 3),
     {"lstm_cell/kernel": 336, "lstm_cell/recurrent_kernel": 448}),
    (lambda: L.GRU(4, name="l"), (7, 3), {"gru_cell/kernel": 252, "gru_cell/recurrent_kernel": 336}),
    (lambda: L.SimpleRNN(4, name="l"), (7, 3), {"simple_rnn_cell/kernel": 84, "simple_rnn_cell/recurrent_kernel": 112}),
    (lambda: L.Bidirectional(L.LSTM(4, name="lstm"), name="l"), (7, 3),
     {"forward_lstm/lstm_cell/kernel": 336, "forward_lstm/lstm_cell/recurrent_kernel": 448,
      "backward_lstm/lstm_cell/kernel": 336, "backward_lstm/lstm_cell/recurrent_kernel": 448}),
])
def test_forward_macs(make_layer, input_shape, expected):
    assert one_layer_macs(make_layer, input_shape) == expected


def test_forward_macs_of_an_embedding_is_one_row_a_token():
    # 5 tokens, rows of 4: 20 copies.
    assert one_layer_macs(lambda: L.Embedding(10, 4, name="l"), (5,), embeddings=True) == {"embeddings": 20}


def test_forward_macs_under_time_distributed_counts_every_step():
    # Dense 3->4 applied at each of 7 steps.
    assert one_layer_macs(lambda: L.TimeDistributed(L.Dense(4, name="d"), name="l"), (7, 3)) == {"d/kernel": 84}


def build_attention(key_length: int | None = None) -> keras.Model:
    """MultiHeadAttention (2 heads of 4) on queries (5, 8), attending to itself or to (3, 6)."""
    keras.utils.set_random_seed(0)
    query = keras.Input((5, 8))
    if key_length is None:
        return keras.Model(query, L.MultiHeadAttention(2, 4, name="mha")(query, query), name="att")
    value = keras.Input((key_length, 6))
    return keras.Model([query, value], L.MultiHeadAttention(2, 4, name="mha")(query, value), name="att")


@pytest.mark.parametrize("key_length, expected", [
    # Self-attention on 5 tokens of 8: query/key/value kernels 8 x (2 x 4) applied to 5 tokens = 320 each;
    # the output kernel (2 x 4) x 8 on 5 tokens = 320.
    (None, {"query": 320, "key": 320, "value": 320, "attention_output": 320}),
    # Cross-attention to 3 tokens of 6: key/value kernels 6 x 8 on 3 tokens = 144.
    (3, {"query": 320, "key": 144, "value": 144, "attention_output": 320}),
])
def test_forward_macs_of_einsum_dense_in_multi_head_attention(key_length, expected):
    model = ks.wrap(build_attention(key_length), quiet=True)
    assert macs_by_key(model) == {f"mha/{name}/kernel": value for name, value in expected.items()}


def test_forward_macs_follows_the_weights_given():
    model = ks.wrap(keras.Sequential([keras.Input((5, 6)), L.Dense(4, name="a"), L.Flatten(), L.Dense(2, name="b")],
                                     name="m"))
    a, b = ks.masked_weights(model)
    assert flops.forward_macs(model, [b, a]) == [40, 120]  # b: 20 x 2 once; a: 6 x 4 on 5 positions
    assert flops.forward_macs(model, [b]) == [40]
    assert flops.forward_macs(model, []) == []


def test_forward_macs_of_a_nested_and_a_subclassed_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4, 6)), L.Conv1D(3, 2, name="conv")], name="inner")
    inputs = keras.Input((4, 6))
    nested = ks.wrap(keras.Model(inputs, L.Dense(2, name="head")(inner(inputs)), name="outer"))
    # conv: 3 positions x 2x6x3 = 108; head: 3 positions x 3x2 = 18.
    assert macs_by_key(nested) == {"inner/conv/kernel": 108, "head/kernel": 18}

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.fc = L.Dense(4, name="fc")

        def call(self, x):
            return self.fc(x)

    sub = Sub()
    sub(np.zeros((2, 3, 5), "float32"))
    assert macs_by_key(ks.wrap(sub)) == {"fc/kernel": 60}  # 5x4 on 3 positions


def test_forward_macs_needs_layers_built_on_an_input_shape():
    class Preset(L.Layer):
        """Creates its weight up front, so it is never built on an input shape."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.w = self.add_weight(shape=(3, 3), name="w")
            self.built = True

        def call(self, x):
            return keras.ops.matmul(x, self.w)

    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = ks.wrap(keras.Model(inputs, L.Dense(2, name="head")(Preset(name="preset")(inputs))), include="preset/w",
                    quiet=True)
    with pytest.raises(ConfigError, match=r"^Layer 'preset' has not been built on an input shape: call the model "
                                          r"once first\.$"):
        flops.forward_macs(model, ks.masked_weights(model))


# ---------------------------------------------------------------- step cost
FORWARD = {"a": 100.0, "b": 50.0}
DENSITIES = {"a": 0.1, "b": 0.5}


def test_step_cost_sparse_gradient():
    # 3 x (0.1*100 + 0.5*50) = 105
    assert flops.step_cost(FORWARD, DENSITIES, dense_gradient=False) == pytest.approx(105.0)


def test_step_cost_dense_gradient():
    # 2 x 35 (sparse forward and input gradient) + 150 (dense weight gradient)
    assert flops.step_cost(FORWARD, DENSITIES, dense_gradient=True) == pytest.approx(220.0)


def test_dense_step_cost_and_consistency():
    assert flops.dense_step_cost(FORWARD) == 450.0
    ones = {"a": 1.0, "b": 1.0}
    assert flops.step_cost(FORWARD, ones, dense_gradient=False) == flops.dense_step_cost(FORWARD)
    assert flops.step_cost(FORWARD, ones, dense_gradient=True) == flops.dense_step_cost(FORWARD)


def test_step_cost_from_forward_macs():
    """The two put together: a 50%-dense Dense 6->4 on 5 positions (120 MACs) and an empty one."""
    model = ks.wrap(keras.Sequential([keras.Input((5, 6)), L.Dense(4, name="a"), L.Dense(2, name="b")], name="m"))
    ks.set_masks(model, {"a/kernel": np.arange(24).reshape(6, 4) % 2 == 0, "b/kernel": np.zeros((4, 2), bool)})
    weights = ks.masked_weights(model)
    forward = dict(zip((w.key for w in weights), map(float, flops.forward_macs(model, weights))))
    assert forward == {"a/kernel": 120.0, "b/kernel": 40.0}
    densities = {w.key: float(w.mask.numpy().mean()) for w in weights}
    assert flops.step_cost(forward, densities, dense_gradient=False) == 180.0  # 3 x 60
    assert flops.step_cost(forward, densities, dense_gradient=True) == 280.0  # 2 x 60 + 160
    assert flops.dense_step_cost(forward) == 480.0
