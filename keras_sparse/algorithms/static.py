"""Baselines: dense training and a static random mask ("scratch")."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from keras_sparse.algorithms.base import SparseAlgorithm


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
