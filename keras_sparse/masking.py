"""Model-level API: wrap a Keras model with masks, read and write masks, strip and export.

``wrap`` works on Sequential and functional models and recurses into nested ones. It reuses
the model's own layers (and so their weights): use the returned model from then on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Union

import keras
import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError
from keras_sparse.layers import (
    MaskedWrapper,
    holds_unsupported_kernel,
    prunable_kernel_names,
)

Exclude = Union[None, Iterable[str], Callable[[keras.layers.Layer], bool]]


@dataclass(frozen=True)
class MaskedKernel:
    """One masked kernel of a wrapped model: its key, kernel variable and mask variable."""

    key: str
    kernel: keras.Variable
    mask: keras.Variable
    wrapper: MaskedWrapper


def _exclusion_predicate(exclude: Exclude) -> Callable[[keras.layers.Layer], bool]:
    if exclude is None:
        return lambda layer: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    names = set(exclude)
    return lambda layer: layer.name in names


def _check_cloneable(model: keras.Model) -> None:
    if type(model).__module__.startswith("tf_keras"):
        raise ConfigError(f"{type(model).__name__} {model.name!r} is a tf_keras (Keras 2) model: keras-sparse works "
                          "on Keras 3 models; build it with `import keras` (Keras 3), not tf_keras or tf.keras "
                          "with TF_USE_LEGACY_KERAS=1.")
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)
        or type(model).__name__ == "Functional"
    ):
        raise TypeError(
            f"wrap() needs a Sequential or functional keras.Model, got {type(model).__name__}: "
            "for a subclassed model, wrap its layers yourself with keras_sparse.MaskedWrapper."
        )


def wrap(model: keras.Model, exclude: Exclude = None) -> keras.Model:
    """Returns ``model`` with a boolean mask on every prunable kernel.

    Args:
        model: a Sequential or functional Keras model; nested models are wrapped too.
        exclude: layer names, or a predicate ``layer -> bool``, of prunable layers to keep dense.

    Raises:
        ValueError: if a layer type that holds a kernel keras-sparse cannot mask (Embedding,
            LSTM, MultiHeadAttention, …) is not excluded: it would otherwise stay dense silently.
    """
    wrapped = _wrap(model, _exclusion_predicate(exclude))
    if not masked_kernels(wrapped):
        raise ConfigError(
            f"Model {model.name!r} has no prunable layer left to mask: it needs a Dense, Conv or "
            "EinsumDense layer that is not excluded."
        )
    return wrapped


def _wrap(model: keras.Model, is_excluded: Callable[[keras.layers.Layer], bool]) -> keras.Model:
    """``wrap`` without the final check, so a nested model with nothing to mask is allowed."""
    _check_cloneable(model)
    if not model.built:
        raise ConfigError(f"Model {model.name!r} is not built: give it an Input (or call model.build(shape)) before wrap().")
    unsupported = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in _walk(model)
        if holds_unsupported_kernel(layer) and not is_excluded(layer)
    ]
    if unsupported:
        raise ConfigError(
            f"Cannot mask the kernels of {', '.join(unsupported)}: keep them dense with "
            f"wrap(model, exclude=[{', '.join(repr(u.split(' ')[0]) for u in unsupported)}])."
        )

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, MaskedWrapper):
            return layer
        if isinstance(layer, keras.Model):
            return _wrap(layer, is_excluded)
        if prunable_kernel_names(layer) is not None and not is_excluded(layer):
            return MaskedWrapper(layer)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def _walk(model: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer inside ``model``, recursing into nested models but not into wrappers."""
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)


def masked_kernels(model: keras.Model) -> list[MaskedKernel]:
    """All masked kernels of a wrapped model, in layer order."""
    result = []
    for layer in _walk(model):
        if isinstance(layer, MaskedWrapper):
            for kernel_name in layer.kernel_names:
                result.append(MaskedKernel(layer.mask_key(kernel_name), layer.kernel(kernel_name),
                                           layer.masks[kernel_name], layer))
    keys = [k.key for k in result]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"Masked layers share the names {duplicates}: give each layer a unique name.")
    return result


def get_masks(model: keras.Model) -> dict[str, np.ndarray]:
    """``{mask key: numpy bool array}`` for every masked kernel, e.g. ``{"dense/kernel": ...}``."""
    return {k.key: np.asarray(k.mask.numpy(), dtype=bool) for k in masked_kernels(model)}


def set_masks(model: keras.Model, masks: Mapping[str, np.ndarray]) -> None:
    """Sets the masks named in ``masks`` and zeroes the weights they prune.

    Raises:
        ValueError: for a key that is not a masked kernel or an array of the wrong shape.
    """
    by_key = {k.key: k for k in masked_kernels(model)}
    unknown = sorted(set(masks) - set(by_key))
    if unknown:
        raise ConfigError(f"set_masks: {unknown} are not masked kernels of this model; known keys: {sorted(by_key)}.")
    for key, value in masks.items():
        value = np.asarray(value)
        target = by_key[key]
        if tuple(value.shape) != tuple(target.mask.shape):
            raise ConfigError(
                f"set_masks: mask for {key!r} has shape {tuple(value.shape)} but the kernel has "
                f"shape {tuple(target.mask.shape)}."
            )
        target.mask.assign(value.astype(bool))
        target.kernel.assign(tf.where(value.astype(bool), target.kernel, tf.zeros_like(target.kernel)))


def sparsity(model: keras.Model) -> float:
    """Fraction of masked-kernel weights that are pruned, over all masked kernels together."""
    kernels = masked_kernels(model)
    total = sum(int(np.prod(k.mask.shape)) for k in kernels)
    active = sum(int(np.count_nonzero(k.mask.numpy())) for k in kernels)
    return 1.0 - active / total


def sparsity_report(model: keras.Model) -> dict[str, dict]:
    """Per masked kernel: ``{"shape", "size", "active", "sparsity"}``."""
    report = {}
    for k in masked_kernels(model):
        size = int(np.prod(k.mask.shape))
        active = int(np.count_nonzero(k.mask.numpy()))
        report[k.key] = {"shape": list(k.mask.shape), "size": size, "active": active,
                         "sparsity": 1.0 - active / size}
    return report


def strip(model: keras.Model) -> keras.Model:
    """A plain Keras model of the original architecture: no wrappers, no mask variables.

    Pruned weights are exactly 0.0. The result owns fresh copies of all weights.
    """
    _check_cloneable(model)
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer, dict]] = []

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return strip(layer)
        source = layer.layer if isinstance(layer, MaskedWrapper) else layer
        fresh = source.__class__.from_config(source.get_config())
        masks = {}
        if isinstance(layer, MaskedWrapper):
            masks = {layer.kernel(name).path: layer.masks[name].numpy() for name in layer.kernel_names}
        copies.append((source, fresh, masks))
        return fresh

    stripped = keras.models.clone_model(model, clone_function=clone)
    for source, fresh, masks in copies:
        values = [np.where(masks[w.path], w.numpy(), 0.0).astype(w.dtype) if w.path in masks else w.numpy()
                  for w in source.weights]
        fresh.set_weights(values)
    return stripped


def export_saved_model(model: keras.Model, path: str) -> str:
    """Strips ``model`` and exports it as a TensorFlow SavedModel with a ``serving_default`` signature.

    The export is written next to ``path`` and moved into place, so a crash never leaves a
    half-written SavedModel at ``path``. An existing export at ``path`` is replaced.
    """
    plain = strip(model)
    path = os.fspath(path)
    tmp = f"{path.rstrip(os.sep)}.tmp-{os.getpid()}"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    plain.export(tmp, format="tf_saved_model", verbose=False)
    if tf.io.gfile.exists(path):
        old = f"{path.rstrip(os.sep)}.old-{os.getpid()}"
        tf.io.gfile.rename(path, old)
        tf.io.gfile.rename(tmp, path)
        tf.io.gfile.rmtree(old)
    else:
        tf.io.gfile.rename(tmp, path)
    return path

