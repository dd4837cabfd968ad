"""Channel pruning made physical: ``shrink_channels(model)`` rebuilds a model without its dead
output channels, every consumer's inputs shrunk to match.

A masked model with whole output channels pruned (sparsity type ``"channel"``) runs exactly as
fast as the dense one: its kernels keep their zero columns. The rebuilt model has layers with
fewer units / filters, so it does less work in any runtime (SavedModel, TFLite), and computes
what the masked model computes.

A channel whose kernel column is zero still outputs a constant: ``activation(bias)``, then
whatever BatchNormalization, activations and pooling make of it. So a channel is removed only
where that constant can be carried exactly:

- it is constant in every tensor its channel index runs through (branches joined by ``Add``
  share one channel index: a channel goes only if it is dead in every branch);
- every Dense or Conv that reads it gets the constant's contribution added to its bias; a Conv
  with ``padding="same"`` reads zeros at the borders instead of the constant, so its contribution
  varies by position there: it goes into a ``ConstantOffset`` layer after that Conv (a fixed
  tensor added before the Conv's activation). A Conv with ``padding="causal"`` or an input of
  unknown spatial size keeps a channel whose constant is not exactly 0;
- no model output, model input, or layer that mixes channels (LayerNormalization, softmax)
  reads it: those keep all their channels.

Flatten after a conv puts channel ``c`` of position ``p`` at feature ``p * channels + c``
(channels last), so the Dense after it loses every such feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from keras_sparse.errors import ConfigError
from keras_sparse.masking import masked_values

layers = keras.layers

#: Layers that compute each output channel from its own input channel and lose it with it.
PRODUCERS = (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D)
#: Identity at inference.
IDENTITY = (layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D, layers.SpatialDropout3D,
            layers.GaussianDropout, layers.GaussianNoise, layers.AlphaDropout, layers.Identity)
#: Pooling over positions, channel by channel: a constant channel stays the same constant.
POOLING = (layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D, layers.AveragePooling1D,
           layers.AveragePooling2D, layers.AveragePooling3D, layers.GlobalAveragePooling1D,
           layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D, layers.GlobalMaxPooling1D,
           layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D)
#: Elementwise activations (an ``Activation`` that is a softmax mixes channels: see ``_mixes``).
ELEMENTWISE = (layers.Activation, layers.ReLU, layers.LeakyReLU, layers.ELU)
#: Layers that read every channel to compute each output: kept whole, their inputs too.
MIXING = (layers.LayerNormalization, layers.Softmax)
MIXING_ACTIVATIONS = ("softmax", "log_softmax")

FIX = "export the masked model with ks.export_saved_model(model, path) instead (its pruned weights are exact zeros)"


@dataclass
class _Node:
    """One layer call (or a model input) and the tensor it makes."""

    layer: keras.layers.Layer | None
    inputs: list[int]
    rank: int
    features: int  # size of the last axis
    positions: int = 1  # > 1 after Flatten: feature p * channels + c is channel c at position p
    group: int = -1
    constant: np.ndarray = field(default=None, repr=False)  # per feature; NaN where not constant
    is_output: bool = False


class _Groups:
    """Union-find over tensors that share one channel index (joined by per-channel layers and Add)."""

    def __init__(self):
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        self.parent[b] = a
        return a


def shrink_channels(model: keras.Model) -> keras.Model:
    """A plain functional Keras model with ``model``'s dead output channels removed.

    A Dense unit or Conv filter is dead when its kernel column is all zero (what a ``"channel"``
    sparsity mask leaves; on a wrapped model the masks are applied too). The producing layer
    loses the channel, BatchNormalization and other per-channel layers after it lose it, and
    the Dense / Conv layers that read it lose those input rows, with the channel's constant
    output (``activation(bias)`` through the layers between) folded into their bias. The new
    model's outputs equal the original's up to float32 rounding. The module docstring says
    which channels are kept although dead, and why.

    Supported: Sequential and functional models of Dense, Conv1D/2D/3D (``groups=1``,
    channels last), BatchNormalization (last axis), LayerNormalization (kept whole),
    activations, pooling, Flatten, Dropout-like layers and Add. The result has no masks.

    Raises:
        ConfigError: one line naming the first layer that cannot be rebuilt this way, and the fix.
    """
    nodes, outputs = _trace(model)
    kernels = _masked_kernel_values(model)
    groups = _Groups()
    _analyze(nodes, groups, kernels)
    keep = _decide(nodes, groups)
    return _rebuild(model, nodes, outputs, groups, keep, kernels)


# ------------------------------------------------------------------------------ tracing
def _refuse(layer: keras.layers.Layer, why: str) -> ConfigError:
    return ConfigError(f"shrink_channels cannot rebuild layer {layer.name!r} ({type(layer).__name__}): {why}; {FIX}.")


def _trace(model: keras.Model) -> tuple[list[_Node], list[int]]:
    """The model's layer calls in topological order, found through public ``input``/``output``."""
    if not isinstance(model, keras.Model) or not (isinstance(model, keras.Sequential)
                                                   or type(model).__name__ == "Functional"):
        raise ConfigError(f"shrink_channels needs a Sequential or functional model; {type(model).__name__} "
                          f"{getattr(model, 'name', '')!r} is neither (its call is Python code): {FIX}.")
    if not model.built:
        raise ConfigError(f"Model {model.name!r} is not built: give it an Input or call model.build(shape) first.")
    nodes: list[_Node] = []
    where: dict[int, int] = {}
    for tensor in model.inputs:
        where[id(tensor)] = len(nodes)
        nodes.append(_Node(None, [], len(tensor.shape), int(tensor.shape[-1])))
    pending = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    for layer in pending:
        if isinstance(layer, keras.Model):
            raise _refuse(layer, "it is a nested model; build the model flat (its layers called directly)")
    while pending:
        left = []
        for layer in pending:
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            if not all(id(t) in where for t in inputs):
                left.append(layer)
                continue
            out = layer.output
            if isinstance(out, (list, tuple)):
                raise _refuse(layer, "it has several outputs")
            where[id(out)] = len(nodes)
            nodes.append(_Node(layer, [where[id(t)] for t in inputs], len(out.shape), int(out.shape[-1])))
        if len(left) == len(pending):
            raise _refuse(left[0], "its input comes from a call shrink_channels cannot trace (a layer called twice, "
                                   "or a nested model)")
        pending = left
    if any(id(t) not in where for t in model.outputs):
        raise ConfigError(f"shrink_channels cannot trace model {model.name!r}'s outputs (a shared layer?): {FIX}.")
    outputs = [where[id(t)] for t in model.outputs]
    for i in outputs:
        nodes[i].is_output = True
    return nodes, outputs


def _masked_kernel_values(model: keras.Model) -> dict[int, np.ndarray]:
    """Each Dense/Conv kernel's values by id, with its mask applied when the model is wrapped."""
    return {id(layer): masked_values(layer.kernel) for layer in model.layers if type(layer) in PRODUCERS}


# ----------------------------------------------------------------------------- analysis
def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def _mixes(layer) -> bool:
    return isinstance(layer, MIXING) or (type(layer) in ELEMENTWISE and _activation_name(layer) in MIXING_ACTIVATIONS)


def _apply_elementwise(layer, constant: np.ndarray, rank: int) -> np.ndarray:
    """``layer`` (inference) on a tensor holding the constants; NaN (not constant) stays NaN."""
    x = np.nan_to_num(constant).reshape((1,) * (rank - 1) + (-1,)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=False)).reshape(-1)
    return np.where(np.isnan(constant), np.nan, y)


def _batch_norm(layer, constant: np.ndarray) -> np.ndarray:
    """BatchNormalization at inference: (x - mean) / sqrt(var + eps) * gamma + beta."""
    y = (constant - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    if layer.scale:
        y = y * layer.gamma.numpy()
    if layer.center:
        y = y + layer.beta.numpy()
    return y


def _check_supported(layer, node: _Node, nodes: list[_Node]) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _refuse(layer, "its data_format is channels_first; build the model channels_last")
    if type(layer) in PRODUCERS:
        if getattr(layer, "groups", 1) != 1:
            raise _refuse(layer, f"it is a grouped convolution (groups={layer.groups})")
        if nodes[node.inputs[0]].positions > 1 and not isinstance(layer, layers.Dense):
            raise _refuse(layer, "it reads a flattened tensor")
        return
    if isinstance(layer, layers.BatchNormalization):
        if layer.axis not in (-1, node.rank - 1):
            raise _refuse(layer, f"it normalizes axis {layer.axis}, not the channels (last) axis")
        return
    if isinstance(layer, layers.Add) or _mixes(layer) or isinstance(layer, (layers.Flatten, *POOLING, *IDENTITY)):
        return
    if type(layer) in ELEMENTWISE and not layer.weights:
        return
    raise _refuse(layer, "shrink_channels supports Dense, Conv1D/2D/3D, BatchNormalization, LayerNormalization, "
                         "activations, pooling, Flatten, Dropout and Add only")


def _analyze(nodes: list[_Node], groups: _Groups, kernels: dict[int, np.ndarray]) -> None:
    """Gives every tensor its channel group and its per-feature constants (NaN: depends on the input)."""
    for node in nodes:
        layer = node.layer
        if layer is None:
            node.group, node.constant = groups.new(), np.full(node.features, np.nan)
            continue
        _check_supported(layer, node, nodes)
        first = nodes[node.inputs[0]]
        if type(layer) in PRODUCERS:
            node.group = groups.new()
            kernel = kernels[id(layer)]
            dead = ~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
            bias = layer.bias.numpy() if layer.use_bias else np.zeros(node.features, kernel.dtype)
            if _activation_name(layer) in MIXING_ACTIVATIONS:
                node.constant = np.full(node.features, np.nan)
            else:
                value = keras.ops.convert_to_numpy(layer.activation(bias.astype("float32")))
                node.constant = np.where(dead, value, np.nan)
        elif _mixes(layer):
            node.group, node.constant = groups.new(), np.full(node.features, np.nan)
        elif isinstance(layer, layers.Add):
            ins = [nodes[i] for i in node.inputs]
            if len({n.positions for n in ins}) > 1 or len({n.features for n in ins}) > 1:
                raise _refuse(layer, "it adds tensors whose features are laid out differently (one flattened)")
            node.group = ins[0].group
            for other in ins[1:]:
                node.group = groups.union(node.group, other.group)
            node.positions = first.positions
            node.constant = np.sum([n.constant for n in ins], axis=0)  # NaN if any branch is not constant
        elif isinstance(layer, layers.Flatten):
            node.group = first.group
            spatial = int(np.prod(layer.input.shape[1:-1])) if first.rank > 2 else 1
            node.positions = first.positions * spatial
            node.constant = np.tile(first.constant, spatial)
        else:  # per-channel: BatchNormalization, elementwise activations, pooling, identities
            node.group, node.positions = first.group, first.positions
            if isinstance(layer, layers.BatchNormalization):
                node.constant = _batch_norm(layer, first.constant)
            elif type(layer) in ELEMENTWISE:
                node.constant = _apply_elementwise(layer, first.constant, node.rank)
            else:
                node.constant = first.constant.copy()


def _channels(node: _Node) -> int:
    return node.features // node.positions


def _decide(nodes: list[_Node], groups: _Groups) -> dict[int, np.ndarray]:
    """Per channel group (its root): which channels stay."""
    keep: dict[int, np.ndarray] = {}
    for node in nodes:
        g = groups.find(node.group)
        per_channel = node.constant.reshape(node.positions, _channels(node))
        constant = ~np.isnan(per_channel).any(axis=0)
        keep[g] = ~constant if g not in keep else keep[g] | ~constant
        if node.layer is None or node.is_output:
            keep[g][:] = True
    for node in nodes:
        layer = node.layer
        if layer is None:
            continue
        for i in node.inputs:
            source = nodes[i]
            g = groups.find(source.group)
            if _mixes(layer):
                keep[g][:] = True
            elif type(layer) in PRODUCERS and not isinstance(layer, layers.Dense) and (
                    layer.padding == "causal" or (layer.padding == "same" and None in tuple(layer.input.shape[1:]))):
                # The constant's contribution is computed on the input's static shape ("same"
                # padding: ``ConstantOffset``); without one, only a constant of exactly 0 goes.
                nonzero = (source.constant.reshape(source.positions, -1) != 0).any(axis=0)
                keep[g] |= nonzero
    return keep


# ------------------------------------------------------------------------------ rebuild
@keras.saving.register_keras_serializable(package="keras_sparse")
class ConstantOffset(keras.layers.Layer):
    """Adds a fixed tensor of shape ``(positions..., channels)`` to every example.

    ``shrink_channels`` puts one after a Conv with ``padding="same"`` that lost input channels
    holding a nonzero constant: such a channel's contribution is the same at every interior
    position but not at the borders, where the Conv reads padding zeros instead of the constant,
    so a bias cannot carry it.
    """

    def __init__(self, offset=None, shape=None, **kwargs):
        super().__init__(**kwargs)
        shape = tuple(np.shape(offset)) if offset is not None else tuple(shape)
        self.offset = self.add_weight(shape=shape, initializer="zeros", trainable=False, name="offset")
        if offset is not None:
            self.offset.assign(np.asarray(offset, dtype=self.offset.dtype))

    def call(self, inputs):
        return inputs + keras.ops.cast(self.offset, inputs.dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": list(self.offset.shape)}


def _removed_contribution(layer, kernel: np.ndarray, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What the removed input features (``removed``: their constants, 0 elsewhere) add to
    ``layer``'s output before its bias: a per-channel amount to fold into the bias and, for a
    zero-padded Conv whose borders see less of it, the whole per-position map instead (the fold
    is then 0)."""
    per_position = np.tensordot(kernel.astype("float64"), removed.astype("float64"), axes=([kernel.ndim - 2], [0]))
    uniform = per_position.reshape(-1, kernel.shape[-1]).sum(axis=0)
    if isinstance(layer, layers.Dense) or layer.padding == "valid" or not removed.any():
        return uniform, None
    x = np.broadcast_to(removed, (1, *layer.input.shape[1:])).astype("float32")
    contribution = keras.ops.conv(x, kernel.astype("float32"), strides=layer.strides, padding=layer.padding,
                                  dilation_rate=layer.dilation_rate)
    contribution = keras.ops.convert_to_numpy(contribution)[0]
    flat = contribution.reshape(-1, contribution.shape[-1])
    if (flat == flat[0]).all():  # no borders reach it (e.g. a 1x1 kernel): a bias carries it
        return flat[0].astype("float64"), None
    return np.zeros_like(uniform), contribution


def _feature_keep(node: _Node, keep: np.ndarray) -> np.ndarray:
    return np.tile(keep, node.positions)


def _rebuild(model: keras.Model, nodes: list[_Node], outputs: list[int], groups: _Groups, keep: dict[int, np.ndarray],
             kernels: dict[int, np.ndarray]) -> keras.Model:
    tensors: list = []
    inputs = []
    for node in nodes:
        layer = node.layer
        if layer is None:
            original = model.inputs[len(inputs)]
            tensors.append(keras.Input(shape=original.shape[1:], dtype=original.dtype))
            inputs.append(tensors[-1])
            continue
        config = layer.get_config()
        out_keep = _feature_keep(node, keep[groups.find(node.group)])
        weights = [w.numpy() for w in layer.weights]
        offset = None
        if type(layer) in PRODUCERS:
            source = nodes[node.inputs[0]]
            in_keep = _feature_keep(source, keep[groups.find(source.group)])
            kernel = kernels[id(layer)]
            removed = np.where(in_keep, 0.0, np.nan_to_num(source.constant)).astype("float32")
            fold, offset = _removed_contribution(layer, kernel, removed)
            bias = (layer.bias.numpy().astype("float64") if layer.use_bias else 0.0) + fold
            config["use_bias"] = bool(layer.use_bias or np.any(fold != 0))
            config["units" if isinstance(layer, layers.Dense) else "filters"] = int(out_keep.sum())
            weights = [kernel[..., in_keep, :][..., out_keep]]
            if config["use_bias"]:
                weights.append(bias[out_keep].astype(kernel.dtype))
            if offset is not None:
                offset = offset[..., out_keep]
                config["activation"] = "linear"  # the offset goes in before the activation
        elif isinstance(layer, layers.BatchNormalization) or (type(layer) in ELEMENTWISE and not _mixes(layer)):
            weights = [w[out_keep] for w in weights]
        new = type(layer).from_config(config)
        args = [tensors[i] for i in node.inputs]
        out = new(args if isinstance(layer, layers.Add) else args[0])
        new.set_weights(weights)
        if offset is not None:
            out = ConstantOffset(offset, name=f"{layer.name}_offset")(out)
            if _activation_name(layer) != "linear":
                out = layers.Activation(layer.activation, name=f"{layer.name}_activation")(out)
        tensors.append(out)
    new_outputs = [tensors[i] for i in outputs]
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                       new_outputs[0] if len(new_outputs) == 1 else new_outputs, name=model.name)
