"""Steps/s of the whole training loop (``Trainer.fit``) for every algorithm: mask-update
overhead, XLA on against off, and several steps per compiled call.

    python benchmarks/training_loop.py [--steps 300] [--rounds 5] [--steps-per-execution 20]
                                       [--algorithms static rigl ...] [--tables 1 2 3] [--instances 1]

LeNet-300-100 on 28×28×1 inputs, batch 128, SGD with momentum, 90% sparsity (ERK), one epoch
of ``--steps`` in-memory batches a round. Every variant is a ``ks.Trainer`` warmed up by the
epochs that take it past its first mask update (compilation of both programs, and for
early-frozen RigL its freeze); then each round runs one more epoch of every variant
(``trainer.fit(data, epochs=...)``), in a new (seeded) random order each round, timing the
whole call: data iteration, host bookkeeping (FLOPs count, schedule), mask updates and their
host read-back. Medians over rounds; table 1 also gives the median of the per-round ratios to
static (each compares two epochs of the same round) and compares best rounds. Schedules are
set so the timed epochs keep updating: RigL and SET every 100 steps with ``end_step`` past the
last round, magnitude pruning every 100 steps from step 0 to the end, early-frozen RigL frozen
at the end of the warm-up epochs (so its timed epochs are all after the freeze).

Reference rows: "plain dense loop" is a plain Keras 3 train step (``tf.function`` with XLA, one
step per call) in a Python loop over the same ``tf.data`` batches, the loop a Keras 3 user
writes; "+ NaN watch" adds the Trainer's step counter and NaN record to that step (which makes
it faster on CPU, see BENCHMARKS.md); "keras fit dense" is ``model.fit(jit_compile=True)`` on
the unwrapped model. Table (3) divides by the faster of the two plain loops. Every variant
reads the same data set, with tf.data's autotuning off (as the Trainer runs it: see
``ks.trainer.without_autotune``).

Tables: (1) each algorithm ÷ static sparse (XLA on, one step a call); (2) XLA on ÷ off per
algorithm; (3) ``steps_per_execution=K`` ÷ one step a call, and ÷ the plain dense loop.
``--tables`` and ``--algorithms`` time only what the chosen tables and algorithms need (fewer
variants a round puts table 1's epochs closer together in time).

``--instances N`` builds N independent copies of every variant and times each of them every
round; a variant's round time is the mean of its copies'. Copies of the same variant, with the
same weights and programs, run at speeds several percent apart and keep most of that difference
through a run (0.1–9.4% between the slowest and fastest copy in BENCHMARKS.md's runs), as much
as the mask-update overhead being measured: a ratio between two single trainers carries that
luck, and a mean over copies averages it out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import algorithms  # noqa: E402
from keras_sparse.trainer import without_autotune  # noqa: E402

SHAPE, CLASSES, SPARSITY, UPDATE_EVERY = (28, 28, 1), 10, 0.9, 100
ALGORITHMS = ["dense", "static", "snip", "magnitude", "set", "rigl", "rigl_frozen"]


def warmup_epochs(steps: int) -> int:
    """Untimed epochs before the first round: enough to run the first mask update (at step
    ``UPDATE_EVERY``), so that no timed round includes compiling the update program."""
    return UPDATE_EVERY // steps + 1


def algorithm_factories(steps: int, rounds: int) -> dict[str, Callable[[], algorithms.SparseAlgorithm]]:
    """The algorithms, with schedules that keep updating through every timed round."""
    last = steps * (rounds + warmup_epochs(steps) + 1)
    dynamic = dict(sparsity=SPARSITY, update_frequency=UPDATE_EVERY, end_step=last)
    return {
        "dense": lambda: algorithms.Dense(),
        "static": lambda: algorithms.StaticSparse(SPARSITY),
        "snip": lambda: algorithms.SNIP(SPARSITY),
        "magnitude": lambda: algorithms.MagnitudePruning(SPARSITY, begin_step=0, end_step=last,
                                                         frequency=UPDATE_EVERY),
        "set": lambda: algorithms.SET(**dynamic),
        "rigl": lambda: algorithms.RigL(**dynamic),
        "rigl_frozen": lambda: algorithms.RigL(**dynamic, freeze_step=steps * warmup_epochs(steps)),
    }


def make_data(steps: int, batch: int) -> tf.data.Dataset:
    """``steps`` fixed random batches, with tf.data's autotuning off for every variant (the
    Trainer turns it off itself; the plain loops and ``fit`` get the same data)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, *SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, size=steps * batch)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).cache()
    return without_autotune(data)


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(0.01, momentum=0.9)


class Variant:
    """Something that runs one epoch of the data per call, timed by ``run_epoch`` (each time
    also kept in ``seconds``); ``trainer`` is set for the keras-sparse variants."""

    def __init__(self, name: str, epoch: Callable[[int], None], trainer: ks.Trainer | None = None):
        self.name, self._epoch, self.trainer, self.seconds = name, epoch, trainer, []

    def run_epoch(self) -> float:
        start = time.perf_counter()
        self._epoch(len(self.seconds))
        self.seconds.append(time.perf_counter() - start)
        return self.seconds[-1]


def trainer_variant(name: str, make_algorithm, data, jit: bool, steps_per_execution: int) -> Variant:
    trainer = ks.Trainer(ks.wrap(common.lenet_300_100()), make_algorithm(), optimizer(), loss_fn(), jit_compile=jit,
                         progress=False, steps_per_execution=steps_per_execution)
    warmup = warmup_epochs(int(data.cardinality()))
    trainer.fit(data, epochs=warmup)  # initial masks, compilation
    return Variant(name, lambda done: trainer.fit(data, epochs=warmup + done + 1), trainer)


def plain_loop_variant(data, watch_loss: bool) -> Variant:
    step = common.plain_step(common.lenet_300_100(), optimizer(), loss_fn(), jit_compile=True, watch_loss=watch_loss)

    def epoch(_):
        for x, y in data:
            loss = step(x, y)
        loss.numpy()

    epoch(0)
    return Variant("plain dense loop" + (" + NaN watch" if watch_loss else ""), epoch)


def keras_fit_variant(data) -> Variant:
    model = common.lenet_300_100()
    model.compile(optimizer=optimizer(), loss=loss_fn(), jit_compile=True)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return Variant("keras fit dense", lambda _: model.fit(data, epochs=1, verbose=0, shuffle=False))


def paired_ratio(seconds: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of ``name``'s steps/s ÷ ``baseline``'s in the same round: each ratio
    compares two epochs of one round, so a slow stretch of the machine that covers the round
    slows both sides of its ratio (a ratio of medians lets it fall on one side only)."""
    return statistics.median(b / s for s, b in zip(seconds[name], seconds[baseline]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps an epoch (one timed epoch a round)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps-per-execution", type=int, default=20)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=ALGORITHMS,
                        help="algorithms to time (static, the baseline of table 1, is always timed)")
    parser.add_argument("--tables", nargs="+", type=int, choices=[1, 2, 3], default=[1, 2, 3],
                        help="tables to print: 2 adds the XLA-off variants, 3 the K-a-call ones and the "
                             "reference loops")
    parser.add_argument("--instances", type=int, default=1,
                        help="independent copies of every variant, each timed every round; a round's time is "
                             "their mean (identical copies run several percent apart in one process)")
    parser.add_argument("--out", default="training_loop.json")
    args = parser.parse_args()
    k = args.steps_per_execution
    data = make_data(args.steps, args.batch)
    chosen = [name for name in ALGORITHMS if name in args.algorithms or name == "static"]
    factories = {name: make for name, make in algorithm_factories(args.steps, args.rounds).items() if name in chosen}

    variants = []
    for _ in range(args.instances):
        variants += [trainer_variant(name, make, data, jit=True, steps_per_execution=1)
                     for name, make in factories.items()]
        if 2 in args.tables:
            variants += [trainer_variant(f"{name} no-xla", make, data, jit=False, steps_per_execution=1)
                         for name, make in factories.items()]
        if 3 in args.tables:
            variants += [trainer_variant(f"{name} K={k}", make, data, jit=True, steps_per_execution=k)
                         for name, make in factories.items()]
            variants += [plain_loop_variant(data, False), plain_loop_variant(data, True), keras_fit_variant(data)]

    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    order = random.Random(0)
    for _ in range(args.rounds):
        epochs: dict[str, list[float]] = {name: [] for name in seconds}
        # A new order every round: a variant that runs after a heavier one starts with colder
        # caches, and a fixed order would always charge that to the same variant.
        for v in order.sample(variants, len(variants)):
            epochs[v.name].append(v.run_epoch())
        for name, values in epochs.items():
            seconds[name].append(statistics.fmean(values))
    rate = {name: args.steps / statistics.median(values) for name, values in seconds.items()}
    # The machine's slow stretches only ever slow a round down: the best round is the least disturbed one.
    best = {name: args.steps / min(values) for name, values in seconds.items()}
    # How far apart identical copies run: the slowest copy's median epoch ÷ the fastest one's.
    copies = {name: [statistics.median(v.seconds) for v in variants if v.name == name] for name in seconds}
    copy_spread = {name: max(values) / min(values) for name, values in copies.items()}
    sparsity = {v.name: v.trainer.sparsity() for v in variants if v.trainer}
    dense_steps = {v.name: v.trainer.dense_gradient_steps for v in variants if v.trainer}

    print(f"LeNet-300-100, batch {args.batch}, {args.steps} steps a round, median of {args.rounds} rounds, "
          f"{args.instances} instance(s) a variant\n")
    print("(1) Trainer.fit, XLA on, one step a call, ÷ static sparse")
    print("| algorithm | steps/s | ÷ static (medians) | ÷ static (median of round ratios) "
          "| best round ÷ static's best | sparsity at end |\n|---|---|---|---|---|---|")
    references = [n for n in ("plain dense loop", "plain dense loop + NaN watch", "keras fit dense") if n in rate]
    for name in [*factories, *references]:
        print(f"| {name} | {rate[name]:.1f} | {rate[name] / rate['static']:.3f} "
              f"| {paired_ratio(seconds, name, 'static'):.3f} | {best[name] / best['static']:.3f} "
              f"| {sparsity.get(name, 0.0):.3f} |")
    if args.instances > 1:
        spreads = sorted(copy_spread.items(), key=lambda item: item[1])
        print(f"\nIdentical copies, slowest ÷ fastest by median epoch: {spreads[0][1]:.3f} ({spreads[0][0]}) to "
              f"{spreads[-1][1]:.3f} ({spreads[-1][0]})")
    if 2 in args.tables:
        print("\n(2) XLA on ÷ off, one step a call")
        print("| algorithm | XLA on steps/s | XLA off steps/s | on ÷ off |\n|---|---|---|---|")
        for name in factories:
            on, off = rate[name], rate[f"{name} no-xla"]
            print(f"| {name} | {on:.1f} | {off:.1f} | {on / off:.3f} |")
    if 3 in args.tables:
        plain = max(rate["plain dense loop"], rate["plain dense loop + NaN watch"])
        print(f"\n(3) {k} steps a call (XLA on) ÷ one step a call, and ÷ the faster plain dense loop "
              f"({plain:.1f} steps/s)")
        print(f"| algorithm | 1 a call | {k} a call | ÷ 1 a call | ÷ plain dense loop |\n|---|---|---|---|---|")
        for name in factories:
            many = rate[f"{name} K={k}"]
            print(f"| {name} | {rate[name]:.1f} | {many:.1f} | {many / rate[name]:.3f} | {many / plain:.3f} |")
    with open(args.out, "w") as f:
        json.dump({"batch": args.batch, "steps": args.steps, "rounds": args.rounds, "steps_per_execution": k,
                   "instances": args.instances, "copy_seconds": {name: [v.seconds for v in variants if v.name == name]
                                                                 for name in seconds},
                   "seconds": seconds, "steps_per_second": rate, "sparsity": sparsity,
                   "dense_gradient_steps": dense_steps}, f, indent=1)


if __name__ == "__main__":
    main()
