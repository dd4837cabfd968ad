"""Forward multiply-accumulates per layer type and the RigL paper's step-cost formulas."""

import keras
import pytest

import keras_sparse as ks
from keras_sparse import flops
from keras_sparse.layers import MaskedWrapper

L = keras.layers


def _macs(layer, input_shape):
    """forward_macs of every kernel of ``layer`` wrapped in a one-layer model on ``input_shape``."""
    model = ks.wrap(keras.Sequential([keras.Input(input_shape), layer]))
    (wrapper,) = [lyr for lyr in model.layers if isinstance(lyr, MaskedWrapper)]
    return {name: flops.forward_macs(wrapper, name) for name in wrapper.kernel_names}


@pytest.mark.parametrize("make_layer, input_shape, expected", [
    # Dense 6->4: 24 MACs; on 5 positions: 120.
    (lambda: L.Dense(4), (6,), {"kernel": 24}),
    (lambda: L.Dense(4), (5, 6), {"kernel": 120}),
    # Conv1D 2->3, width 2 on length 8 (valid): 7 outputs x 12 kernel weights.
    (lambda: L.Conv1D(3, 2), (8, 2), {"kernel": 84}),
    # Conv2D 2->3, 2x2 on 6x6: 25 positions x 24; stride 2 'same': 9 x 24.
    (lambda: L.Conv2D(3, 2), (6, 6, 2), {"kernel": 600}),
    (lambda: L.Conv2D(3, 2, strides=2, padding="same"), (6, 6, 2), {"kernel": 216}),
    (lambda: L.Conv2D(3, 2, data_format="channels_first"), (2, 6, 6), {"kernel": 600}),
    # Depthwise 2x2 on 6x6x2 (multiplier 1): 5x5x2 outputs x 4 MACs each.
    (lambda: L.DepthwiseConv2D(2), (6, 6, 2), {"kernel": 200}),
    # Separable: depthwise 25 x 8, pointwise 25 positions x (2 in x 3 out).
    (lambda: L.SeparableConv2D(3, 2), (6, 6, 2), {"depthwise_kernel": 200, "pointwise_kernel": 150}),
    # Transposed conv: each of the 4x4 input positions meets all 2x2x3x2 kernel weights.
    (lambda: L.Conv2DTranspose(3, 2), (4, 4, 2), {"kernel": 384}),
    (lambda: L.Conv2DTranspose(3, 2, strides=2), (4, 4, 2), {"kernel": 384}),
    # EinsumDense: output elements x contracted kernel dims.
    (lambda: L.EinsumDense("ab,bc->ac", output_shape=4), (6,), {"kernel": 24}),
    (lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 4)), (5, 6), {"kernel": 120}),
    (lambda: L.EinsumDense("abc,cde->abde", output_shape=(5, 2, 3)), (5, 6), {"kernel": 180}),
])
def test_forward_macs(make_layer, input_shape, expected):
    assert _macs(make_layer(), input_shape) == expected


def test_forward_macs_needs_a_built_wrapper():
    wrapper = MaskedWrapper(L.Dense(3))
    with pytest.raises(ValueError, match="built"):
        flops.forward_macs(wrapper, "kernel")


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
