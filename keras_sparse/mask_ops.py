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

    No sort: a radix select over the float32 values' bit patterns finds the k-th largest score
    in three histogram passes (``_kth_largest_key``), then ties at it are taken in index order.
    A full sort of a large kernel dominated RigL's update time on CPU; a select does not sort
    (BENCHMARKS.md). ``k`` may be a tensor that changes from call to call without recompiling.
    """
    flat = tf.reshape(scores, [-1])
    keys = _sortable_keys(flat)
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(flat))
    wanted = tf.maximum(k, 1)  # k = 0 selects as k = 1, and the mask is cleared below
    kth, above, at_kth = _kth_largest_key(keys, wanted)
    needed = wanted - above  # how many of the keys equal to the k-th are taken

    def all_at_kth():
        return keys >= kth

    def ties_in_index_order():
        ties = tf.equal(keys, kth)
        return (keys > kth) | (ties & (tf.cumsum(tf.cast(ties, tf.int32)) <= needed))

    mask = tf.cond(tf.equal(at_kth, needed), all_at_kth, ties_in_index_order)
    mask = tf.logical_and(mask, k > 0)
    return tf.reshape(mask, tf.shape(scores))


_DIGIT_BITS = (11, 11, 10)  # 2048-bin histograms: cheap suffix sums, and three passes cover 32 bits
_LANES = 8  # sub-histograms per digit, so a run of equal keys does not serialize on one counter


def _kth_largest_key(keys: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The ``k``-th largest of the int32 ``keys`` (1 <= k <= size), how many keys are above it
    and how many equal it: a most-significant-digit-first radix select.

    Each pass histograms one digit of the keys that share the digits found so far, and keeps the
    digit that holds the k-th largest. The histograms are scatter-adds (``unsorted_segment_sum``).
    """
    ordered = tf.bitcast(tf.bitwise.bitwise_xor(keys, tf.constant(-(2**31), tf.int32)), tf.uint32)
    lane = tf.range(tf.size(keys)) % _LANES
    prefix = tf.constant(0, tf.uint32)  # the digits of the k-th largest key found so far
    above = tf.constant(0)  # keys above every key with that prefix
    done = 0
    for bits in _DIGIT_BITS:
        shift = 32 - done - bits
        digit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(ordered, tf.constant(shift, tf.uint32)),
                                       tf.constant((1 << bits) - 1, tf.uint32))
        bins = tf.cast(digit, tf.int32) * _LANES + lane
        if done:  # only keys with the prefix count; a negative bin drops the others
            same = tf.equal(tf.bitwise.right_shift(ordered, tf.constant(32 - done, tf.uint32)), prefix)
            bins = tf.where(same, bins, -1)
        histogram = tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, (1 << bits) * _LANES)
        histogram = tf.reduce_sum(tf.reshape(histogram, [1 << bits, _LANES]), axis=1)
        at_or_above = tf.cumsum(histogram, reverse=True) + above
        chosen = tf.maximum(tf.reduce_sum(tf.cast(at_or_above >= k, tf.int32)) - 1, 0)
        at_chosen = tf.gather(histogram, chosen)
        above = tf.gather(at_or_above, chosen) - at_chosen
        prefix = tf.bitwise.bitwise_or(tf.bitwise.left_shift(prefix, tf.constant(bits, tf.uint32)),
                                       tf.cast(chosen, tf.uint32))
        done += bits
    kth = tf.bitcast(tf.bitwise.bitwise_xor(prefix, tf.constant(2**31, tf.uint32)), tf.int32)
    return kth, above, at_chosen


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
