"""Where the time of a step goes: milliseconds per call of each compiled program involved.

    python benchmarks/profile_step.py [--rounds 5] [--out profile_step.json]

LeNet-300-100, batch 128, SGD with momentum, 90% sparsity, XLA on and off. Each row is one
program called back to back (median over rounds of the mean time a call). The sparse programs
are written in ``common`` around ``ks.SparseOptimizer``'s public step (``common.sparse_step``), as
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
  algorithm's new masks (RigL and SET skip the optimizer update there), for RigL, SET and
  magnitude pruning. Runs every ΔT steps.
- ``20 staged steps (static), per step``: one XLA program running 20 steps over stacked
  batches in a ``tf.while_loop`` of ``sparse_apply(update=False)`` steps, as
  ``ks.Trainer(steps_per_execution=20)`` does; ``..., optimizer.apply``: the same loop with the
  in-graph ``tf.cond`` in every step.
- ``topk_mask 784x300, ...``: keras-sparse's exact top-k mask (``keras_sparse.mask_ops``) on
  the largest kernel's shape: normal scores with k = 10%, and RigL's drop and grow selections
  at 90% sparsity; ``full tf.math.top_k sort 784x300``: a full sort of the same scores, the
  obvious way to get a top-k mask, for reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import mask_ops  # noqa: E402

STAGED = 20


def sparse_model(algorithm: ks.algorithms.SparseAlgorithm) -> tuple[keras.Model, ks.SparseOptimizer]:
    """LeNet-300-100 wrapped, with a built ``SparseOptimizer`` (SGD + momentum) and its initial masks."""
    model = common.lenet_300_100()
    return model, common.sparse_optimizer(model, algorithm, common.sgd())


def programs(jit: bool) -> dict[str, tuple[Callable[[], tf.Tensor], int]]:
    """name: (a call, calls a round)."""
    x, y = common.batch_of("lenet_300_100")
    loss = common.loss_fn()
    empty = tf.function(lambda v: tf.reduce_sum(v), jit_compile=jit)
    plain = common.plain_step(common.lenet_300_100(), common.sgd(), loss, jit)
    watched = common.plain_step(common.lenet_300_100(), common.sgd(), loss, jit, watch_loss=True)
    static_model, static = sparse_model(common.algorithm("static"))
    masked = common.sparse_step(static_model, static, loss, jit, update=False)
    masked_cond = common.sparse_step(static_model, static, loss, jit, update=None)
    masked_watched = common.sparse_step(static_model, static, loss, jit, update=False, watch_loss=True)
    xs, ys = tf.stack([x] * STAGED), tf.stack([y] * STAGED)
    staged = common.staged_steps(static_model, static, loss, jit)
    staged_cond = common.staged_steps(static_model, static, loss, jit, update=None)
    rng = np.random.default_rng(0)
    scores = tf.constant(rng.normal(size=(784, 300)).astype("float32"))
    # RigL's two selections at 90% sparsity: keep 70% of the active weights (the rest at -1), then
    # grow 30% of them where a heavy-tailed |gradient| is largest (kept positions at -inf).
    active = rng.random((784, 300)) < 0.1
    drop = np.where(active, np.abs(rng.normal(size=active.shape)), -1.0).astype("float32")
    kept = mask_ops.topk_mask_numpy(drop, int(0.7 * active.sum()))
    gradient = np.abs(rng.normal(size=active.shape) * rng.exponential(size=active.shape))
    grow = np.where(kept, -np.inf, gradient).astype("float32")
    selections = {"k = 10%": (scores, tf.constant(23520)),
                  "RigL drop": (tf.constant(drop), tf.constant(int(0.7 * active.sum()))),
                  "RigL grow": (tf.constant(grow), tf.constant(int(0.3 * active.sum())))}
    topk = tf.function(mask_ops.topk_mask, jit_compile=jit)
    full_sort = tf.function(lambda s: tf.math.top_k(tf.reshape(s, [-1]), k=784 * 300).indices, jit_compile=jit)
    empty_concrete = empty.get_concrete_function(y)
    masked_watched_concrete = masked_watched.get_concrete_function(x, y)
    table = {
        "empty program": (lambda: empty(y), 1000),
        "empty program, concrete call": (lambda: empty_concrete(y), 1000),
        "plain step": (lambda: plain(x, y), 200),
        "plain step + NaN watch": (lambda: watched(x, y), 200),
        "masked step (static), sparse_apply(update=False)": (lambda: masked(x, y), 200),
        "masked step (static), optimizer.apply (in-graph tf.cond)": (lambda: masked_cond(x, y), 200),
        "masked step + NaN watch, concrete call (as ks.Trainer)":
            (lambda: masked_watched_concrete(x, y), 200),
        f"{STAGED} staged steps (static), per step": (lambda: staged(xs, ys), 10),
        f"{STAGED} staged steps (static), optimizer.apply, per step": (lambda: staged_cond(xs, ys), 10),
    }
    for name in ("rigl", "set", "magnitude"):
        model, optimizer = sparse_model(common.algorithm(name, end_step=10**6))
        step = common.sparse_step(model, optimizer, loss, jit, update=True)
        table[f"update step ({name})"] = (lambda s=step: s(x, y), 20)
    for name, (values, keep) in selections.items():
        table[f"topk_mask 784x300, {name}"] = (lambda v=values, c=keep: topk(v, c), 20)
    table["full tf.math.top_k sort 784x300"] = (lambda: full_sort(scores), 10)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="profile_step.json")
    args = parser.parse_args()
    results = {}
    for jit in (True, False):
        table = programs(jit)
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, (call, calls) in table.items():
                per_call = 1000 * common.seconds_per_call(call, calls)
                times[name].append(per_call / STAGED if name.startswith(f"{STAGED} staged") else per_call)
        results["xla" if jit else "no_xla"] = {name: {"ms": statistics.median(v), "rounds": v}
                                               for name, v in times.items()}
    print(f"LeNet-300-100, batch 128, ms per call, median of {args.rounds} rounds\n")
    print(harness.table(["program", "XLA on ms", "XLA off ms"],
                        [[name, f"{results['xla'][name]['ms']:.3f}", f"{results['no_xla'][name]['ms']:.3f}"]
                         for name in results["xla"]]))
    harness.write_json(args.out, results)


if __name__ == "__main__":
    main()
