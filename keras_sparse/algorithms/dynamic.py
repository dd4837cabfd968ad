"""Dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

At steps 0, ΔT, 2ΔT, … before ``end_step`` (default 75% of training), each layer
drops the fraction f(t) = α/2 (1 + cos(π t / T_end)) of its active weights with the smallest
magnitude and grows as many inactive ones. SET grows at random; RigL grows where the dense
gradient is largest. Grown weights start at zero (the optimizer also resets their slots), so
every layer keeps its number of active weights. As in the RigL paper's Algorithm 1,
google-research/rigl and jaxpruner, an update step replaces that step's optimizer update.
The drop count rounds f(t)·n to the nearest whole number (jaxpruner rounds the kept count the
same way; google-research/rigl floors it).

With a structured sparsity type (``keras_sparse.sparsity_types``) blocks and channels are
dropped and grown whole (the drop count rounds to whole groups); N:M drops the layer's smallest
active entries as unstructured does, then each group of M grows back to exactly N.
"""

from __future__ import annotations

import zlib

import tensorflow as tf

from keras_sparse import mask_ops, schedules
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError


class SET(SparseAlgorithm):
    """Sparse Evolutionary Training: magnitude drop, random grow.

    Args:
        drop_fraction: α, the fraction dropped at step 0 of the cosine schedule.
        update_frequency: ΔT, steps between mask updates.
        end_step: T_end, last step that may update; default 75% of training.
        freeze_step / freeze_epoch: no mask update at or after this step (or epoch, converted
            with the steps per epoch); None = update until ``end_step``. After the freeze no
            dense gradient is ever needed again (the paper's early-frozen RigL).
    """

    name = "set"
    skips_optimizer_step = True

    def __init__(self, sparsity: float = 0.9, distribution="erdos_renyi_kernel", first_layer_dense: bool = False,
                 drop_fraction: float = 0.3, update_frequency: int = 100, end_step: int | None = None,
                 freeze_step: int | None = None, freeze_epoch: float | None = None, seed: int = 0,
                 sparsity_type="unstructured"):
        super().__init__(sparsity, distribution, first_layer_dense, seed, sparsity_type)
        if not 0.0 <= drop_fraction <= 1.0:
            raise ConfigError(f"{type(self).__name__}.drop_fraction={drop_fraction} must be in [0, 1].")
        if update_frequency < 1:
            raise ConfigError(f"{type(self).__name__}.update_frequency={update_frequency} "
                              "must be a positive number of steps.")
        if freeze_step is not None and freeze_epoch is not None:
            raise ConfigError(f"{type(self).__name__}: set freeze_step or freeze_epoch, not both.")
        self.drop_fraction = float(drop_fraction)
        self.update_frequency = int(update_frequency)
        self.end_step = end_step
        self.freeze_step = freeze_step
        self.freeze_epoch = freeze_epoch

    def setup(self, shapes, total_steps: int | None, steps_per_epoch: int | None, layouts=None) -> None:
        super().setup(shapes, total_steps, steps_per_epoch, layouts)
        self._end = (self.end_step if self.end_step is not None
                     else int(0.75 * self.required_total_steps("end_step's default (75% of training)")))
        freeze = self.freeze_step
        if self.freeze_epoch is not None:
            if not steps_per_epoch:
                raise ConfigError(f"{type(self).__name__}.freeze_epoch needs the steps per epoch: pass "
                                  "steps_per_epoch to SparseOptimizer, or use freeze_step.")
            freeze = int(round(self.freeze_epoch * steps_per_epoch))
        if freeze is not None and total_steps is not None and not 0 <= freeze <= total_steps:
            raise ConfigError(
                f"{type(self).__name__}: freeze step {freeze} is outside training (0..{total_steps} steps): "
                "lower freeze_step/freeze_epoch or train longer.")
        self._freeze = freeze

    def is_update_step(self, step: int) -> bool:
        if self._freeze is not None and step >= self._freeze:
            return False
        return 0 <= step < self._end and step % self.update_frequency == 0

    def update_horizon(self) -> int:
        return self._end if self._freeze is None else min(self._end, self._freeze)

    def grow_scores(self, step: tf.Tensor, key: str, weight: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
        """Hook: score of each position for growing; SET's is uniform noise, a function of
        (seed, step, layer) that is the same with and without XLA."""
        return mask_ops.hash_uniform(tf.shape(weight), self.seed, step, zlib.crc32(key.encode()))

    def updated_masks(self, step, weights, masks, gradients) -> dict[str, tf.Tensor]:
        fraction = schedules.cosine_drop_fraction(step, self.drop_fraction, self._end)
        new = {}
        for key, weight in weights.items():
            mask, structure = masks[key], self.structures[key]
            n_active = tf.cast(mask_ops.count_true(mask), tf.float32)
            n_drop = structure.drop_count(fraction, n_active)
            # Keep the largest active weights; inactive ones rank below every active one.
            kept = structure.shrink(tf.where(mask, tf.abs(weight), -1.0), n_active - n_drop)
            # Grow among everything not kept (just-dropped weights included, as in RigL).
            scores = self.grow_scores(step, key, weight, gradients[key])
            new[key] = kept | structure.grow(kept, scores, n_drop)
        return new


class RigL(SET):
    """Rigged Lottery (Evci et al. 2020): SET that grows where |dense gradient| is largest.

    ``freeze_step``/``freeze_epoch`` set gives the early-frozen RigL of Van Gelder et al.
    2020: dense gradients only until the freeze, sparse gradients afterwards.
    """

    name = "rigl"

    def grow_scores(self, step, key, weight, gradient) -> tf.Tensor:
        return tf.abs(gradient)

    def uses_dense_gradient(self, step: int) -> bool:
        return self.is_update_step(step)
