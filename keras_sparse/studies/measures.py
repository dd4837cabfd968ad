"""Measures on masks and weights that the studies report.

- ``mask_overlap``: how much of a final mask an earlier snapshot already has (fraction of the
  final active weights present, IoU, Hamming distance), per layer and overall (claim 3).
- ``init_variant``: the re-initializations of Zhou et al. 2019 for a fixed mask (claim 1).
- ``prune_further``: extra magnitude pruning of trained weights, per layer or global (claim 2).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from keras_sparse import mask_ops
from keras_sparse.errors import ConfigError

Masks = Mapping[str, np.ndarray]
INIT_VARIANTS = ("original", "new_init", "reshuffle", "signed_constant")


def mask_overlap(snapshot: Masks, final: Masks) -> dict[str, dict[str, float]]:
    """Per layer and ``"overall"``: ``final_present`` (fraction of the final mask's active
    weights already active in ``snapshot``), ``iou`` (|A∩B| / |A∪B|), ``hamming`` (number of
    positions that differ) and ``hamming_fraction`` (that over the layer size)."""
    result = {}
    totals = np.zeros(4)  # intersection, union, final active, differing
    size_total = 0
    for key, last in final.items():
        now, last = np.asarray(snapshot[key], bool), np.asarray(last, bool)
        counts = np.array([np.sum(now & last), np.sum(now | last), np.sum(last), np.sum(now != last)], float)
        result[key] = _overlap_entry(counts, last.size)
        totals += counts
        size_total += last.size
    result["overall"] = _overlap_entry(totals, size_total)
    return result


def _overlap_entry(counts: np.ndarray, size: int) -> dict[str, float]:
    intersection, union, final_active, differing = counts
    return {"final_present": float(intersection / final_active) if final_active else 1.0,
            "iou": float(intersection / union) if union else 1.0,
            "hamming": int(differing), "hamming_fraction": float(differing / size)}


def init_variant(variant: str, original: Masks, masks: Masks, new_init: Masks | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Initial kernels for retraining ``masks`` (Zhou et al. 2019, "Deconstructing Lottery Tickets").

    Args:
        variant: ``original`` (the run's own initial kernels), ``new_init`` (``new_init``: kernels
            drawn from the same initializer with another seed), ``reshuffle`` (the original
            initial values of each layer's active weights, permuted among its active positions),
            ``signed_constant`` (sign of the original init × the std of the layer's original init).
        original: the run's initial kernels, before any masking.
        masks: the mask to retrain; every returned kernel is 0 where it is off.
        seed: seeds the reshuffle.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for key, mask in masks.items():
        mask = np.asarray(mask, bool)
        init = np.asarray(original[key])
        if variant == "original":
            values = init.copy()
        elif variant == "new_init":
            if new_init is None:
                raise ConfigError("init_variant('new_init') needs the kernels of a new initialization.")
            values = np.asarray(new_init[key]).copy()
        elif variant == "reshuffle":
            values = np.zeros_like(init)
            values[mask] = rng.permutation(init[mask])
        elif variant == "signed_constant":
            values = np.sign(init) * init.std()
        else:
            raise ConfigError(f"Unknown init variant {variant!r}: use one of {list(INIT_VARIANTS)}.")
        result[key] = np.where(mask, values, 0.0).astype(init.dtype)
    return result


def prune_further(weights: Masks, masks: Masks, extra_sparsity: float, scope: str = "layer") -> dict[str, np.ndarray]:
    """Masks after pruning a further fraction ``extra_sparsity`` of the active weights by magnitude.

    ``scope="layer"`` removes that fraction of each layer's active weights; ``"global"`` removes
    that fraction of all active weights together, smallest magnitudes first across layers.
    Total sparsity becomes s + (1 - s) · extra_sparsity.
    """
    if not 0.0 <= extra_sparsity <= 1.0:
        raise ConfigError(f"extra_sparsity={extra_sparsity} must be in [0, 1].")
    masks = {k: np.asarray(m, bool) for k, m in masks.items()}
    if scope == "layer":
        result = {}
        for key, mask in masks.items():
            keep = int(np.round(mask.sum() * (1.0 - extra_sparsity)))
            result[key] = mask_ops.topk_mask_numpy(np.where(mask, np.abs(weights[key]), -1.0), keep)
        return result
    if scope == "global":
        keys = list(masks)
        scores = np.concatenate([np.where(masks[k], np.abs(weights[k]), -1.0).ravel() for k in keys])
        active = int(sum(m.sum() for m in masks.values()))
        flat = mask_ops.topk_mask_numpy(scores, int(np.round(active * (1.0 - extra_sparsity))))
        result, start = {}, 0
        for key in keys:
            size = masks[key].size
            result[key] = flat[start:start + size].reshape(masks[key].shape)
            start += size
        return result
    raise ConfigError(f"Unknown pruning scope {scope!r}: use 'layer' or 'global'.")

