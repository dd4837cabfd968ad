"""Where the time of a step goes: milliseconds per call of each compiled program involved.

    python benchmarks/profile_step.py [--rounds 5] [--out profile_step.json]

LeNet-300-100, batch 128, SGD with momentum, 90% sparsity, XLA on and off. Each row is one
program called back to back (median over rounds of the mean time a call). The sparse programs
are written here around ``ks.SparseOptimizer``'s public step (``common.sparse_step``), as
``ks.Trainer`` and ``model.fit`` compile it:

- ``empty program``: an XLA program that returns a scalar: TensorFlow's per-call floor.
- ``empty program, concrete call``: the same called through its concrete function, as the
  Trainer calls its programs (``tf.function`` itself matches the arguments' signature each call).
- ``plain step`` / ``plain step + NaN watch``: a plain Keras 3 dense step, without and with the
  step counter and NaN record the Trainer's step carries.
- ``masked step (static), sparse_apply(update=False)``: forward, gradients and
  ``optimizer.sparse_apply(..., update=False)`` on the wrapped model: the Trainer's plain step.
  ``+ NaN watch, concrete call``: the same with the watch, called as the Trainer calls it.
- ``masked step (static), optimizer.apply (in-graph tf.cond)``: the same step through
  ``optimizer.apply``, which decides mask updates with a ``tf.cond`` on the update table: the
  step ``model.fit`` runs.
- ``update step (<algorithm>)``: ``sparse_apply(..., update=True)``: a train step plus the
  algorithm's ``updated_masks`` (RigL and SET skip the optimizer update there), for RigL, SET
  and magnitude pruning. Runs every ΔT steps. ``..., counting search``: the same program traced
  with the previous top-k (below).
- ``active-weight count, own call``: a compiled call that counts every mask's active weights,
  read back each time (what the Trainer's loop ran after every mask update before its update
  programs returned the counts, commit f93e1c8).
- ``20 staged steps (static), per step``: one XLA program running 20 steps over stacked
  batches in a ``tf.while_loop`` of ``sparse_apply(update=False)`` steps, as
  ``ks.Trainer(steps_per_execution=20)`` does; ``..., optimizer.apply``: the same loop with the
  in-graph ``tf.cond`` in every step.
- ``topk_mask 784x300, ...``: keras-sparse's exact top-k mask (a radix select over the float
  bit patterns) on the largest kernel's shape: normal scores with k = 10%, and RigL's drop and
  grow selections at 90% sparsity. ``counting search``: the same selections by the search
  ``topk_mask`` used before (counting passes), and ``full sort``: the ``tf.math.top_k`` sort
  that the counting search replaced (k = 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Callable
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import algorithms, mask_ops  # noqa: E402

SHAPE, BATCH, SPARSITY = (28, 28, 1), 128, 0.9


def sortable_keys(values: tf.Tensor) -> tf.Tensor:
    """int32 keys in the order of the float32 ``values`` (zeros and subnormals as +0.0): a copy
    of keras-sparse's private helper, for the baseline below."""
    values = tf.cast(values, tf.float32)
    values = tf.where(tf.abs(values) < np.finfo(np.float32).tiny, tf.zeros_like(values), values)
    bits = tf.bitcast(values, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF, tf.int32)), bits)


def counting_search_topk_mask(scores: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
    """``topk_mask`` as it was before the radix select (before commit 72c9433): a search for the
    k-th largest key by counting the keys at or above a guess, alternating secant and bisection
    guesses, 8–26 passes over a LeNet-300-100 kernel. Kept here only as the baseline of its row."""
    keys = sortable_keys(tf.reshape(scores, [-1]))
    k = tf.clip_by_value(tf.cast(k, tf.int32), 0, tf.size(keys))

    def count_at_least(threshold):
        return tf.reduce_sum(tf.cast(keys >= tf.cast(threshold, tf.int32), tf.int32))

    def step(i, low, high, count_low, count_above_high, found, threshold):
        span = high - low
        share = tf.cast(count_low - k, tf.float64) / tf.cast(tf.maximum(count_low - count_above_high, 1), tf.float64)
        middle = tf.where(i % 2 == 0, low + 1 + tf.cast(share * tf.cast(span, tf.float64), tf.int64),
                          low + (span + 1) // 2)
        middle = tf.clip_by_value(middle, low + 1, high)
        count = count_at_least(middle)
        enough = count >= k
        return (i + 1, tf.where(enough, middle, low), tf.where(enough, high, middle - 1),
                tf.where(enough, count, count_low), tf.where(enough, count_above_high, count),
                tf.equal(count, k), middle)

    def searching(i, low, high, count_low, count_above_high, found, threshold):
        return tf.logical_and(low < high, tf.logical_not(found))

    low, high = tf.cast(tf.reduce_min(keys), tf.int64), tf.cast(tf.reduce_max(keys), tf.int64)
    state = (tf.constant(0), low, high, tf.size(keys), tf.constant(0), tf.constant(False), low)
    _, low, _, _, _, found, threshold = tf.while_loop(searching, step, state, maximum_iterations=64)

    def ties_in_index_order():
        kth = tf.cast(low, tf.int32)
        ties, needed = keys == kth, k - tf.reduce_sum(tf.cast(keys > kth, tf.int32))
        return (keys > kth) | (ties & (tf.cumsum(tf.cast(ties, tf.int32)) <= needed))

    mask = tf.cond(found, lambda: keys >= tf.cast(threshold, tf.int32), ties_in_index_order)
    return tf.reshape(tf.logical_and(mask, k > 0), tf.shape(scores))


def sparse_model(algorithm: algorithms.SparseAlgorithm) -> tuple[keras.Model, ks.SparseOptimizer]:
    """LeNet-300-100 wrapped, with a built ``SparseOptimizer`` (SGD + momentum) and its initial masks."""
    model = common.lenet_300_100()
    return model, common.sparse_optimizer(model, algorithm, keras.optimizers.SGD(0.01, momentum=0.9))


def programs(jit: bool) -> dict[str, tuple[Callable[[], tf.Tensor], int]]:
    """name: (a call, calls a round)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, *SHAPE)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=BATCH))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    empty = tf.function(lambda v: tf.reduce_sum(v), jit_compile=jit)
    plain = common.plain_step(common.lenet_300_100(), keras.optimizers.SGD(0.01, momentum=0.9), loss, jit)
    watched = common.plain_step(common.lenet_300_100(), keras.optimizers.SGD(0.01, momentum=0.9), loss, jit, watch_loss=True)
    static_model, static = sparse_model(algorithms.StaticSparse(SPARSITY))
    masked = common.sparse_step(static_model, static, loss, jit, update=False)
    masked_cond = common.sparse_step(static_model, static, loss, jit, update=None)
    masked_watched = common.sparse_step(static_model, static, loss, jit, update=False, watch_loss=True)
    xs, ys = tf.stack([x] * 20), tf.stack([y] * 20)
    staged = common.staged_steps(static_model, static, loss, jit)
    staged_cond = common.staged_steps(static_model, static, loss, jit, update=None)
    updates = {
        "rigl": lambda: algorithms.RigL(SPARSITY, update_frequency=100, end_step=10**6),
        "set": lambda: algorithms.SET(SPARSITY, update_frequency=100, end_step=10**6),
        "magnitude": lambda: algorithms.MagnitudePruning(SPARSITY, begin_step=0, end_step=10**6, frequency=100),
    }
    scores = tf.constant(rng.normal(size=(784, 300)).astype("float32"))
    k = tf.constant(23520)
    # RigL's two selections at 90% sparsity: keep 70% of the active weights (the rest at -1), then
    # grow 30% of them where a heavy-tailed |gradient| is largest (kept positions at -inf).
    active = rng.random((784, 300)) < 0.1
    drop = np.where(active, np.abs(rng.normal(size=active.shape)), -1.0).astype("float32")
    kept = mask_ops.topk_mask_numpy(drop, int(0.7 * active.sum()))
    gradient = np.abs(rng.normal(size=active.shape) * rng.exponential(size=active.shape))
    grow = np.where(kept, -np.inf, gradient).astype("float32")
    selections = {"k = 10%": (scores, k), "RigL drop": (tf.constant(drop), tf.constant(int(0.7 * active.sum()))),
                  "RigL grow": (tf.constant(grow), tf.constant(int(0.3 * active.sum())))}
    topk = tf.function(mask_ops.topk_mask, jit_compile=jit)
    counting = tf.function(counting_search_topk_mask, jit_compile=jit)
    full_sort = tf.function(lambda s: tf.math.top_k(tf.reshape(s, [-1]), k=784 * 300).indices, jit_compile=jit)
    counts = common.active_counts(static_model, jit)
    table = {
        "empty program": (lambda: empty(y), 1000),
        "empty program, concrete call": (lambda c=empty.get_concrete_function(y): c(y), 1000),
        "plain step": (lambda: plain(x, y), 200),
        "plain step + NaN watch": (lambda: watched(x, y), 200),
        "masked step (static), sparse_apply(update=False)": (lambda: masked(x, y), 200),
        "masked step (static), optimizer.apply (in-graph tf.cond)": (lambda: masked_cond(x, y), 200),
        "masked step + NaN watch, concrete call (as ks.Trainer)":
            (lambda c=masked_watched.get_concrete_function(x, y): c(x, y), 200),
        "20 staged steps (static), per step": (lambda: staged(xs, ys), 10),
        "20 staged steps (static), optimizer.apply, per step": (lambda: staged_cond(xs, ys), 10),
        "active-weight count, own call": (lambda: tf.constant(counts().numpy()), 200),
    }
    for name, make in updates.items():
        model, optimizer = sparse_model(make())
        step = common.sparse_step(model, optimizer, loss, jit, update=True)
        table[f"update step ({name})"] = (lambda s=step: s(x, y), 20)
    for name in ("rigl", "magnitude"):
        # The same update step traced with the previous top-k: the algorithms look topk_mask up
        # in mask_ops when the step is traced, on its first call.
        model, optimizer = sparse_model(updates[name]())
        step = common.sparse_step(model, optimizer, loss, jit, update=True)
        with mock.patch.object(mask_ops, "topk_mask", counting_search_topk_mask):
            step(x, y)
        table[f"update step ({name}), counting search"] = (lambda s=step: s(x, y), 20)
    for name, (values, keep) in selections.items():
        table[f"topk_mask 784x300, {name}"] = (lambda v=values, c=keep: topk(v, c), 20)
        table[f"counting search 784x300, {name}"] = (lambda v=values, c=keep: counting(v, c), 20)
    table["full sort 784x300"] = (lambda: full_sort(scores), 10)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="profile_step.json")
    args = parser.parse_args()
    results = {}
    for jit in (True, False):
        table = programs(jit)
        times = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, (call, calls) in table.items():
                times[name].append(1000 * common.seconds_per_call(call, calls))
        for name in times:
            if name.startswith("20 staged steps"):
                times[name] = [t / 20 for t in times[name]]
        results["xla" if jit else "no_xla"] = {name: {"ms": statistics.median(v), "rounds": v} for name, v in times.items()}
    print(f"LeNet-300-100, batch {BATCH}, ms per call, median of {args.rounds} rounds\n")
    print("| program | XLA on ms | XLA off ms |\n|---|---|---|")
    for name in results["xla"]:
        print(f"| {name} | {results['xla'][name]['ms']:.3f} | {results['no_xla'][name]['ms']:.3f} |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
