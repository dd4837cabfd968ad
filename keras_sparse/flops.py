"""Training FLOPs as the RigL paper counts them (Evci et al. 2020, Appendix H).

Forward cost of a masked layer = density × its dense cost. A step with sparse gradients
costs ≈ 3 × forward (forward, input gradient, weight gradient); a step that needs the dense
weight gradient costs 2 × sparse forward + the dense forward cost. Only masked kernels are
counted; totals are reported relative to dense training of the same layers.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np

from keras_sparse.errors import ConfigError
from keras_sparse.layers import MaskedWrapper


def _spatial_positions(shape: Sequence, data_format: str | None) -> int:
    dims = list(shape[1:])
    spatial = dims[1:] if data_format == "channels_first" else dims[:-1]
    return int(np.prod([d or 1 for d in spatial]))


def forward_macs(wrapper: MaskedWrapper, kernel_name: str) -> int:
    """Dense multiply-accumulates of one kernel for one example's forward pass."""
    layer = wrapper.layer
    input_shape = wrapper.input_shape_for_flops
    if input_shape is None:
        raise ConfigError(f"{wrapper.name} has not been built on an input shape; call the model once first.")
    kernel_size = int(np.prod(wrapper.kernel(kernel_name).shape))
    data_format = getattr(layer, "data_format", None)
    if isinstance(layer, keras.layers.EinsumDense):
        inputs, output = layer.equation.split("->")
        kernel_letters = inputs.split(",")[1]
        out_shape = layer.compute_output_shape(input_shape)
        out_elements = int(np.prod([d or 1 for d in out_shape[1:]]))
        kernel_dims = dict(zip(kernel_letters, wrapper.kernel(kernel_name).shape))
        contracted = [kernel_dims[c] for c in kernel_letters if c not in output]
        return out_elements * int(np.prod(contracted))
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)):
        return kernel_size * _spatial_positions(input_shape, data_format)
    out_shape = layer.compute_output_shape(input_shape)
    return kernel_size * _spatial_positions(out_shape, data_format)


def step_cost(forward: Mapping[str, float], densities: Mapping[str, float], dense_gradient: bool) -> float:
    """FLOPs of one training step for one example, given per-kernel dense forward FLOPs."""
    sparse_forward = sum(forward[k] * densities[k] for k in forward)
    if dense_gradient:
        return 2.0 * sparse_forward + sum(forward.values())
    return 3.0 * sparse_forward


def dense_step_cost(forward: Mapping[str, float]) -> float:
    """FLOPs of one dense training step for one example: 3 × dense forward."""
    return 3.0 * sum(forward.values())
