"""Small tensor helpers shared by the algorithms: exact top-k masks and random masks."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def num_active(size: int, sparsity: float) -> int:
    """Number of weights kept in a layer of ``size`` weights at ``sparsity``.

    Rounds half to even like tfmot's ``prune_low_magnitude`` and keeps at least one weight,
    so a tiny layer is never cut off entirely.
    """
    return max(1, int(np.round(size * (1.0 - float(sparsity)))))


def topk_mask(scores: tf.Tensor, k: tf.Tensor | int) -> tf.Tensor:
    """Boolean mask of ``scores``' shape with exactly ``k`` True entries at the largest scores.

    ``k`` may be a tensor that changes from call to call: the sort has a static size, so the
    function compiles once under XLA. Ties go to the lower flat index.
    """
    flat = tf.reshape(scores, [-1])
    size = tf.size(flat)
    _, order = tf.math.top_k(flat, k=flat.shape[0] if flat.shape[0] is not None else size)
    keep_sorted = tf.range(size) < tf.cast(k, tf.int32)
    mask = tf.scatter_nd(order[:, None], keep_sorted, tf.shape(flat))
    return tf.reshape(mask, tf.shape(scores))


def topk_mask_numpy(scores: np.ndarray, k: int) -> np.ndarray:
    """NumPy twin of ``topk_mask``: exactly ``k`` True at the largest scores, ties to the lower index."""
    flat = np.asarray(scores).ravel()
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep.reshape(np.shape(scores))


def random_mask(shape: tuple[int, ...], k: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean array of ``shape`` with exactly ``k`` True entries at uniformly random places."""
    size = int(np.prod(shape))
    flat = np.zeros(size, dtype=bool)
    flat[rng.permutation(size)[:k]] = True
    return flat.reshape(shape)
