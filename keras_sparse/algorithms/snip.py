"""SNIP: single-shot network pruning by connection sensitivity (Lee et al. 2019)."""

from __future__ import annotations

import numpy as np

from keras_sparse import mask_ops
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError


class SNIP(SparseAlgorithm):
    """At initialization score every weight by |g ⊙ w| (gradients summed over
    ``scoring_batches`` batches) and keep the top-k scores over all layers together;
    the mask then stays fixed. SNIP chooses the layer-wise distribution itself.

    With a ``sparsity_type``, blocks and channels compete with single weights by their mean
    score (units of different sizes compare), taken best first while they fit in the global
    budget. N:M layers keep the N best of every M by score: their density is fixed, so they
    take their share out of the budget and the other layers share the rest.
    """

    name = "snip"

    def __init__(self, sparsity: float = 0.9, scoring_batches: int = 1, seed: int = 0,
                 sparsity_type="unstructured"):
        super().__init__(sparsity, distribution="uniform", seed=seed, sparsity_type=sparsity_type)
        if scoring_batches < 1:
            raise ConfigError(f"SNIP.scoring_batches={scoring_batches} must be at least 1.")
        self.scoring_batches = int(scoring_batches)

    def initial_masks(self, weights, dense_gradients=None) -> dict[str, np.ndarray]:
        gradients = dense_gradients()
        scores = {k: np.abs(gradients[k] * weights[k]) for k in self.shapes}
        budget = mask_ops.num_active(sum(int(np.prod(s)) for s in self.shapes.values()), self.sparsity)
        masks = {}
        for key, structure in self.structures.items():
            if structure.fixed_density:
                masks[key] = np.asarray(structure.select(scores[key], structure.active_count()))
                budget -= int(masks[key].sum())
        ranked = [key for key in self.shapes if key not in masks]
        if not ranked:
            return masks
        units = [np.asarray(self.structures[k].unit_scores(scores[k])) / self.structures[k].unit_size for k in ranked]
        sizes = np.concatenate([np.full(u.size, self.structures[k].unit_size) for k, u in zip(ranked, units)])
        # Best unit first (ties to the lower index); with single weights only this is the global top-k.
        order = np.argsort(-np.concatenate(units), kind="stable")
        taken = np.zeros(sizes.size, dtype=bool)
        taken[order[np.cumsum(sizes[order]) <= max(budget, 0)]] = True
        start = 0
        for key, unit in zip(ranked, units):
            masks[key] = np.asarray(self.structures[key].expand(taken[start:start + unit.size]))
            start += unit.size
        return masks
