"""Baselines: dense training and a static random mask ("scratch")."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError


class StaticSparse(SparseAlgorithm):
    """A uniformly random mask at the target sparsity, fixed for all of training.

    The "static" / "scratch" baseline of Evci et al. 2020; the base class's defaults.
    """

    name = "static"


class Dense(SparseAlgorithm):
    """Dense training: every mask all ones; every step computes the dense gradient."""

    name = "dense"

    def __init__(self, seed: int = 0):
        super().__init__(sparsity=0.0, distribution="uniform", seed=seed)

    def initial_masks(self, weights: Mapping[str, np.ndarray], dense_gradients=None) -> dict[str, np.ndarray]:
        return {key: np.ones(shape, dtype=bool) for key, shape in self.shapes.items()}

    def uses_dense_gradient(self, step: int) -> bool:
        return True


class FixedMask(SparseAlgorithm):
    """Trains with the given masks, fixed: the reinit study's retraining of a found structure.

    Args:
        masks: ``{mask key: bool array}``, e.g. from ``keras_sparse.get_masks`` of a trained model.
    """

    name = "fixed_mask"

    def __init__(self, masks: Mapping[str, np.ndarray], seed: int = 0):
        super().__init__(sparsity=0.0, distribution="uniform", seed=seed)
        self.masks = {key: np.asarray(mask, dtype=bool) for key, mask in masks.items()}

    def setup(self, shapes, total_steps: int, steps_per_epoch: int, layouts=None) -> None:
        super().setup(shapes, total_steps, steps_per_epoch, layouts)
        if set(self.masks) != set(self.shapes):
            raise ConfigError(f"FixedMask has masks for {sorted(self.masks)} "
                              f"but the model masks {sorted(self.shapes)}.")
        for key, mask in self.masks.items():
            if mask.shape != self.shapes[key]:
                raise ConfigError(f"FixedMask: mask {key!r} has shape {mask.shape}, the kernel {self.shapes[key]}.")

    def initial_masks(self, weights, dense_gradients=None) -> dict[str, np.ndarray]:
        return dict(self.masks)

    def config(self) -> dict:
        return {"name": self.name, "sparsity": 1.0 - sum(m.sum() for m in self.masks.values())
                / sum(m.size for m in self.masks.values())}
