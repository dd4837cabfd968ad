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
from keras_sparse.masking import MaskedWeight, all_layers


def _positions(shape: Sequence, data_format: str | None = None) -> int:
    """Positions a kernel is applied at for one example: the product of the shape's dims between
    the batch and the channel axes (1 for a plain vector)."""
    dims = list(shape[1:])
    spatial = dims[1:] if data_format == "channels_first" else dims[:-1]
    return int(np.prod([d or 1 for d in spatial]))


def _input_shape(layer: keras.layers.Layer) -> tuple | None:
    config = layer.get_build_config() or {}
    shape = config.get("input_shape")
    if shape is None and config.get("shapes_dict"):
        shape = next(iter(config["shapes_dict"].values()))
    return tuple(shape) if shape is not None else None


def forward_macs(model: keras.Model, weights: Sequence[MaskedWeight]) -> list[int]:
    """Dense multiply-accumulates of each masked weight in one example's forward pass.

    Read off each layer's build input shape: a kernel costs its size once per position it is
    applied at (per output position for convolutions, per token for Dense and EinsumDense on
    sequences), times the time steps of the RNN or TimeDistributed layer that runs it; an
    embedding table costs one row copy per token. A dimension unknown at build time counts 1.
    """
    repeats = {}  # id(inner layer) -> time steps of the RNN / TimeDistributed layer that runs it
    lengths = {}  # id(sublayer of an attention layer) -> the query length, where its own shape lost it
    for layer in all_layers(model, include_self=False):
        inner = getattr(layer, "cell", None) or (
            layer.layer if isinstance(layer, keras.layers.TimeDistributed) else None)
        if isinstance(inner, keras.layers.Layer) and _input_shape(layer) is not None:
            repeats[id(inner)] = int(_input_shape(layer)[1] or 1)
        if isinstance(layer, keras.layers.MultiHeadAttention) and _input_shape(layer) is not None:
            for sublayer in all_layers(layer, include_self=False):
                lengths[id(sublayer)] = _input_shape(layer)[1]
    return [_weight_macs(w, lengths.get(id(w.layer))) * repeats.get(id(w.layer), 1) for w in weights]


def _weight_macs(weight: MaskedWeight, length: int | None = None) -> int:
    layer = weight.layer
    size = int(np.prod(weight.variable.shape))
    input_shape = _input_shape(layer)
    if input_shape is None:
        raise ConfigError(f"Layer {layer.name!r} has not been built on an input shape: call the model once first.")
    if length is not None and len(input_shape) > 2 and input_shape[1] is None:
        input_shape = (input_shape[0], length, *input_shape[2:])  # MultiHeadAttention's output projection
    data_format = getattr(layer, "data_format", None)
    if isinstance(layer, keras.layers.Embedding):
        return int(np.prod([d or 1 for d in input_shape[1:]])) * int(weight.variable.shape[-1])
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_macs(layer.equation, input_shape, tuple(weight.variable.shape))
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)):
        return size * _positions(input_shape, data_format)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv1D,
                          keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        return size * _positions(layer.compute_output_shape(input_shape), data_format)
    return size * _positions(input_shape)  # Dense on vectors or sequences; other weights used once a position


def _einsum_macs(equation: str, input_shape: Sequence, kernel_shape: Sequence) -> int:
    """Multiply-adds of ``x ⊗ kernel`` for one example: the product of the sizes of every index
    of the equation but the batch one (the input's first dimension)."""
    inputs, _ = equation.split("->")
    x_spec, kernel_spec = inputs.split(",")
    sizes: dict[str, int] = {}
    extra = 1
    if "..." in x_spec:  # the ellipsis stands for the dims its neighbours leave; the batch may be among them
        before, after = x_spec.split("...")
        free = list(input_shape[len(before):len(input_shape) - len(after)])
        extra = int(np.prod([d or 1 for d in (free[1:] if not before else free)]))
        letters = before + after
        dims = list(input_shape[:len(before)]) + list(input_shape[len(input_shape) - len(after):])
        batch = before[:1] or None
    else:
        letters, dims, batch = x_spec, list(input_shape), x_spec[0]
    for letter, dim in zip(letters, dims):
        sizes[letter] = int(dim or 1)
    for letter, dim in zip(kernel_spec, kernel_shape):
        sizes[letter] = int(dim)
    return extra * int(np.prod([size for letter, size in sizes.items() if letter != batch]))


def step_cost(forward: Mapping[str, float], densities: Mapping[str, float], dense_gradient: bool) -> float:
    """FLOPs of one training step for one example, given per-kernel dense forward FLOPs."""
    sparse_forward = sum(forward[k] * densities[k] for k in forward)
    if dense_gradient:
        return 2.0 * sparse_forward + sum(forward.values())
    return 3.0 * sparse_forward


def dense_step_cost(forward: Mapping[str, float]) -> float:
    """FLOPs of one dense training step for one example: 3 × dense forward."""
    return 3.0 * sum(forward.values())
