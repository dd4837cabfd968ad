"""Steps/s of the whole training loop (``Trainer.fit``) for every algorithm: mask-update
overhead, XLA on against off, and several steps per compiled call.

    python benchmarks/training_loop.py [--steps 300] [--rounds 5] [--steps-per-execution 20]
                                       [--algorithms static rigl ...] [--tables 1 2 3] [--instances 1]
    python benchmarks/training_loop.py --combine A.json B.json ...

LeNet-300-100 on 28×28×1 inputs, batch 128, SGD with momentum, 90% sparsity (ERK), one epoch
of ``--steps`` in-memory batches a round. Every variant is a ``ks.Trainer`` warmed up by the
epochs that take it past its first mask update (compilation of both programs, and for
early-frozen RigL its freeze); then each round runs one more epoch of every variant, in a new
(seeded) random order each round, timing the whole ``fit`` call: data iteration, host
bookkeeping, mask updates and their host read-back. Schedules keep updating through every timed
round: RigL and SET every 100 steps with ``end_step`` past the last round, magnitude pruning
every 100 steps from step 0 to the end, early-frozen RigL frozen at the end of the warm-up (so
its timed epochs are all after the freeze).

Reference rows: "plain dense loop" is a plain Keras 3 train step (``tf.function`` with XLA, one
step per call) in a Python loop over the same ``tf.data`` batches, the loop a Keras 3 user
writes; "+ NaN watch" adds the Trainer's step counter and NaN record to that step (which changes
its speed on CPU: BENCHMARKS.md); "keras fit dense" is ``model.fit(jit_compile=True)`` on the
unwrapped model. Every variant reads the same data set, with tf.data's autotuning off (as the
Trainer runs its data).

Tables: (1) each algorithm ÷ static sparse (XLA on, one step a call), as the ratio of medians,
the median of per-round ratios (each compares two epochs of the same round, which a slow stretch
of the machine covering the round slows alike) and the ratio of best rounds; (2) XLA on ÷ off per
algorithm; (3) ``steps_per_execution=K`` ÷ one step a call, and ÷ the plain dense loops.
``--tables`` and ``--algorithms`` time only what the chosen tables and algorithms need (fewer
variants a round puts table 1's epochs closer together in time).

``--instances N`` builds N independent copies of every variant and times each of them every
round; a variant's round time is the mean of its copies'. Identical copies (same weights, same
programs, one process) run at speeds several percent apart and keep most of that difference
through a run: a ratio between two single trainers carries that luck, and a mean over copies
averages it out.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402

import keras_sparse as ks  # noqa: E402

UPDATE_EVERY = 100
PLAIN = ("plain dense loop", "plain dense loop + NaN watch")
REFERENCES = (*PLAIN, "keras fit dense")


def warmup_epochs(steps: int) -> int:
    """Untimed epochs before the first round: enough to run the first mask update (at step
    ``UPDATE_EVERY``), so that no timed round includes compiling the update program."""
    return UPDATE_EVERY // steps + 1


def algorithm_factories(steps: int, rounds: int) -> dict[str, Callable[[], ks.algorithms.SparseAlgorithm]]:
    """The algorithms, with schedules that keep updating through every timed round."""
    last = steps * (rounds + warmup_epochs(steps) + 1)
    return {name: (lambda name=name: common.algorithm(name, UPDATE_EVERY, end_step=last,
                                                      freeze_step=steps * warmup_epochs(steps)))
            for name in common.ALGORITHMS}


class Variant:
    """Something that runs one epoch of the data per call, timed by ``run_epoch`` (each time
    also kept in ``seconds``); ``model`` and ``trainer`` are set for the keras-sparse variants."""

    def __init__(self, name: str, epoch: Callable[[], None], model=None, trainer: ks.Trainer | None = None):
        self.name, self._epoch, self.model, self.trainer, self.seconds = name, epoch, model, trainer, []

    def run_epoch(self) -> float:
        start = time.perf_counter()
        self._epoch()
        self.seconds.append(time.perf_counter() - start)
        return self.seconds[-1]


def trainer_variant(name: str, make_algorithm, data, steps: int, jit: bool, steps_per_execution: int) -> Variant:
    model = common.lenet_300_100()
    trainer = common.trainer(model, make_algorithm(), common.sgd(), steps_per_execution, jit)
    epoch = common.epochs_of(trainer, data)
    epoch(warmup_epochs(steps))  # initial masks, compilation; one call: the freeze step lies inside it
    return Variant(name, epoch, model, trainer)


def plain_loop_variant(data, watch_loss: bool) -> Variant:
    step = common.plain_step(common.lenet_300_100(), common.sgd(), common.loss_fn(), jit_compile=True,
                             watch_loss=watch_loss)

    def epoch():
        for x, y in data:
            loss = step(x, y)
        loss.numpy()

    epoch()
    return Variant(PLAIN[watch_loss], epoch)


def keras_fit_variant(data) -> Variant:
    model = common.lenet_300_100()
    model.compile(optimizer=common.sgd(), loss=common.loss_fn(), jit_compile=True)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return Variant("keras fit dense", lambda: model.fit(data, epochs=1, verbose=0, shuffle=False))


def report(runs: list[dict]) -> str:
    """The tables of one run, or of several (cells "A / B / …"; rows and tables that every run has)."""
    def rate(run, name):  # median steps/s
        return run["steps"] / statistics.median(run["seconds"][name])

    def best(run, name):  # steps/s of the fastest round: slow stretches only ever slow a round down
        return run["steps"] / min(run["seconds"][name])

    def paired(run, name):  # the median of the per-round ratios to static
        return statistics.median(b / s for s, b in zip(run["seconds"][name], run["seconds"]["static"]))

    def everywhere(name):
        return all(name in run["seconds"] for run in runs)

    first = runs[0]
    k = first["steps_per_execution"]
    algorithms = [n for n in first["algorithms"] if everywhere(n)]
    out = [f"LeNet-300-100, batch {first['batch']}, {first['steps']} steps a round, "
           + harness.cells(runs, lambda run: f"{run['rounds']} rounds", 0)
           + ", " + harness.cells(runs, lambda run: f"{run['instances']} instance(s) a variant", 0)]
    rows = [[name, harness.cells(runs, lambda run, n=name: rate(run, n), 1),
             harness.cells(runs, lambda run, n=name: rate(run, n) / rate(run, "static")),
             harness.cells(runs, lambda run, n=name: paired(run, n)),
             harness.cells(runs, lambda run, n=name: best(run, n) / best(run, "static")),
             harness.cells(runs, lambda run, n=name: run["sparsity"].get(n, 0.0))]
            for name in [*algorithms, *(n for n in REFERENCES if everywhere(n))]]
    out.append("(1) Trainer.fit, XLA on, one step a call, ÷ static sparse\n\n" + harness.table(
        ["algorithm", "median steps/s", "÷ static (medians)", "÷ static (median of round ratios)",
         "÷ static (best rounds)", "sparsity at end"], rows))
    if all(run["instances"] > 1 for run in runs):
        def copies(run):  # the slowest copy's median epoch ÷ the fastest one's, widest over variants
            spreads = {name: max(map(statistics.median, c)) / min(map(statistics.median, c))
                       for name, c in run["copy_seconds"].items()}
            low, high = min(spreads, key=spreads.get), max(spreads, key=spreads.get)
            return f"{spreads[low]:.3f} ({low}) to {spreads[high]:.3f} ({high})"

        out.append("Identical copies, slowest ÷ fastest by median epoch: " + harness.cells(runs, copies))
    if all(everywhere(f"{n} no-xla") for n in algorithms):
        rows = [[name, harness.cells(runs, lambda run, n=name: rate(run, n), 1),
                 harness.cells(runs, lambda run, n=name: rate(run, f"{n} no-xla"), 1),
                 harness.cells(runs, lambda run, n=name: rate(run, n) / rate(run, f"{n} no-xla"))]
                for name in algorithms]
        out.append("(2) XLA on ÷ off, one step a call (medians)\n\n" + harness.table(
            ["algorithm", "XLA on steps/s", "XLA off steps/s", "on ÷ off"], rows))
    if all(everywhere(f"{n} K={k}") for n in algorithms) and all(everywhere(n) for n in PLAIN):
        def faster_plain(run, pick):
            return max(pick(run, n) for n in PLAIN)

        rows = [[name, harness.cells(runs, lambda run, n=name: rate(run, f"{n} K={k}"), 1),
                 harness.cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / rate(run, n)),
                 harness.cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / faster_plain(run, rate)),
                 harness.cells(runs, lambda run, n=name: best(run, f"{n} K={k}") / faster_plain(run, best)),
                 harness.cells(runs, lambda run, n=name: rate(run, f"{n} K={k}") / rate(run, PLAIN[0]))]
                for name in algorithms]
        out.append(f"(3) {k} steps a call, XLA on; the faster plain loop by median: "
                   + harness.cells(runs, lambda run: faster_plain(run, rate), 1) + " steps/s\n\n" + harness.table(
                       ["algorithm", f"median steps/s, {k} a call", "÷ 1 a call", "÷ faster plain loop (medians)",
                        "÷ faster plain loop (best rounds)", "÷ bare plain loop (medians)"], rows))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps an epoch (one timed epoch a round)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps-per-execution", type=int, default=20)
    parser.add_argument("--algorithms", nargs="+", choices=common.ALGORITHMS, default=common.ALGORITHMS,
                        help="algorithms to time (static, the baseline of table 1, is always timed)")
    parser.add_argument("--tables", nargs="+", type=int, choices=[1, 2, 3], default=[1, 2, 3],
                        help="tables to time: 2 adds the XLA-off variants, 3 the K-a-call ones and the "
                             "reference loops")
    parser.add_argument("--instances", type=int, default=1,
                        help="independent copies of every variant, each timed every round; a round's time is "
                             "their mean (identical copies run several percent apart in one process)")
    parser.add_argument("--out", default="training_loop.json")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=harness.COMBINE_HELP)
    args = parser.parse_args()
    if args.combine:
        print(report(harness.load_runs(args.combine)))
        return
    k = args.steps_per_execution
    data = common.dataset((28, 28, 1), args.steps, args.batch)
    chosen = [name for name in common.ALGORITHMS if name in args.algorithms or name == "static"]
    factories = {name: make for name, make in algorithm_factories(args.steps, args.rounds).items() if name in chosen}

    variants = []
    for _ in range(args.instances):
        variants += [trainer_variant(name, make, data, args.steps, jit=True, steps_per_execution=1)
                     for name, make in factories.items()]
        if 2 in args.tables:
            variants += [trainer_variant(f"{name} no-xla", make, data, args.steps, jit=False, steps_per_execution=1)
                         for name, make in factories.items()]
        if 3 in args.tables:
            variants += [trainer_variant(f"{name} K={k}", make, data, args.steps, jit=True, steps_per_execution=k)
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
    run = {"batch": args.batch, "steps": args.steps, "rounds": args.rounds, "steps_per_execution": k,
           "instances": args.instances, "algorithms": chosen, "seconds": seconds,
           "copy_seconds": {name: [v.seconds for v in variants if v.name == name] for name in seconds},
           "steps_per_second": {name: args.steps / statistics.median(values) for name, values in seconds.items()},
           "sparsity": {v.name: ks.sparsity(v.model) for v in variants if v.model is not None},
           "dense_gradient_steps": {v.name: getattr(v.trainer, "dense_gradient_steps", None)
                                    for v in variants if v.trainer is not None}}
    print(report([run]))
    harness.write_json(args.out, run)


if __name__ == "__main__":
    main()
