"""Where the time of a step goes: milliseconds per call of each compiled program involved.

    python benchmarks/profile_step.py [--rounds 5] [--out profile_step.json]

LeNet-300-100, batch 128, SGD with momentum, 90% sparsity, XLA on and off. Each row is one
program called back to back (median over rounds of the mean time a call):

- ``empty program``: an XLA program that returns a scalar: TensorFlow's per-call floor.
- ``empty program, concrete call``: the same called through its concrete function, as the
  Trainer calls its programs (``tf.function`` itself matches the arguments' signature each call).
- ``plain step`` / ``plain step + NaN watch``: a plain Keras 3 dense step, without and with the
  step counter and NaN record the Trainer's step carries.
- ``train step (static)``: ``ks.Trainer``'s step, masks applied, called as the Trainer calls it.
- ``update step (<algorithm>)``: the Trainer's mask-update program (a train step plus the
  algorithm's ``updated_masks``), for RigL, SET and magnitude pruning. Runs every ΔT steps.
- ``20 staged steps (static)``: ``steps_per_execution=20``: one call running 20 steps.
- ``topk_mask 784x300`` and ``full sort 784x300``: keras-sparse's exact top-k mask (bisection
  and secant over the float bit patterns) against the full ``tf.math.top_k`` sort it replaced,
  on the largest kernel's shape, k = 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import algorithms, mask_ops  # noqa: E402

SHAPE, BATCH, SPARSITY = (28, 28, 1), 128, 0.9


def trainer(algorithm: algorithms.SparseAlgorithm, jit: bool, x, y, steps_per_execution: int = 1) -> ks.Trainer:
    t = ks.Trainer(ks.wrap(common.lenet_300_100()), algorithm, keras.optimizers.SGD(0.01, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit, progress=False,
                   steps_per_execution=steps_per_execution)
    t.setup(tf.data.Dataset.from_tensors((x, y)), epochs=1)
    return t


def programs(jit: bool) -> dict[str, tuple[Callable[[], tf.Tensor], int]]:
    """name: (a call, calls a round)."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, *SHAPE)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=BATCH))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    empty = tf.function(lambda v: tf.reduce_sum(v), jit_compile=jit)
    plain = common.plain_step(common.lenet_300_100(), keras.optimizers.SGD(0.01, momentum=0.9), loss, jit)
    watched = common.plain_step(common.lenet_300_100(), keras.optimizers.SGD(0.01, momentum=0.9), loss, jit, watch_loss=True)
    static = trainer(algorithms.StaticSparse(SPARSITY), jit, x, y)
    staged = trainer(algorithms.StaticSparse(SPARSITY), jit, x, y, steps_per_execution=20)
    xs, ys = tf.stack([x] * 20), tf.stack([y] * 20)
    start, count, no = tf.constant(0), tf.constant(20), tf.constant(False)
    updates = {
        "rigl": algorithms.RigL(SPARSITY, update_frequency=100, end_step=10**6),
        "set": algorithms.SET(SPARSITY, update_frequency=100, end_step=10**6),
        "magnitude": algorithms.MagnitudePruning(SPARSITY, begin_step=0, end_step=10**6, frequency=100),
    }
    scores = tf.constant(rng.normal(size=(784, 300)).astype("float32"))
    k = tf.constant(23520)
    topk = tf.function(mask_ops.topk_mask, jit_compile=jit)
    full_sort = tf.function(lambda s: tf.math.top_k(tf.reshape(s, [-1]), k=784 * 300).indices, jit_compile=jit)
    table = {
        "empty program": (lambda: empty(y), 1000),
        "empty program, concrete call": (lambda c=empty.get_concrete_function(y): c(y), 1000),
        "plain step": (lambda: plain(x, y), 200),
        "plain step + NaN watch": (lambda: watched(x, y), 200),
        "train step (static)": (lambda: static._train_step(x, y), 200),
        "20 staged steps (static), per step": (lambda: staged._multi_step(xs, ys, start, count, no), 10),
    }
    for name, algorithm in updates.items():
        t = trainer(algorithm, jit, x, y)
        table[f"update step ({name})"] = (lambda t=t: t._update_step(x, y), 20)
    table["topk_mask 784x300"] = (lambda: topk(scores, k), 20)
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
        times["20 staged steps (static), per step"] = [t / 20 for t in times["20 staged steps (static), per step"]]
        results["xla" if jit else "no_xla"] = {name: {"ms": statistics.median(v), "rounds": v} for name, v in times.items()}
    print(f"LeNet-300-100, batch {BATCH}, ms per call, median of {args.rounds} rounds\n")
    print("| program | XLA on ms | XLA off ms |\n|---|---|---|")
    for name in results["xla"]:
        print(f"| {name} | {results['xla'][name]['ms']:.3f} | {results['no_xla'][name]['ms']:.3f} |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
