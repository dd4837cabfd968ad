"""mask_ops: exact top-k masks (eager and under XLA), random masks, active counts."""

import numpy as np
import pytest
import tensorflow as tf

from keras_sparse import mask_ops


@pytest.mark.parametrize("size, sparsity, expected", [
    (100, 0.9, 10),
    (10, 0.25, 8),     # 7.5 -> 8 (half to even)
    (10, 0.35, 6),     # 6.5 -> 6 (half to even)
    (80, 0.65625, 28),  # 27.5 -> 28
    (24, 0.65625, 8),  # 8.25 -> 8
    (7, 0.0, 7),
    (5, 0.99, 1),      # never fewer than one weight
    (1, 0.5, 1),
])
def test_num_active(size, sparsity, expected):
    assert mask_ops.num_active(size, sparsity) == expected


SCORES = np.array([[0.5, 3.0, -1.0],
                   [3.0, 2.0, 3.0]], dtype=np.float32)


@pytest.mark.parametrize("k, expected", [
    (0, [[0, 0, 0], [0, 0, 0]]),
    (1, [[0, 1, 0], [0, 0, 0]]),
    (2, [[0, 1, 0], [1, 0, 0]]),   # ties at 3.0 go to the lower flat index
    (3, [[0, 1, 0], [1, 0, 1]]),
    (4, [[0, 1, 0], [1, 1, 1]]),
    (6, [[1, 1, 1], [1, 1, 1]]),
])
def test_topk_mask_exact_eager_and_xla(k, expected):
    expected = np.array(expected, dtype=bool)
    eager = mask_ops.topk_mask(tf.constant(SCORES), k).numpy()
    np.testing.assert_array_equal(eager, expected)
    compiled = tf.function(lambda s, n: mask_ops.topk_mask(s, n), jit_compile=True)
    np.testing.assert_array_equal(compiled(tf.constant(SCORES), tf.constant(k)).numpy(), expected)


def test_topk_mask_with_changing_k_compiles_once():
    compiled = tf.function(lambda s, n: mask_ops.topk_mask(s, n), jit_compile=True)
    scores = tf.constant(np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32))
    for k in [3, 7, 11, 20]:
        mask = compiled(scores, tf.constant(float(k))).numpy()
        assert mask.sum() == k
        threshold = np.sort(scores.numpy().ravel())[::-1][k - 1]
        np.testing.assert_array_equal(mask, scores.numpy() >= threshold)
    assert compiled.experimental_get_tracing_count() == 1


SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, -1.0, 1.0, 3.0, 1e-40, -1e-40, 2.5e-38], dtype=np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_topk_mask_matches_a_stable_sort_on_ties_and_special_values(seed):
    """Random scores full of ties, signed zeros, infinities and subnormals (which count as 0),
    every k from 0 to the size: the mask is the numpy stable sort's, eager and under XLA."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 40))
    scores = np.where(rng.random(size) < 0.5, rng.choice(SPECIAL, size), np.round(rng.normal(size=size), 1))
    scores = scores.astype(np.float32)
    compiled = tf.function(mask_ops.topk_mask, jit_compile=True)
    as_numpy_sees_them = np.where(np.abs(scores) < np.finfo(np.float32).tiny, 0.0, scores)
    for k in range(size + 1):
        expected = mask_ops.topk_mask_numpy(as_numpy_sees_them, k)
        np.testing.assert_array_equal(mask_ops.topk_mask(tf.constant(scores), k).numpy(), expected, err_msg=str(k))
        np.testing.assert_array_equal(compiled(tf.constant(scores), tf.constant(k)).numpy(), expected, err_msg=str(k))


def test_topk_mask_on_a_large_kernel_is_exact():
    scores = np.random.default_rng(0).normal(size=(784, 300)).astype(np.float32)
    mask = mask_ops.topk_mask(tf.constant(scores), 23520).numpy()
    assert mask.sum() == 23520 and scores[mask].min() > scores[~mask].max()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_topk_mask_separates_scores_one_bit_apart(compiled):
    """Neighbouring float32 values share all but their last bits, so only the radix select's
    last pass tells them apart."""
    neighbours = np.array(
        [np.float32(1.0) + i * np.finfo(np.float32).eps for i in range(12)], dtype=np.float32)
    scores = np.random.default_rng(0).permutation(np.concatenate([neighbours, -neighbours]))
    topk = tf.function(mask_ops.topk_mask, jit_compile=True) if compiled else mask_ops.topk_mask
    for k in range(scores.size + 1):
        np.testing.assert_array_equal(topk(tf.constant(scores), tf.constant(k)).numpy(),
                                      mask_ops.topk_mask_numpy(scores, k), err_msg=str(k))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_topk_mask_on_a_kernel_mostly_tied_at_the_bottom(compiled):
    """RigL's drop scores: 90% of a 784x300 kernel at -1 (the inactive weights). k inside the
    active weights, then k reaching into the tied block, which is taken in index order."""
    rng = np.random.default_rng(1)
    active = rng.random((784, 300)) < 0.1
    scores = np.where(active, np.abs(rng.normal(size=active.shape)), -1.0).astype(np.float32)
    topk = tf.function(mask_ops.topk_mask, jit_compile=True) if compiled else mask_ops.topk_mask
    for k in (1, 16000, int(active.sum()), int(active.sum()) + 5000, active.size):
        np.testing.assert_array_equal(topk(tf.constant(scores), tf.constant(k)).numpy(),
                                      mask_ops.topk_mask_numpy(scores, k), err_msg=str(k))


def test_topk_mask_of_nothing_is_empty():
    assert mask_ops.topk_mask(tf.zeros([0, 3]), 2).shape == (0, 3)


def test_topk_mask_with_minus_inf_excluded_first():
    scores = tf.constant([[-np.inf, 0.1], [0.0, -np.inf]], dtype=tf.float32)
    np.testing.assert_array_equal(mask_ops.topk_mask(scores, 2).numpy(), [[False, True], [True, False]])


@pytest.mark.parametrize("shape, k", [((5,), 2), ((4, 6), 7), ((2, 3, 4), 24), ((3, 3), 0)])
def test_random_mask_exact_count(shape, k):
    mask = mask_ops.random_mask(shape, k, np.random.default_rng(0))
    assert mask.shape == shape and mask.dtype == bool
    assert mask.sum() == k


def test_random_mask_is_seeded_and_varies():
    a = mask_ops.random_mask((10, 10), 30, np.random.default_rng(1))
    b = mask_ops.random_mask((10, 10), 30, np.random.default_rng(1))
    c = mask_ops.random_mask((10, 10), 30, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [256, 300, 1000])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_topk_mask_in_blocks_is_the_same_select(monkeypatch, size, mode):
    """Scores longer than ``BLOCK`` are read a block at a time (a whole number of blocks, or a
    remainder after them): the masks are still exactly the stable sort's, with ties at the k-th
    score spread over several blocks, special values, and k from 0 to the size."""
    monkeypatch.setattr(mask_ops, "BLOCK", 64)
    rng = np.random.default_rng(size)
    scores = np.where(rng.random(size) < 0.3, rng.choice(SPECIAL, size), np.round(rng.normal(size=size), 1))
    scores = np.where(rng.random(size) < 0.3, -1.0, scores).astype(np.float32)  # a large tied block
    as_numpy_sees_them = np.where(np.abs(scores) < np.finfo(np.float32).tiny, 0.0, scores)
    topk = {"eager": mask_ops.topk_mask, "graph": tf.function(mask_ops.topk_mask),
            "xla": tf.function(mask_ops.topk_mask, jit_compile=True)}[mode]
    for k in sorted({0, 1, 63, 64, 65, size // 2, int((scores > -1).sum()) + 7, size - 1, size}):
        np.testing.assert_array_equal(topk(tf.constant(scores), tf.constant(k)).numpy(),
                                      mask_ops.topk_mask_numpy(as_numpy_sees_them, k), err_msg=str(k))


@pytest.mark.parametrize("size", [0, 5, 256, 300])
def test_count_true_in_blocks_and_whole(monkeypatch, size):
    monkeypatch.setattr(mask_ops, "BLOCK", 64)
    mask = np.random.default_rng(size).random((size, 1)) < 0.4
    for count in (mask_ops.count_true, tf.function(mask_ops.count_true), tf.function(mask_ops.count_true,
                                                                                      jit_compile=True)):
        result = count(tf.constant(mask))
        assert result.dtype == tf.int64 and int(result) == int(mask.sum())
