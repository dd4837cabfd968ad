"""Small tensor helpers shared by the algorithms: exact top-k masks, random masks, hashed noise."""

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
    """Boolean mask of ``scores``' shape with exactly ``k`` True entries at the largest scores;
    ties go to the lower flat index (as ``tf.math.top_k`` orders them).

    No sort: a search over the float32 values' bit patterns finds the k-th largest score by
    counting, then ties at it are taken in index order. Counting passes fuse well under XLA; a
    full sort of a 235k-weight kernel took 44 ms under XLA on CPU, this about 1 ms (BENCHMARKS.md).
    ``k`` may be a tensor that changes from call to call without recompiling.
    """
    flat = tf.reshape(scores, [-1])
    keys = _sortable_keys(flat)
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(flat))

    def count_at_least(threshold):
        return tf.reduce_sum(tf.cast(keys >= tf.cast(threshold, tf.int32), tf.int32))

    # Invariant: count(keys >= low) >= k > count(keys > high), so the k-th largest key lies in
    # [low, high]. Steps alternate between a secant guess (the counts are a smooth function of
    # the threshold for real weights and gradients, so it closes in fast) and a bisection (which
    # bounds the worst case at 64 steps); the search stops early at a threshold with exactly k keys
    # at or above it.
    low, high = tf.cast(tf.reduce_min(keys), tf.int64), tf.cast(tf.reduce_max(keys), tf.int64)
    state = (tf.constant(0), low, high, tf.size(flat), tf.constant(0), tf.constant(False), low)

    def searching(i, low, high, count_low, count_above_high, found, threshold):
        return tf.logical_and(low < high, tf.logical_not(found))

    def step(i, low, high, count_low, count_above_high, found, threshold):
        span = high - low
        share = tf.cast(count_low - k, tf.float64) / tf.cast(tf.maximum(count_low - count_above_high, 1), tf.float64)
        secant = low + 1 + tf.cast(share * tf.cast(span, tf.float64), tf.int64)
        middle = tf.where(i % 2 == 0, secant, low + (span + 1) // 2)
        middle = tf.clip_by_value(middle, low + 1, high)
        count = count_at_least(middle)
        enough = count >= k
        return (i + 1, tf.where(enough, middle, low), tf.where(enough, high, middle - 1),
                tf.where(enough, count, count_low), tf.where(enough, count_above_high, count),
                tf.equal(count, k), middle)

    _, low, _, _, _, found, threshold = tf.while_loop(searching, step, state, maximum_iterations=64)

    def exactly_k_at_or_above_threshold():
        return keys >= tf.cast(threshold, tf.int32)

    def ties_in_index_order():
        above, ties = keys > tf.cast(low, tf.int32), keys == tf.cast(low, tf.int32)
        needed = k - tf.reduce_sum(tf.cast(above, tf.int32))
        return above | (ties & (tf.cumsum(tf.cast(ties, tf.int32)) <= needed))

    mask = tf.cond(found, exactly_k_at_or_above_threshold, ties_in_index_order)
    mask = tf.logical_and(mask, k > 0)  # k = 0: the search never ran, low is the minimum
    return tf.reshape(mask, tf.shape(scores))


def _sortable_keys(values: tf.Tensor) -> tf.Tensor:
    """int32 keys in the order of the float32 ``values``; NaN above +inf. Zeros and subnormals
    (which the CPU may flush to zero in some ops and not others) all count as +0.0."""
    values = tf.cast(values, tf.float32)
    values = tf.where(tf.abs(values) < np.finfo(np.float32).tiny, tf.zeros_like(values), values)
    bits = tf.bitcast(values, tf.int32)
    # Negative floats order backwards as integers: keep the sign bit, flip the others.
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)


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


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """A bijective avalanche hash of uint32 values (C. Wellons' "lowbias32")."""
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint32)))
        x = x * tf.constant(multiplier, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def hash_uniform(shape, seed: int, step: tf.Tensor | int, salt: int) -> tf.Tensor:
    """Float32 noise in [0, 1) (multiples of 2^-24) of ``shape``, a pure function of
    (``seed``, ``step``, ``salt``, position).

    Integer arithmetic only, so it is bit-identical in eager mode, in a graph and under XLA;
    ``tf.random.stateless_uniform`` is not (XLA's Philox gives other numbers on CPU,
    tensorflow/tensorflow#121243), and a mask chosen by it would depend on ``jit_compile``.
    """
    key = _mix32(tf.constant(int(seed) & 0xFFFFFFFF, tf.uint32))
    key = _mix32(tf.bitwise.bitwise_xor(key, tf.constant(int(salt) & 0xFFFFFFFF, tf.uint32)))
    key = _mix32(tf.bitwise.bitwise_xor(key, tf.cast(tf.cast(step, tf.int64), tf.uint32)))
    index = tf.cast(tf.range(tf.reduce_prod(shape)), tf.uint32)
    bits = _mix32(tf.bitwise.bitwise_xor(_mix32(index), key))
    noise = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) * (1.0 / (1 << 24))
    return tf.reshape(noise, shape)
