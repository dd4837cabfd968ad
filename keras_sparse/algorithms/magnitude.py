"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune")."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_sparse import mask_ops, schedules
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError


class MagnitudePruning(SparseAlgorithm):
    """Start dense; every ``frequency`` steps from ``begin_step`` to ``end_step`` keep the
    largest-magnitude weights of each layer, the sparsity following tfmot's ``PolynomialDecay``
    (power 3) from ``initial_sparsity`` to the layer's target.

    With a non-uniform ``distribution`` each layer's schedule is scaled to its own target.
    ``begin_step``/``end_step`` default to 10% and 75% of training.

    With a ``sparsity_type``, blocks and channels are pruned whole (the schedule's count rounded
    to whole groups); N:M prunes gradually too: every group of M keeps the same count, stepping
    from M down to N as the schedule goes from 0 to the layer's target (4:4, 3:4, 2:4), where
    tfmot's ``sparsity_m_by_n`` jumps to N:M at the first pruning step.
    """

    name = "magnitude"

    def __init__(self, sparsity: float = 0.9, distribution="uniform", first_layer_dense: bool = False,
                 initial_sparsity: float = 0.0, begin_step: int | None = None, end_step: int | None = None,
                 frequency: int = 100, seed: int = 0, sparsity_type="unstructured"):
        super().__init__(sparsity, distribution, first_layer_dense, seed, sparsity_type)
        self.initial_sparsity = float(initial_sparsity)
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = int(frequency)
        if self.frequency < 1:
            raise ConfigError(f"MagnitudePruning.frequency={frequency} must be a positive number of steps.")

    def setup(self, shapes, total_steps: int | None, steps_per_epoch: int | None, layouts=None) -> None:
        super().setup(shapes, total_steps, steps_per_epoch, layouts)
        self._begin = (self.begin_step if self.begin_step is not None
                       else int(0.1 * self.required_total_steps("begin_step's default (10% of training)")))
        self._end = (self.end_step if self.end_step is not None
                     else int(0.75 * self.required_total_steps("end_step's default (75% of training)")))
        if not 0 <= self._begin <= self._end:
            raise ConfigError(f"MagnitudePruning: begin_step={self._begin} must be in [0, end_step={self._end}].")
        self._schedule = schedules.polynomial_decay(self.initial_sparsity, self.sparsity, self._begin,
                                                    self._end, self.frequency)

    def initial_masks(self, weights, dense_gradients=None) -> dict[str, np.ndarray]:
        return {key: np.ones(shape, dtype=bool) for key, shape in self.shapes.items()}

    def is_update_step(self, step: int) -> bool:
        return schedules.periodic_update_step(step, self.frequency, self._begin, self._end)

    def update_horizon(self) -> int:
        return self._end + 1

    def uses_dense_gradient(self, step: int) -> bool:
        return step < self._begin

    def updated_masks(self, step, weights, masks, gradients) -> dict[str, tf.Tensor]:
        _, global_sparsity = self._schedule(step)
        # Once the schedule is at its final sparsity (from end_step on), keep exactly each layer's
        # target count (``target_active``, what every other algorithm keeps): the float32 formula
        # below can miss it by one at a rounding tie, and differently with and without XLA. (With
        # begin_step == end_step tfmot's schedule is NaN there, 0/0, which pruned every weight.)
        at_target = tf.logical_or(tf.cast(step, tf.int64) >= self._end,
                                  global_sparsity >= tf.constant(self.sparsity, tf.float32))
        new = {}
        for key, weight in weights.items():
            # The layer's schedule is the global one scaled by target / final, a ratio taken here
            # in float64: exactly 1 with "uniform", so those layers follow tfmot's sparsity bit for
            # bit. (A division of the float32 schedule inside the step is rewritten by XLA and
            # Grappler into a multiplication by the reciprocal, one ulp off.)
            ratio = self.targets[key] / self.sparsity if self.sparsity > 0 else 0.0
            layer_sparsity = global_sparsity * ratio
            structure = self.structures[key]
            size = float(np.prod(self.shapes[key]))
            # tfmot's rounding: round(size * (1 - s)), at least one weight (or group).
            k = structure.scheduled_count(layer_sparsity)
            k = tf.where(at_target, float(self.target_active(key)) if self.sparsity > 0 else size, k)
            # Pruned weights rank last and k never exceeds the active count, so a weight once
            # pruned stays pruned.
            k = tf.minimum(k, tf.cast(mask_ops.count_true(masks[key]), tf.float32))
            scores = tf.where(masks[key], tf.abs(weight), -1.0)
            new[key] = structure.select(scores, k)
        return new
