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
    """

    name = "snip"

    def __init__(self, sparsity: float = 0.9, scoring_batches: int = 1, seed: int = 0):
        super().__init__(sparsity, distribution="uniform", seed=seed)
        if scoring_batches < 1:
            raise ConfigError(f"SNIP.scoring_batches={scoring_batches} must be at least 1.")
        self.scoring_batches = int(scoring_batches)

    def initial_masks(self, weights, dense_gradients=None) -> dict[str, np.ndarray]:
        gradients = dense_gradients()
        keys = list(self.shapes)
        scores = np.concatenate([np.abs(gradients[k] * weights[k]).ravel() for k in keys])
        total_active = mask_ops.num_active(scores.size, self.sparsity)
        flat = mask_ops.topk_mask_numpy(scores, total_active)
        masks, start = {}, 0
        for key in keys:
            size = int(np.prod(self.shapes[key]))
            masks[key] = flat[start:start + size].reshape(self.shapes[key])
            start += size
        return masks
