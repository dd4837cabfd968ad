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

    Scores of more than ``BLOCK`` entries are read a block at a time (a loop over blocks, each
    block's keys made again at each pass): every pass makes several int32 arrays of its input's
    size, which over a whole 16M-weight kernel raised RigL's peak memory well above dense
    training's (BENCHMARKS.md, section 5 has the figures). The result is the same either way.
    """
    flat = tf.reshape(scores, [-1])
    if _in_blocks(flat):
        source, keys_of = flat, _sortable_keys
    else:  # one block: its keys are made once
        source, keys_of = _sortable_keys(flat), tf.identity
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(flat))
    wanted = tf.maximum(k, 1)  # k = 0 selects as k = 1, and the mask is cleared below
    kth, above, at_kth = _kth_largest_key(source, keys_of, wanted)
    needed = wanted - above  # how many of the keys equal to the k-th are taken

    def all_at_kth():
        return _map_blocks(source, lambda block, carry: (keys_of(block) >= kth, carry), tf.constant(0))

    def ties_in_index_order():
        def block_mask(block, taken):  # taken: ties taken in the blocks before this one
            keys = keys_of(block)
            ties = tf.equal(keys, kth)
            counts = tf.cast(ties, tf.int32)
            order = tf.cumsum(counts) + taken
            return (keys > kth) | (ties & (order <= needed)), taken + tf.reduce_sum(counts)

        return _map_blocks(source, block_mask, tf.constant(0))

    mask = tf.cond(tf.equal(at_kth, needed), all_at_kth, ties_in_index_order)
    mask = tf.logical_and(mask, k > 0)
    return tf.reshape(mask, tf.shape(scores))


#: Entries a pass of ``topk_mask`` reads at a time, where its scores have more (a multiple of
#: ``_LANES``).
BLOCK = 1 << 20
_DIGIT_BITS = (11, 11, 10)  # 2048-bin histograms: cheap suffix sums, and three passes cover 32 bits
_LANES = 8  # sub-histograms per digit, so a run of equal keys does not serialize on one counter


def _in_blocks(values: tf.Tensor) -> bool:
    """Whether the 1-D ``values`` are read ``BLOCK`` entries at a time (more than that, and a
    size known when tracing)."""
    return values.shape[0] is not None and values.shape[0] > BLOCK


def _sum_blocks(values: tf.Tensor, fn, initial: tf.Tensor) -> tf.Tensor:
    """The sum of ``fn(block)`` over the consecutive blocks of the 1-D ``values``.

    Here and in ``_map_blocks`` the loop runs one block at a time (``parallel_iterations=1``):
    a graph loop otherwise runs up to ten iterations side by side, each holding its block's
    working arrays, which gives back most of the memory the blocks save."""
    if not _in_blocks(values):
        return fn(values)
    size = values.shape[0]
    full = size // BLOCK
    total = tf.while_loop(lambda i, _: i < full,
                          lambda i, total: (i + 1, total + fn(tf.slice(values, [i * BLOCK], [BLOCK]))),
                          (tf.constant(0), initial), maximum_iterations=full, parallel_iterations=1)[1]
    return total + fn(values[full * BLOCK:]) if size % BLOCK else total


def _map_blocks(values: tf.Tensor, fn, carry: tf.Tensor) -> tf.Tensor:
    """The boolean blocks of ``fn(block, carry) -> (block of booleans, carry)`` over the
    consecutive blocks of the 1-D ``values``, in order, concatenated."""
    if not _in_blocks(values):
        return fn(values, carry)[0]
    size = values.shape[0]
    full = size // BLOCK

    def body(i, blocks, carry):
        block, carry = fn(tf.slice(values, [i * BLOCK], [BLOCK]), carry)
        return i + 1, blocks.write(i, block), carry

    blocks = tf.TensorArray(tf.bool, size=full, element_shape=[BLOCK])
    _, blocks, carry = tf.while_loop(lambda i, *_: i < full, body, (tf.constant(0), blocks, carry),
                                     maximum_iterations=full, parallel_iterations=1)
    mask = blocks.concat()
    return tf.concat([mask, fn(values[full * BLOCK:], carry)[0]], 0) if size % BLOCK else mask


def count_true(mask: tf.Tensor) -> tf.Tensor:
    """Number of True entries of the boolean ``mask`` (int64), counted ``BLOCK`` entries at a
    time where it has more: ``count_nonzero`` casts the whole mask to int64 first, 8 bytes an
    entry."""
    flat = tf.reshape(mask, [-1])
    return tf.cast(_sum_blocks(flat, lambda block: tf.reduce_sum(tf.cast(block, tf.int32)), tf.constant(0)), tf.int64)


def _kth_largest_key(values: tf.Tensor, keys_of, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The ``k``-th largest of the int32 keys ``keys_of(values)`` (1 <= k <= size), how many
    keys are above it and how many equal it: a most-significant-digit-first radix select.

    Each pass histograms one digit of the keys that share the digits found so far, and keeps the
    digit that holds the k-th largest. The histograms are scatter-adds (``unsorted_segment_sum``),
    summed over the blocks of ``values`` (``_sum_blocks``).
    """
    prefix = tf.constant(0, tf.uint32)  # the digits of the k-th largest key found so far
    above = tf.constant(0)  # keys above every key with that prefix
    done = 0
    for bits in _DIGIT_BITS:
        def histogram_of(block, bits=bits, done=done, prefix=prefix):
            ordered = tf.bitcast(tf.bitwise.bitwise_xor(keys_of(block), tf.constant(-(2**31), tf.int32)), tf.uint32)
            digit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(ordered, tf.constant(32 - done - bits, tf.uint32)),
                                           tf.constant((1 << bits) - 1, tf.uint32))
            # Blocks start at multiples of _LANES, so a block's own positions give the lanes.
            bins = tf.cast(digit, tf.int32) * _LANES + tf.range(tf.size(block)) % _LANES
            if done:  # only keys with the prefix count; a negative bin drops the others
                same = tf.equal(tf.bitwise.right_shift(ordered, tf.constant(32 - done, tf.uint32)), prefix)
                bins = tf.where(same, bins, -1)
            return tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, (1 << bits) * _LANES)

        histogram = _sum_blocks(values, histogram_of, tf.zeros([(1 << bits) * _LANES], tf.int32))
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
