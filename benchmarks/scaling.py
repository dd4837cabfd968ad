"""Step time of the masked train step against a plain dense Keras 3 step as the work grows:
does the masking overhead stay flat?

    python benchmarks/scaling.py [--widths 256 512 1024 2048 4096] [--batches 32 128 512 2048]
        [--width 1024] [--batch 128] [--rounds 5] [--seconds 1] [--no-xla] [--out scaling.json]

Model: the MLP 784 → w → w → 10 (``keras_sparse.models.build(name="mlp", hidden=(w, w))``) on
784-vectors. Two sweeps: (a) width w in ``--widths`` at batch ``--batch``; (b) batch in
``--batches`` at width ``--width`` (the point both sweeps share is measured once).

Both steps are ``tf.function(jit_compile=True)`` with the same body (``common.train_step``):
forward, gradients, SGD-with-momentum update. "Dense" is a plain Keras 3 step on the unwrapped
model; "masked" is the same step through ``ks.SparseOptimizer(SGD, StaticSparse(0.9))``'s
``sparse_apply(..., update=False)`` (gradients masked, kernels re-masked after the update: the
program ``ks.Trainer`` compiles for its plain steps) on the same architecture, wrapped. The
steps a round are chosen once per point, from a timed warm-up of the slower variant, to take
about ``--seconds``; the variants alternate for ``--rounds`` rounds and the medians are reported
(the JSON also has the median of the per-round ratios), because the machines here are shared
and noisy.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import models  # noqa: E402

INPUT = 784
CLASSES = 10


def build_mlp(width: int) -> keras.Model:
    """The MLP 784 → width → width → 10."""
    return models.build((INPUT,), CLASSES, name="mlp", hidden=(width, width))


def measure(width: int, batch: int, rounds: int, seconds: float, jit: bool) -> dict:
    """Alternates the dense and masked steps of the MLP of ``width`` at ``batch``; returns the
    steps/s of every round, their medians and the masked / dense ratio."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, INPUT)).astype("float32"))
    y = tf.constant(rng.integers(0, CLASSES, size=batch))

    keras.utils.set_random_seed(0)
    dense = build_mlp(width)
    dense_step = common.plain_step(dense, keras.optimizers.SGD(0.01, momentum=0.9), loss_fn, jit)

    keras.utils.set_random_seed(0)
    masked = build_mlp(width)
    optimizer = common.sparse_optimizer(masked, ks.algorithms.StaticSparse(sparsity=0.9),
                                        keras.optimizers.SGD(0.01, momentum=0.9))
    masked_step = common.sparse_step(masked, optimizer, loss_fn, jit, update=False)

    steps = min(common.steps_for(dense_step, x, y, seconds), common.steps_for(masked_step, x, y, seconds))
    rates, medians = common.alternate({"dense": dense_step, "masked": masked_step}, x, y, steps, rounds)
    result = {"width": width, "batch": batch, "parameters": dense.count_params(), "xla": jit, "steps": steps,
              "rounds": rounds, "steps_per_second": rates, "median": medians,
              "ms_per_step": {variant: 1000.0 / rate for variant, rate in medians.items()},
              "masked_over_dense": medians["masked"] / medians["dense"],
              "round_ratios": common.round_ratios(rates, "masked", "dense"), "sparsity": ks.sparsity(masked)}
    keras.backend.clear_session()  # the widest models hold ~20M parameters each: let them go
    return result


def print_table(title: str, key: str, results: list[dict]) -> None:
    """One sweep as a markdown table, ``key`` ("width" or "batch") in the first column."""
    print(f"\n{title}\n")
    print(f"| {key} | parameters | steps a round | dense ms/step | masked ms/step | masked / dense steps/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r[key]} | {r['parameters']:,} | {r['steps']} | {r['ms_per_step']['dense']:.2f} "
              f"| {r['ms_per_step']['masked']:.2f} | {r['masked_over_dense']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=128, help="batch of the width sweep")
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128, 512, 2048])
    parser.add_argument("--width", type=int, default=1024, help="width of the batch sweep")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="about how long one variant's round takes")
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--out", default="scaling.json")
    args = parser.parse_args()
    jit = not args.no_xla

    measured: dict[tuple[int, int], dict] = {}

    def point(width: int, batch: int) -> dict:
        if (width, batch) not in measured:
            measured[(width, batch)] = measure(width, batch, args.rounds, args.seconds, jit)
        return measured[(width, batch)]

    by_width = [point(width, args.batch) for width in args.widths]
    by_batch = [point(args.width, batch) for batch in args.batches]
    print(f"MLP 784 → w → w → 10, XLA {'on' if jit else 'off'}, static 90% masks, "
          f"median of {args.rounds} alternating rounds")
    print_table(f"(a) width sweep, batch {args.batch}", "width", by_width)
    print_table(f"(b) batch sweep, width {args.width}", "batch", by_batch)
    with open(args.out, "w") as f:
        json.dump({"by_width": by_width, "by_batch": by_batch}, f, indent=1)


if __name__ == "__main__":
    main()
