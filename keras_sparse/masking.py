"""Masks on a Keras model's weights, added in place: any model, no rebuilding.

``wrap(model)`` gives boolean masks to the weights a user expects to be sparse, found at any
depth of any Keras 3 model (Sequential, functional, ``Functional`` subclasses such as keras-hub
backbones, subclassed models, custom layers): the kernels of Dense / EinsumDense / every Conv
kind (those inside MultiHeadAttention and keras-hub's transformer layers included) and the
``kernel`` and ``recurrent_kernel`` of LSTM / GRU / SimpleRNN cells (under ``Bidirectional``
and ``TimeDistributed`` too). Embedding tables are masked only when asked (``embeddings=True``
or by path): a lookup table's dense gradient is zero outside the batch's tokens, so RigL would
grow there only by accident. Biases, normalisation and scalars are never masked.

The model is not rebuilt and its layers are not replaced: the masks live in a ``MaskState``
attached to the model object, which Keras saves with the model's weights (``model.save``,
``save_weights``, ``ModelCheckpoint``, ``BackupAndRestore``). The invariant every code path keeps
is *weight == 0 wherever its mask is off*, so the forward pass needs no multiply, the gradient of
a stored kernel is the dense gradient RigL grows by (Evci et al. 2020), and a model with masks
computes exactly what the same model without them computes.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
import weakref
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError

#: Layer class -> names of the weights masked by default. Subclasses match too (keras-hub's
#: ``ReversibleEmbedding`` is an ``Embedding``).
MASKED_BY_DEFAULT: dict[type, tuple[str, ...]] = {
    keras.layers.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.DepthwiseConv1D: ("kernel",),
    keras.layers.DepthwiseConv2D: ("kernel",),
    keras.layers.Conv1DTranspose: ("kernel",),
    keras.layers.Conv2DTranspose: ("kernel",),
    keras.layers.Conv3DTranspose: ("kernel",),
    keras.layers.Conv1D: ("kernel",),
    keras.layers.Conv2D: ("kernel",),
    keras.layers.Conv3D: ("kernel",),
    keras.layers.Dense: ("kernel",),
    keras.layers.EinsumDense: ("kernel",),
    keras.layers.SimpleRNNCell: ("kernel", "recurrent_kernel"),
    keras.layers.LSTMCell: ("kernel", "recurrent_kernel"),
    keras.layers.GRUCell: ("kernel", "recurrent_kernel"),
}
EMBEDDING_WEIGHTS = "embeddings"  # Embedding's table; keras-hub's PositionEmbedding has position_embeddings

#: The attribute of a model that holds its ``MaskState``.
STATE_ATTRIBUTE = "keras_sparse_masks"

Selector = Union[None, str, Iterable[str], Callable[..., bool]]


@dataclass(frozen=True)
class MaskedWeight:
    """One masked weight: its key (the variable's path), the variable, its mask, its layer and the
    ``MaskState`` that holds the mask."""

    key: str
    variable: keras.Variable
    mask: keras.Variable
    layer: keras.layers.Layer
    state: "MaskState" = field(repr=False, compare=False, default=None)

    @property
    def name(self) -> str:
        """The weight's name within its layer (``kernel``, ``recurrent_kernel``, ``embeddings``, …)."""
        return self.key.rsplit("/", 1)[-1]

    # Kept for code written against the first API, where every masked weight was a kernel.
    @property
    def kernel(self) -> keras.Variable:
        """The masked variable (alias of ``variable``)."""
        return self.variable


class MaskState(keras.layers.Layer):
    """The masks of one model: a bool variable per masked weight, saved with the model.

    Keras's saving walks a model's attributes, so this layer's variables go into every
    ``.keras`` / ``.weights.h5`` file of the model, under ``keras_sparse_masks/vars/<key>``
    (the variable path, ``/`` written as ``|``). It is not one of the model's layers: it takes
    no part in the forward pass, in ``model.weights`` or in an exported SavedModel.
    """

    def __init__(self, **kwargs):
        super().__init__(name=kwargs.pop("name", STATE_ATTRIBUTE), **kwargs)
        self.entries: list[MaskedWeight] = []
        # Each weight's bound sparsity type, declared by the optimizer's algorithm (not saved).
        object.__setattr__(self, "sparsity_types", {})
        self.initialized = self.add_weight(shape=(), dtype="bool", initializer="zeros", trainable=False,
                                           name="initialized", aggregation="only_first_replica")
        self.built = True

    def add(self, key: str, variable: keras.Variable, layer: keras.layers.Layer) -> MaskedWeight:
        """Adds an all-ones mask for ``variable`` (the weights stay as they are)."""
        self._tracker.unlock()
        try:
            mask = self.add_weight(shape=tuple(variable.shape), dtype="bool", initializer="ones", trainable=False,
                                   name=_file_key(key), aggregation="only_first_replica")
        finally:
            self._tracker.lock()
        entry = MaskedWeight(key, variable, mask, layer, self)
        self.entries.append(entry)
        _REGISTRY[id(variable)] = entry
        return entry

    def declare_sparsity_types(self, types: Mapping[str, object]) -> None:
        """Records each weight's sparsity type (``keras_sparse.sparsity_types``: objects with a
        name, ``str``, and ``holds(mask)``) for ``sparsity_report``; ``SparseOptimizer`` calls it."""
        self.sparsity_types.update(types)

    def _file_keys(self) -> dict[str, MaskedWeight]:
        """Each mask's name in a weights file: ``<position in model.weights>|<path, / as |>``.
        A load matches by position (paths can change: a loaded TimeDistributed names its layer's
        weights without its own prefix); the path is there for a reader."""
        position = {id(v): i for i, v in enumerate(self.model_ref().weights)}
        return {f"{position[id(e.variable)]}|{_file_key(e.key)}": e for e in self.entries}

    def save_own_variables(self, store) -> None:
        store["initialized"] = np.asarray(self.initialized.numpy())
        for key, entry in self._file_keys().items():
            store[key] = np.asarray(entry.mask.numpy())

    def load_own_variables(self, store) -> None:
        stored = {key.split("|", 1)[0]: key for key in store.keys() if key != "initialized"}
        ours = {key.split("|", 1)[0]: entry for key, entry in self._file_keys().items()}
        if set(stored) != set(ours):
            missing = sorted(ours[p].key for p in set(ours) - set(stored))
            extra = sorted(stored[p] for p in set(stored) - set(ours))
            raise ConfigError(f"The saved masks do not fit this model (missing {missing}, unexpected {extra}): "
                              "load the file into a model wrapped with the same selection.")
        self.initialized.assign(bool(np.asarray(store["initialized"])))
        for position, entry in ours.items():
            entry.mask.assign(np.asarray(store[stored[position]], dtype=bool))


# id(variable) -> its MaskedWeight, for optimizers that see variables only. Weak: an entry
# lives as long as the MaskState that holds it (and so the variable's id stays unique).
_REGISTRY: "weakref.WeakValueDictionary[int, MaskedWeight]" = weakref.WeakValueDictionary()


def mask_of(variable) -> MaskedWeight | None:
    """The ``MaskedWeight`` of ``variable`` if some wrapped model masks it, else None."""
    return _REGISTRY.get(id(variable))


def masked_values(variable) -> np.ndarray:
    """``variable``'s values as a NumPy array, with its mask applied (pruned entries exactly 0.0)
    when a wrapped model masks it: what a plain copy or an export of the model must hold."""
    values = keras.ops.convert_to_numpy(variable)
    weight = mask_of(variable)
    return values if weight is None else np.where(weight.mask.numpy(), values, 0).astype(values.dtype)


def _file_key(key: str) -> str:
    return key.replace("/", "|")


def mask_state(model: keras.Model) -> MaskState | None:
    """The model's ``MaskState`` (None if ``wrap`` never ran on it)."""
    return vars(model).get(STATE_ATTRIBUTE)


# ---------------------------------------------------------------- selection
@dataclass(frozen=True)
class Candidate:
    """A weight that could be masked: its path, variable, owning layer, and whether it is by default."""

    key: str
    variable: keras.Variable
    layer: keras.layers.Layer
    default: bool


def all_layers(model: keras.layers.Layer, include_self: bool = True) -> Iterator[keras.layers.Layer]:
    """Every layer under ``model`` at any depth (sublayers of custom layers and cells of RNNs too)."""
    return iter(model._flatten_layers(include_self=include_self, recursive=True))  # Keras's own walk


def weight_key(model: keras.Model, variable) -> str:
    """A weight's key: its variable path without the model's own name in front (a Sequential or
    subclassed model puts it there), so that two builds of one architecture share keys."""
    prefix = model.name + "/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


def candidates(model: keras.Model, embeddings: bool = False) -> list[Candidate]:
    """Every trainable weight of two or more dimensions but biases, with the layer that owns it."""
    seen: set[int] = set()
    result = []
    for layer in all_layers(model):
        default_names = next((names for cls, names in MASKED_BY_DEFAULT.items() if isinstance(layer, cls)), ())
        for variable in layer._trainable_variables:  # the layer's own, not its sublayers'
            if id(variable) in seen or len(variable.shape) < 2:
                continue
            seen.add(id(variable))
            name = variable.path.rsplit("/", 1)[-1]
            if name.endswith("bias"):  # EinsumDense's biases can have two dimensions: never masked
                continue
            default = name in default_names or (embeddings and name.endswith(EMBEDDING_WEIGHTS))
            result.append(Candidate(weight_key(model, variable), variable, layer, default))
    return result


def _matcher(selector: Selector, what: str, keys: Sequence[str]) -> Callable[[Candidate], bool]:
    """A test of candidates for ``include``/``exclude``: names and paths, or a predicate."""
    if selector is None:
        return lambda candidate: False
    if callable(selector):
        takes = len(inspect.signature(selector).parameters)
        if takes == 1:  # predicate(layer), as the first API had it
            return lambda candidate: bool(selector(candidate.layer))
        return lambda candidate: bool(selector(candidate.layer, candidate.variable))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    unknown = [p for p in patterns if not any(matches(p, key) for key in keys)]
    if unknown:
        raise ConfigError(f"{what}={unknown} matches no weight of the model: use layer names, layer paths or "
                          f"variable paths such as {list(keys)[:4]} (ks.sparsity_report lists them).")
    return lambda candidate: any(matches(p, candidate.key) or matches(p, candidate.variable.path) for p in patterns)


def most_specific(patterns: Iterable[str], keys: Sequence[str], what: str) -> dict[str, str | None]:
    """For each weight ``key``, the pattern of ``patterns`` that names it (``matches``) most
    specifically: the weight's own path, then the longest pattern; None where none names it.
    Per-layer maps (sparsities, sparsity types) choose their entries with it.

    Raises:
        ConfigError: naming the patterns that name no weight (``what``: the map, for the message).
    """
    patterns = list(patterns)
    unknown = sorted(p for p in patterns if not any(matches(p, key) for key in keys))
    if unknown:
        layers = sorted({key.rsplit("/", 1)[0] for key in keys})
        raise ConfigError(f"{what} names {unknown}, which are not masked layers: use names from {layers}.")
    return {key: max((p for p in patterns if matches(p, key)), key=lambda p: (p.strip("/") == key, len(p)),
                     default=None) for key in keys}


def matches(pattern: str, key: str) -> bool:
    """Whether ``pattern`` names the weight ``key`` (a variable path such as
    ``"encoder/block1/attention/query/kernel"``): the path itself, a layer path it lies under
    (``"encoder/block1"``), a layer name in it (``"attention"``), or a glob (``"*/query/*"``)."""
    pattern = pattern.strip("/")
    layer_names = key.split("/")[:-1]
    return (key == pattern or key.startswith(pattern + "/") or pattern in layer_names
            or fnmatch.fnmatchcase(key, pattern))


def wrap(model: keras.Model, include: Selector = None, exclude: Selector = None, embeddings: bool = False,
         quiet: bool = False) -> keras.Model:
    """Gives ``model``'s weights boolean masks, in place, and returns the same model.

    Args:
        model: any built Keras 3 model.
        include: weights to mask instead of the defaults (any trainable weight of two or more
            dimensions but a bias, custom layers' included): layer names, layer paths, variable paths,
            globs, or a predicate ``(layer, variable) -> bool``.
        exclude: weights to keep dense, selected the same way (a one-argument predicate gets
            the layer).
        embeddings: also mask embedding tables (Embedding, keras-hub token and position
            embeddings).
        quiet: do not print the line that says most parameters stay dense.

    The masks start all on; an optimizer (``SparseOptimizer``, or ``Trainer``) sets the
    algorithm's initial masks. Calling ``wrap`` again on a wrapped model changes nothing and
    returns it.

    Raises:
        ConfigError: the model is a tf_keras model, is not built, has nothing to mask, or a
            selector names no weight of it.
    """
    _check_model(model)
    state = mask_state(model)
    if state is not None:
        return model
    found = candidates(model, embeddings)
    keys = [c.key for c in found]
    names = keys + [c.variable.path for c in found]  # a selector may also give the full variable path
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ConfigError(f"Weights share the paths {duplicates}: give the layers that hold them unique names.")
    included = _matcher(include, "include", names) if include is not None else (lambda c: c.default)
    excluded = _matcher(exclude, "exclude", names)
    position = {id(v): i for i, v in enumerate(model.weights)}
    chosen = sorted((c for c in found if included(c) and not excluded(c)), key=lambda c: position[id(c.variable)])
    if not chosen:
        raise ConfigError(f"Model {model.name!r} has no weight to mask: it needs a Dense, EinsumDense, Conv or "
                          "RNN kernel that is not excluded (or include= a weight of two or more dimensions).")
    taken = [c.key for c in chosen if mask_of(c.variable) is not None]
    if taken:
        raise ConfigError(f"{taken[:3]} already have masks from wrap() of a model inside {model.name!r}: wrap one "
                          "model only (the optimizer finds those masks from the outer model too).")
    _check_in_scope(model, chosen[0].variable)
    state = MaskState()
    for c in chosen:
        state.add(c.key, c.variable, c.layer)
    state.model_ref = weakref.ref(model)
    object.__setattr__(model, STATE_ATTRIBUTE, state)  # outside Keras's tracking: not a layer of the model
    if not quiet:
        warning = dense_majority_warning(model)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    return model


def _check_model(model) -> None:
    if type(model).__module__.startswith("tf_keras"):
        raise ConfigError(f"{type(model).__name__} {model.name!r} is a tf_keras (Keras 2) model: keras-sparse works "
                          "on Keras 3 models; build it with `import keras` (Keras 3), not tf_keras or tf.keras "
                          "with TF_USE_LEGACY_KERAS=1.")
    if not isinstance(model, keras.layers.Layer):
        raise ConfigError(f"wrap() needs a Keras 3 model, got {type(model).__name__}.")
    if not model.built or not model.weights:
        raise ConfigError(f"Model {model.name!r} is not built: give it an Input, call it on a batch or call "
                          "model.build(shape) before wrap().")


def _check_in_scope(model, variable) -> None:
    strategy = tf.distribute.get_strategy()
    if tf.distribute.has_strategy() and not strategy.extended.variable_created_in_scope(
            getattr(variable, "value", variable)):
        raise ConfigError(f"Model {model.name!r} was built outside this strategy's scope: build and wrap it inside "
                          "the same `with strategy.scope():`.")
    if not tf.distribute.has_strategy():
        value = getattr(variable, "value", variable)
        if isinstance(value, tf.distribute.DistributedValues):
            raise ConfigError(f"Model {model.name!r} was built under a tf.distribute strategy: call wrap() inside "
                              "`with strategy.scope():` too.")


def masked_weights(model: keras.Model) -> list[MaskedWeight]:
    """All masked weights of a wrapped model, in the model's weight order.

    Raises:
        ConfigError: if ``wrap`` never ran on the model.
    """
    state = mask_state(model)
    if state is None:
        raise ConfigError(f"Model {model.name!r} has no masks: call keras_sparse.wrap(model) first "
                          "(a .keras file loads with its masks through keras_sparse.load_model).")
    return list(state.entries)


masked_kernels = masked_weights  # the first API's name


def get_masks(model: keras.Model) -> dict[str, np.ndarray]:
    """``{variable path: numpy bool array}`` for every masked weight, e.g. ``{"dense/kernel": ...}``."""
    return {w.key: np.asarray(w.mask.numpy(), dtype=bool) for w in masked_weights(model)}


def set_masks(model: keras.Model, masks: Mapping[str, np.ndarray]) -> None:
    """Sets the masks named in ``masks`` (by variable path) and zeroes the weights they prune.

    Raises:
        ConfigError: for a key that is not a masked weight or an array of the wrong shape.
    """
    by_key = {w.key: w for w in masked_weights(model)}
    unknown = sorted(set(masks) - set(by_key))
    if unknown:
        raise ConfigError(f"set_masks: {unknown} are not masked weights of this model; known keys: {sorted(by_key)}.")
    for key, value in masks.items():  # every shape checked before any mask changes
        if tuple(np.shape(value)) != tuple(by_key[key].mask.shape):
            raise ConfigError(f"set_masks: mask for {key!r} has shape {tuple(np.shape(value))} but the weight has "
                              f"shape {tuple(by_key[key].mask.shape)}.")
    for key, value in masks.items():
        value = np.asarray(value).astype(bool)
        target = by_key[key]
        target.mask.assign(value)
        target.variable.assign(np.where(value, target.variable.numpy(), 0).astype(target.variable.dtype))
    mask_state(model).initialized.assign(True)


def sparsity(model: keras.Model) -> float:
    """Fraction of the masked weights that are pruned (``sparsity_report`` gives it over all parameters too)."""
    return sparsity_of(masked_weights(model))


def sparsity_of(weights: Sequence[MaskedWeight]) -> float:
    """Fraction of ``weights`` (masked weights, together) that are pruned."""
    total = sum(int(np.prod(w.mask.shape)) for w in weights)
    active = sum(int(np.count_nonzero(w.mask.numpy())) for w in weights)
    return 1.0 - active / total


def sparsity_report(model: keras.Model) -> dict[str, dict]:
    """Per masked weight ``{"shape", "size", "active", "sparsity", "type", "pattern_holds"}``, and
    under ``"total"``: the sparsity of the masked weights and of all the model's parameters, with
    their counts.

    ``type`` is the weight's sparsity type as its algorithm declared it (``"unstructured"``,
    ``"2:4"``, ``"4x1"``, ``"channel"``; ``"unstructured"`` before an optimizer set the model up)
    and ``pattern_holds`` whether the mask has that pattern now: at most N active in every N:M
    group (what N:M hardware accepts; the algorithms keep exactly N), every block and channel
    all on or all off.
    """
    report: dict[str, dict] = {}
    declared = mask_state(model).sparsity_types if mask_state(model) is not None else {}
    for w in masked_weights(model):
        size = int(np.prod(w.mask.shape))
        mask = w.mask.numpy()
        active = int(np.count_nonzero(mask))
        kind = declared.get(w.key)
        report[w.key] = {"shape": list(w.mask.shape), "size": size, "active": active, "sparsity": 1.0 - active / size,
                         "type": str(kind) if kind is not None else "unstructured",
                         "pattern_holds": bool(kind.holds(mask)) if kind is not None else True}
    masked_size = sum(r["size"] for r in report.values())
    pruned = sum(r["size"] - r["active"] for r in report.values())
    parameters = int(sum(np.prod(v.shape) for v in model.weights))
    report["total"] = {"masked_size": masked_size, "parameters": parameters,
                       "masked_sparsity": pruned / masked_size if masked_size else 0.0,
                       "sparsity_of_all_parameters": pruned / parameters if parameters else 0.0,
                       "masked_share_of_parameters": masked_size / parameters if parameters else 0.0}
    return report


def dense_majority_warning(model: keras.Model) -> str | None:
    """One line when the masked weights are under half of the model's parameters, naming the
    largest weights left dense; None otherwise."""
    masked = {id(w.variable) for w in masked_weights(model)}
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    masked_size = sum(int(np.prod(w.variable.shape)) for w in masked_weights(model))
    if total == 0 or masked_size >= total / 2:
        return None
    dense = sorted((v for v in model.weights if id(v) not in masked), key=lambda v: -int(np.prod(v.shape)))[:3]
    names = ", ".join(f"{weight_key(model, v)} ({int(np.prod(v.shape)):,})" for v in dense)
    return (f"keras-sparse: only {masked_size:,} of {total:,} parameters ({100 * masked_size / total:.1f}%) of "
            f"{model.name!r} are masked; the largest dense ones: {names}. Select more with wrap(include=...) "
            "or embeddings=True.")


# ----------------------------------------------------------- save, strip, export
def load_model(path: str, **kwargs) -> keras.Model:
    """``keras.models.load_model`` for a ``.keras`` file of a wrapped model, masks included.

    ``keras.models.load_model`` alone loads the same model with its pruned weights at exactly
    zero but without masks (they are not part of the model's config); this re-attaches them
    from the file. ``kwargs`` go to ``keras.models.load_model``.
    """
    model = keras.models.load_model(path, **kwargs)
    stored = _stored_masks(path)
    if stored is None:
        return model
    weights = model.weights
    chosen = {id(weights[int(key.split("|", 1)[0])]) for key in stored if key != "initialized"}
    wrap(model, include=lambda layer, variable: id(variable) in chosen, quiet=True)
    mask_state(model).load_own_variables(stored)
    return model


def _stored_masks(path: str) -> dict[str, np.ndarray] | None:
    import h5py  # a Keras dependency

    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as raw:
        with h5py.File(raw, "r") as weights:
            group = weights.get(f"{STATE_ATTRIBUTE}/vars")
            if group is None:
                return None
            return {key: np.asarray(group[key]) for key in group.keys()}


def strip(model: keras.Model) -> keras.Model:
    """A plain copy of ``model``: the same class and config, no masks, pruned weights exactly 0.0.

    Works for every model Keras can rebuild from its config (Sequential, functional, keras-hub
    models, subclassed models that define ``get_config``). The masked model itself is already
    exact (weights are 0 wherever masks are off): ``export_saved_model`` and TFLite conversion
    work on it directly.
    """
    try:
        if isinstance(model, keras.Sequential) or type(model).__name__ == "Functional":
            fresh = keras.models.clone_model(model)
        else:
            fresh = model.__class__.from_config(model.get_config())
    except NotImplementedError:
        raise ConfigError(f"{type(model).__name__} {model.name!r} cannot be rebuilt from its config (no get_config): "
                          "export it as it is with ks.export_saved_model(model, path); its pruned weights are "
                          "exactly 0.") from None
    if not fresh.built:
        fresh.build_from_config(model.get_build_config())
    fresh.set_weights([masked_values(v) for v in model.weights])
    return fresh


def export_saved_model(model: keras.Model, path: str) -> str:
    """Exports ``model`` as a TensorFlow SavedModel with a ``serving_default`` signature.

    The masks take no part in the forward pass, so the export is the plain model, pruned weights
    exactly 0.0. It is written next to ``path`` and moved into place, so a crash never leaves a
    half-written SavedModel at ``path``; an existing export at ``path`` is replaced.
    """
    path = os.fspath(path)
    tmp = f"{path.rstrip(os.sep)}.tmp-{os.getpid()}"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    model.export(tmp, format="tf_saved_model", verbose=False)
    if tf.io.gfile.exists(path):
        old = f"{path.rstrip(os.sep)}.old-{os.getpid()}"
        tf.io.gfile.rename(path, old)
        tf.io.gfile.rename(tmp, path)
        tf.io.gfile.rmtree(old)
    else:
        tf.io.gfile.rename(tmp, path)
    return path
