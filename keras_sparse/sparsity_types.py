"""Sparsity types: which entries of a weight are pruned and grown together.

Four types, after jaxpruner's ``sparsity_types`` (Unstructured, NByM, Block, Channel):

* ``Unstructured()`` (``"unstructured"``): any entry on its own; what every algorithm did before.
* ``NByM(n, m)`` (``"2:4"``): in every group of ``m`` consecutive input channels (for each
  kernel position and output channel) exactly ``n`` entries are active. That is the axis
  sparse tensor cores (2:4, Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks")
  and tfmot's ``prune_low_magnitude(sparsity_m_by_n=(2, 4))`` use.
* ``Block(rows, cols)`` (``"4x1"``): blocks of the kernel's 2-D view, rows = inputs (every
  kernel position and input channel, input channels fastest), columns = outputs, are active
  or pruned as a whole. ``"1x4"`` spans 4 output channels of one input, ``"4x1"`` 4 inputs of
  one output channel.
* ``Channel()`` (``"channel"``): whole output channels (a Dense unit, a conv filter).

A type is bound to one weight with ``on(layout, target)``: the layout says where the weight's
input and output channels lie (``layout_of``), the target is the layer's sparsity from the
algorithm's distribution. The bound type answers what the algorithms ask: how many entries
stay active at the target (``active_count``), and which ones for given scores (``select``,
``shrink`` and ``grow``: exact counts, ties to the lower index). Block and channel turn element
scores into one score per group (their sum), select groups with ``mask_ops.topk_mask`` and
expand them back to an element mask; N:M ranks the entries within each group
(``per_group_topk``).

How a target sparsity maps to each type (docs/structure.md):

* unstructured: ``round(size * (1 - target))`` entries, as before;
* block / channel: the same rounding in whole groups (at least one group);
* N:M: the pattern is the sparsity: ``n / m`` of the entries, whatever the target, except
  that a layer whose target is 0 (``first_layer_dense``, a map entry 0.0, a layer ERK keeps
  dense) stays dense, as in jaxpruner.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from keras_sparse import mask_ops
from keras_sparse.errors import ConfigError
from keras_sparse.masking import MaskedWeight, most_specific


# --------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Where a weight's channels lie: ``in_axis``, the input-channel axis a matmul or conv
    sums over (None where nothing is summed over channels: embedding lookups, depthwise
    convs), and ``out_axes``, the axes that index output channels (empty where unknown)."""

    key: str
    shape: tuple[int, ...]
    in_axis: int | None
    out_axes: tuple[int, ...]
    kind: str = "weight"

    @property
    def size(self) -> int:
        """Number of entries of the weight."""
        return int(np.prod(self.shape))

    @property
    def layer(self) -> str:
        """The layer path of the weight (its key without the weight's own name)."""
        return self.key.rsplit("/", 1)[0]


def default_layout(key: str, shape: Sequence[int]) -> Layout:
    """A Dense or Conv kernel's layout, ``(..., inputs, outputs)``: what ``setup`` assumes for
    weights given by shape only (hand-made kernels in tests)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return Layout(key, shape, None, (), "weight")
    return Layout(key, shape, len(shape) - 2, (len(shape) - 1,), "kernel")


def layout_of(weight: MaskedWeight) -> Layout:
    """The layout of a masked weight, from its layer's kind."""
    layer, name, shape = weight.layer, weight.name, tuple(int(d) for d in weight.variable.shape)
    kind, last = type(layer).__name__, len(shape) - 1
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    transpose = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    plain = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
             keras.layers.SimpleRNNCell, keras.layers.LSTMCell, keras.layers.GRUCell)
    if isinstance(layer, keras.layers.Embedding) or name.endswith("embeddings"):
        # A lookup reads rows; it sums over no input channel.
        return Layout(weight.key, shape, None, (last,), kind)
    if isinstance(layer, depthwise) or (isinstance(layer, separable) and name == "depthwise_kernel"):
        # (..., channels, multiplier): each output channel sums over its kernel positions only.
        return Layout(weight.key, shape, None, (last - 1, last), kind)
    if isinstance(layer, transpose):  # Keras stores (..., filters, input channels)
        return Layout(weight.key, shape, last, (last - 1,), kind)
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_layout(weight.key, shape, kind, layer.equation)
    if isinstance(layer, plain + separable) and len(shape) >= 2:
        return Layout(weight.key, shape, last - 1, (last,), kind)
    return Layout(weight.key, shape, None, (), kind)


def _einsum_layout(key: str, shape: tuple[int, ...], kind: str, equation: str) -> Layout:
    """EinsumDense: the kernel's axes summed over (also in the input, not in the output) and its
    output axes, read from the equation; N:M runs along the last summed axis."""
    inputs, output = equation.split("->")
    data, kernel = inputs.split(",")
    if "." in kernel or len(kernel) != len(shape):
        return Layout(key, shape, None, (), kind)
    summed = [i for i, c in enumerate(kernel) if c in data and c not in output]
    outs = tuple(i for i, c in enumerate(kernel) if c in output and c not in data)
    return Layout(key, shape, summed[-1] if summed else None, outs, kind)


# ----------------------------------------------------------------------- types
@dataclass(frozen=True)
class SparsityType:
    """Base class: one sparsity type, unbound (``layout`` None) or bound to a weight by ``on``.

    The methods below ``on`` need a bound type; they are traced into the compiled mask update
    (``select``, ``shrink``, ``grow``, ``drop_count``, ``scheduled_count``) or run eagerly at
    initialization and in reports (``random_mask``, ``holds``).
    """

    # Set by ``on``; keyword-only so that subclasses' own fields come first (``Block(4, 1)``).
    layout: Layout | None = field(default=None, compare=False, repr=False, kw_only=True)
    target: float = field(default=0.0, compare=False, repr=False, kw_only=True)

    #: Whether the type fixes a layer's density itself (N:M), so a global budget cannot move it.
    fixed_density = False

    def __str__(self) -> str:
        return "unstructured"

    def on(self, layout: Layout, target: float) -> "SparsityType":
        """This type bound to one weight at its target sparsity; a ``ConfigError`` naming the
        layer and the fix where the weight cannot take it."""
        self.check(layout)
        return dataclasses.replace(self, layout=layout, target=float(target))

    def check(self, layout: Layout) -> None:
        """Hook: raises a one-line ``ConfigError`` if the weight cannot take this type."""

    def _refuse(self, layout: Layout, why: str, fix: str) -> ConfigError:
        return ConfigError(f"{layout.key} ({layout.kind}) cannot be {self} sparse: {why}; {fix}, or give it another "
                           f"type (e.g. sparsity_type={{'{layout.layer}': 'unstructured'}}).")

    # What a bound type answers.
    @property
    def unit_size(self) -> int:
        """Entries that are pruned and grown together (1, or a block's or channel's size)."""
        return 1

    def active_count(self) -> int:
        """Active entries at the target sparsity."""
        return mask_ops.num_active(self.layout.size, self.target)

    def unit_scores(self, scores: tf.Tensor) -> tf.Tensor:
        """One score per unit (flat): element scores summed over each block or channel."""
        return tf.reshape(scores, [-1])

    def expand(self, unit_mask: tf.Tensor) -> tf.Tensor:
        """An element mask of the weight's shape from a flat mask over units."""
        return tf.reshape(unit_mask, self.layout.shape)

    def select(self, scores: tf.Tensor, k: tf.Tensor | int) -> tf.Tensor:
        """A mask of this type with ``k`` active entries at the largest ``scores``."""
        return mask_ops.topk_mask(scores, k)

    def shrink(self, scores: tf.Tensor, k: tf.Tensor | int) -> tf.Tensor:
        """The ``k`` active entries a drop keeps (SET, RigL): ``select``, except for N:M."""
        return self.select(scores, k)

    def grow(self, kept: tf.Tensor, scores: tf.Tensor, n: tf.Tensor | int) -> tf.Tensor:
        """``n`` entries outside ``kept`` with the largest ``scores``, so that ``kept | grown``
        is a mask of this type."""
        return self.select(tf.where(kept, -np.inf, scores), n)

    def drop_count(self, fraction: tf.Tensor, n_active: tf.Tensor) -> tf.Tensor:
        """Entries a drop of ``fraction`` of the ``n_active`` removes (float32): whole units."""
        return tf.round(fraction * n_active)

    def scheduled_count(self, sparsity: tf.Tensor) -> tf.Tensor:
        """Entries gradual magnitude pruning keeps at the layer's scheduled ``sparsity``
        (tfmot's rounding: ``round(size * (1 - s))``, at least one unit)."""
        return tf.maximum(tf.round(float(self.layout.size) * (1.0 - sparsity)), 1.0)

    def random_mask(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random mask of this type at the target sparsity."""
        return mask_ops.random_mask(self.layout.shape, self.active_count(), rng)

    def holds(self, mask: np.ndarray) -> bool:
        """Whether ``mask`` has this type's pattern."""
        return True


@dataclass(frozen=True)
class Unstructured(SparsityType):
    """Any entry on its own (jaxpruner's ``Unstructured``): the base class's behaviour."""


@dataclass(frozen=True)
class _Grouped(SparsityType):
    """A type whose groups (blocks, channels) are active or pruned whole."""

    def _group_shape(self) -> tuple[int, int]:
        """(number of groups, entries per group)."""
        raise NotImplementedError

    def _to_groups(self, values):
        """``values`` of the weight's shape as ``(groups, group size)``."""
        raise NotImplementedError

    def _from_groups(self, groups):
        raise NotImplementedError

    @property
    def unit_size(self) -> int:
        return self._group_shape()[1]

    def active_count(self) -> int:
        groups, size = self._group_shape()
        return groups * size if self.target == 0 else mask_ops.num_active(groups, self.target) * size

    def unit_scores(self, scores):
        return tf.reduce_sum(self._to_groups(tf.cast(scores, tf.float32)), axis=1)

    def expand(self, unit_mask):
        groups, size = self._group_shape()
        return self._from_groups(tf.broadcast_to(tf.reshape(unit_mask, [groups, 1]), [groups, size]))

    def select(self, scores, k):
        units = tf.cast(k, tf.int32) // self.unit_size
        return self.expand(mask_ops.topk_mask(self.unit_scores(scores), units))

    def drop_count(self, fraction, n_active):
        # Counted in whole groups, in integers: a float division could round differently under XLA.
        groups = tf.cast(tf.cast(n_active, tf.int32) // self.unit_size, tf.float32)
        return tf.round(fraction * groups) * float(self.unit_size)

    def scheduled_count(self, sparsity):
        groups, size = self._group_shape()
        return tf.maximum(tf.round(float(groups) * (1.0 - sparsity)), 1.0) * float(size)

    def random_mask(self, rng):
        groups, _ = self._group_shape()
        chosen = mask_ops.random_mask((groups,), self.active_count() // self.unit_size, rng)
        return np.asarray(self.expand(tf.constant(chosen)))

    def holds(self, mask):
        groups = self._to_groups(tf.constant(np.asarray(mask, bool)))
        return bool(tf.reduce_all(tf.equal(tf.reduce_all(groups, axis=1), tf.reduce_any(groups, axis=1))))


def _inverse(perm: Sequence[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


@dataclass(frozen=True)
class Channel(_Grouped):
    """Whole output channels: a Dense unit's column, a conv filter (jaxpruner's ``Channel``).

    Pruning a classifier's channels removes classes: give the last layer another type.
    """

    def __str__(self) -> str:
        return "channel"

    def check(self, layout):
        if not layout.out_axes:
            raise self._refuse(layout, "keras-sparse does not know which of its axes are output channels",
                               "keep it dense with wrap(exclude=...)")

    def _perm(self):
        outs = list(self.layout.out_axes)
        return outs + [a for a in range(len(self.layout.shape)) if a not in outs]

    def _group_shape(self):
        groups = int(np.prod([self.layout.shape[a] for a in self.layout.out_axes]))
        return groups, self.layout.size // groups

    def _to_groups(self, values):
        return tf.reshape(tf.transpose(values, self._perm()), self._group_shape())

    def _from_groups(self, groups):
        moved = [self.layout.shape[a] for a in self._perm()]
        return tf.transpose(tf.reshape(groups, moved), _inverse(self._perm()))


@dataclass(frozen=True)
class Block(_Grouped):
    """Blocks of ``rows x cols`` entries of the kernel's 2-D view (inputs x outputs), active or
    pruned whole (jaxpruner's ``Block``, which tiles a weight's last two axes). The view puts
    every kernel position and input channel in rows, input channels fastest, and output
    channels in columns."""

    rows: int = 1
    cols: int = 1

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1 or self.rows * self.cols < 2:
            raise ConfigError(f"Block {self.rows}x{self.cols}: rows and cols must be positive and the block larger "
                              "than one entry, e.g. '4x1' or '1x4' (use 'unstructured' for single entries).")

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"

    def check(self, layout):
        if layout.in_axis is None:
            raise self._refuse(layout, "it sums over no input channels for block kernels to skip", "use 'channel'")
        if not layout.out_axes:
            raise self._refuse(layout, "keras-sparse does not know which of its axes are output channels",
                               "keep it dense with wrap(exclude=...)")
        rows, cols = self._view(layout)
        if rows % self.rows or cols % self.cols:
            raise self._refuse(layout, f"its {rows}x{cols} view (inputs x outputs) does not divide into "
                               f"{self.rows}x{self.cols} blocks", "choose a block shape whose sides divide "
                               f"{rows} and {cols}")

    @staticmethod
    def _view(layout: Layout) -> tuple[int, int]:
        cols = int(np.prod([layout.shape[a] for a in layout.out_axes]))
        return layout.size // cols, cols

    def _perm(self):
        outs = list(self.layout.out_axes)
        rest = [a for a in range(len(self.layout.shape)) if a not in outs and a != self.layout.in_axis]
        return rest + [self.layout.in_axis] + outs  # input channels fastest within a row

    def _group_shape(self):
        return self.layout.size // (self.rows * self.cols), self.rows * self.cols

    def _to_groups(self, values):
        rows, cols = self._view(self.layout)
        tiles = tf.reshape(tf.transpose(values, self._perm()), [rows // self.rows, self.rows, cols // self.cols,
                                                                 self.cols])
        return tf.reshape(tf.transpose(tiles, [0, 2, 1, 3]), self._group_shape())

    def _from_groups(self, groups):
        rows, cols = self._view(self.layout)
        tiles = tf.reshape(groups, [rows // self.rows, cols // self.cols, self.rows, self.cols])
        moved = [self.layout.shape[a] for a in self._perm()]
        return tf.transpose(tf.reshape(tf.transpose(tiles, [0, 2, 1, 3]), moved), _inverse(self._perm()))


@dataclass(frozen=True)
class NByM(SparsityType):
    """``n`` active entries in every group of ``m`` consecutive input channels (jaxpruner's
    ``NByM``; tfmot's ``sparsity_m_by_n``; 2:4 as in Mishra et al. 2021).

    Entries move one by one, so the algorithms change little: a drop (SET, RigL) removes the
    layer's smallest active entries wherever they are, as unstructured, and ``grow`` then refills
    each group to exactly ``n`` with its best-scoring inactive entries.
    """

    n: int = 2
    m: int = 4
    fixed_density = True

    def __post_init__(self):
        if not 1 <= self.n < self.m:
            raise ConfigError(f"N:M sparsity {self.n}:{self.m} needs 1 <= N < M, e.g. '2:4' or '1:4'.")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    def check(self, layout):
        if layout.in_axis is None:
            raise self._refuse(layout, "it sums over no input channels for N:M hardware to skip", "use 'channel'")
        channels = layout.shape[layout.in_axis]
        if channels % self.m:
            raise self._refuse(layout, f"its {channels} input channels do not divide into groups of {self.m}",
                               "use an N:M whose M divides " + str(channels))

    @property
    def _per_group(self) -> int:
        return self.m if self.target == 0 else self.n

    def _groups(self) -> int:
        return self.layout.size // self.m

    def _perm(self) -> list[int]:
        axis = self.layout.in_axis
        return [a for a in range(len(self.layout.shape)) if a != axis] + [axis]

    def _to_groups(self, values):
        return tf.reshape(tf.transpose(values, self._perm()), [self._groups(), self.m])

    def _from_groups(self, groups):
        moved = [self.layout.shape[a] for a in self._perm()]
        return tf.transpose(tf.reshape(groups, moved), _inverse(self._perm()))

    def active_count(self):
        return self._groups() * self._per_group

    def select(self, scores, k):
        per_group = tf.cast(k, tf.int32) // self._groups()
        keep = per_group_topk(self._to_groups(scores), tf.fill([self._groups()], per_group))
        return self._from_groups(keep)

    def shrink(self, scores, k):
        return mask_ops.topk_mask(scores, k)

    def grow(self, kept, scores, n):
        kept_groups = self._to_groups(kept)
        in_group = tf.reduce_sum(tf.cast(kept_groups, tf.int32), axis=1)
        per_group = (tf.reduce_sum(in_group) + tf.cast(n, tf.int32)) // self._groups()
        missing = tf.maximum(per_group - in_group, 0)
        scores = tf.where(kept, -np.inf, tf.cast(scores, tf.float32))
        return self._from_groups(per_group_topk(self._to_groups(scores), missing))

    def scheduled_count(self, sparsity):
        # Gradual N:M: every group keeps the same count, from m down to n as the schedule goes
        # from 0 to the layer's target (4:4, 3:4, 2:4 for 2:4), so each step's mask is N':M.
        if self.target == 0:
            return tf.constant(float(self.layout.size))
        progress = tf.clip_by_value(sparsity * (1.0 / self.target), 0.0, 1.0)
        kept = float(self.m) - tf.round(float(self.m - self.n) * progress)
        return kept * float(self._groups())

    def random_mask(self, rng):
        noise = tf.constant(rng.random(self.layout.shape, dtype=np.float32))
        return np.asarray(self.select(noise, self.active_count()))

    def holds(self, mask):
        groups = self._to_groups(tf.constant(np.asarray(mask, bool)))
        return bool(tf.reduce_all(tf.reduce_sum(tf.cast(groups, tf.int32), axis=1) <= self.n))


def per_group_topk(scores: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """For ``scores`` of shape ``(groups, m)``: True at the ``k[g]`` largest of each row ``g``,
    ties to the lower index (as ``mask_ops.topk_mask``). Ranks by pairwise comparison: ``m`` is
    small (4, 8, 16), so ``groups * m * m`` comparisons cost less than a sort per group."""
    scores = tf.cast(scores, tf.float32)
    mine, other = scores[:, :, None], scores[:, None, :]
    index = tf.range(tf.shape(scores)[1])
    before = index[None, :] < index[:, None]  # [i, j]: j comes before i
    beaten = (other > mine) | ((other == mine) & before[None])
    rank = tf.reduce_sum(tf.cast(beaten, tf.int32), axis=2)
    return rank < tf.cast(k, tf.int32)[:, None]


# ------------------------------------------------------------- names and maps
Spec = Union[str, SparsityType, Mapping[str, Union[str, SparsityType]]]

_NM = re.compile(r"^(\d+)\s*:\s*(\d+)$")
_BLOCK = re.compile(r"^(?:block\s*:?\s*)?(\d+)\s*x\s*(\d+)$")


def parse(spec: str | SparsityType) -> SparsityType:
    """A type from its name: ``"unstructured"``, ``"2:4"`` (N:M), ``"4x1"`` or ``"block:4x1"``
    (rows x cols), ``"channel"`` (or ``"filter"``); a ``SparsityType`` is returned as it is."""
    if isinstance(spec, SparsityType):
        return spec
    text = str(spec).strip().lower()
    if text == "unstructured":
        return Unstructured()
    if text in ("channel", "filter"):
        return Channel()
    found = _NM.match(text)
    if found:
        return NByM(int(found[1]), int(found[2]))
    found = _BLOCK.match(text)
    if found:
        return Block(int(found[1]), int(found[2]))
    raise ConfigError(f"Unknown sparsity type {spec!r}: use 'unstructured', N:M such as '2:4', a block such as "
                      "'4x1' (rows x cols) or 'channel'.")


def describe(spec: Spec) -> str | dict[str, str]:
    """``spec`` checked and written as names (for configs and ``metrics.json``)."""
    if isinstance(spec, Mapping):
        return {str(pattern): str(parse(value)) for pattern, value in spec.items()}
    return str(parse(spec))


def resolve(spec: Spec, keys: Sequence[str]) -> dict[str, SparsityType]:
    """The type of each weight ``key``. A map names weights as ``wrap``'s selectors do (layer
    names, layer or weight paths, globs; ``masking.matches``); the most specific entry wins (the
    weight's own path, then the longest pattern); weights it does not name are unstructured."""
    if not isinstance(spec, Mapping):
        chosen = parse(spec)
        return {key: chosen for key in keys}
    types = {pattern: parse(value) for pattern, value in spec.items()}
    chosen = most_specific(types, keys, "sparsity_type map")
    return {key: types[pattern] if pattern is not None else Unstructured() for key, pattern in chosen.items()}
