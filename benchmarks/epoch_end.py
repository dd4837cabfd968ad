"""Epoch times with tf.data's autotuning on and off: what ``without_autotune`` saves.

    python benchmarks/epoch_end.py [--rounds 15] [--steps 300] [--variants ...] [--out epoch_end.json]
    python benchmarks/epoch_end.py --combine A.json B.json ...

Every epoch of a ``tf.data`` loop ends by destroying its iterator, and destroying an iterator
over an autotuned pipeline can wait for the autotuner to wake. ``ks.Trainer`` therefore turns
autotuning off unless the data set sets it (Keras's ``model.fit``, with or without a
``ks.SparseOptimizer``, leaves the data as it is given). This script times whole epochs both
ways, each pair of variants taking turns round by round in one process:

- ``plain_loop``: a Python loop over the data calling a plain Keras 3 XLA train step (dense
  LeNet-300-100, batch 128, ``--steps`` batches), which also times the destruction of the
  exhausted iterator on its own (second table);
- ``trainer``: ``ks.Trainer.fit``, LeNet-300-100 at 90% static sparsity, batch 128, XLA, one
  epoch of ``--steps`` in-memory batches a round, one step a call;
- ``trainer_k20``: the same with ``steps_per_execution=20``;
- ``keras_fit``: plain Keras 3 ``model.fit(jit_compile=True)`` of the dense LeNet-300-100 on the
  same batches (Keras makes a new iterator each epoch too);
- ``mnist1d``: the main job's epoch, ``gin_configs/rigl.gin`` at its settings (MNIST-1D CNN,
  RigL 90%, batch 64, 62 steps; ``common.mnist1d_run``), training and then evaluating on the
  test set.

"on" gives the data set ``options.autotune.enabled = True`` (TensorFlow's default, which the
Trainer keeps when the data set sets it); "off" leaves the options alone, so the Trainer turns
autotuning off (for ``plain_loop`` and ``keras_fit``, "off" sets ``autotune.enabled = False`` on
the data itself).
Reported: median and best epoch, and how many epochs took over 1.2× the variant's best.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOWED = 1.2  # an epoch over 1.2× the variant's best counts as slowed down
TEARDOWN_SLOW = 0.005  # seconds: an iterator's destruction that waited


def trainer_epochs(data: tf.data.Dataset, steps_per_execution: int) -> Callable[[], None]:
    trainer = common.trainer(common.lenet_300_100(), common.algorithm("static"), common.sgd(), steps_per_execution)
    return common.epochs_of(trainer, data)


def plain_loop_epochs(data: tf.data.Dataset, teardown: list[float]) -> Callable[[], None]:
    """An epoch of a plain loop; appends how long destroying its exhausted iterator took."""
    step = common.plain_step(common.lenet_300_100(), common.sgd(), common.loss_fn(), jit_compile=True)

    def epoch() -> None:
        iterator = iter(data)
        for x, y in iterator:
            loss = step(x, y)
        loss.numpy()
        start = time.perf_counter()
        del iterator  # what ends every epoch of every tf.data loop
        teardown.append(time.perf_counter() - start)

    return epoch


def keras_fit_epochs(data: tf.data.Dataset) -> Callable[[], None]:
    model = common.lenet_300_100()
    model.compile(optimizer=common.sgd(), loss=common.loss_fn(), jit_compile=True)
    return lambda: model.fit(data, epochs=1, verbose=0, shuffle=False)


def mnist1d_epochs(enabled: bool | None) -> Callable[[], None]:
    trainer, _, data = common.mnist1d_run(harness.gin_bindings(os.path.join(ROOT, "gin_configs", "rigl.gin")))
    train_epoch, test = data.train_epoch, data.test
    if enabled is not None:
        train_epoch, test = (lambda e: common.autotuned(data.train_epoch(e), enabled)), common.autotuned(test, enabled)
    done = [0]

    def epoch() -> None:
        done[0] += 1
        trainer.fit(train_epoch, done[0], validation_data=test, steps_per_epoch=data.steps_per_epoch)

    return epoch


def pairs(steps: int, teardown: dict[str, list[float]]) -> dict[str, dict[str, Callable[[], Callable[[], None]]]]:
    """Variant → {"on": factory, "off": factory}; factories build lazily, so only the chosen run.
    ``teardown`` gets the plain loop's iterator destruction times under "on" and "off"."""
    data = common.dataset((28, 28, 1), steps, 128, autotune=None)
    on, off = common.autotuned(data, True), common.autotuned(data, False)
    return {
        "plain_loop": {"on": lambda: plain_loop_epochs(on, teardown.setdefault("on", [])),
                       "off": lambda: plain_loop_epochs(off, teardown.setdefault("off", []))},
        "trainer": {"on": lambda: trainer_epochs(on, 1), "off": lambda: trainer_epochs(data, 1)},
        "trainer_k20": {"on": lambda: trainer_epochs(on, 20), "off": lambda: trainer_epochs(data, 20)},
        "keras_fit": {"on": lambda: keras_fit_epochs(on), "off": lambda: keras_fit_epochs(off)},
        "mnist1d": {"on": lambda: mnist1d_epochs(True), "off": lambda: mnist1d_epochs(None)},
    }


def report(runs: list[dict]) -> str:
    """The tables of one run, or of several (cells "A / B / …")."""
    variants = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in runs[0]["seconds"]))
    rows = []
    for variant in variants:
        for setting in ("on", "off"):
            name = f"{variant} {setting}"

            def slowed(run, name=name):
                values = run["seconds"][name]
                return f"{sum(v > SLOWED * min(values) for v in values)} of {len(values)}"

            def off_over_on(run, variant=variant):
                return statistics.median(run["seconds"][f"{variant} off"]) / statistics.median(
                    run["seconds"][f"{variant} on"])

            rows.append([variant, setting,
                         harness.cells(runs, lambda run, n=name: 1000 * statistics.median(run["seconds"][n]), 1),
                         harness.cells(runs, lambda run, n=name: 1000 * min(run["seconds"][n]), 1),
                         harness.cells(runs, slowed),
                         harness.cells(runs, lambda run, n=name: sum(run["seconds"][n]), 2),
                         harness.cells(runs, off_over_on) if setting == "off" else ""])
    out = (harness.cells(runs, lambda run: f"{run['rounds']} alternating rounds", 0) + " per pair; epoch wall "
           "time with tf.data autotuning on and off\n\n" + harness.table(
               ["variant", "autotune", "median epoch ms", "best epoch ms", f"epochs over {SLOWED}× best", "total s",
                "median off ÷ on"], rows))
    if all(run.get("teardown_seconds") for run in runs):
        def slow(run, setting):
            values = run["teardown_seconds"][setting]
            return f"{sum(v > TEARDOWN_SLOW for v in values)} of {len(values)}"

        rows = [[setting,
                 harness.cells(runs, lambda run, s=setting: 1000 * statistics.median(run["teardown_seconds"][s]), 2),
                 harness.cells(runs, lambda run, s=setting: 1000 * max(run["teardown_seconds"][s]), 1),
                 harness.cells(runs, lambda run, s=setting: slow(run, s))]
                for setting in runs[0]["teardown_seconds"]]
        out += "\n\nDestroying the plain loop's exhausted iterator at the end of each epoch\n\n" + harness.table(
            ["autotune", "median ms", "max ms", f"epochs over {1000 * TEARDOWN_SLOW:.0f} ms"], rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=300, help="steps an epoch of the LeNet-300-100 variants")
    names = ["plain_loop", "trainer", "trainer_k20", "keras_fit", "mnist1d"]
    parser.add_argument("--variants", nargs="+", default=names, choices=names)
    parser.add_argument("--out", default="epoch_end.json")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=harness.COMBINE_HELP)
    args = parser.parse_args()
    if args.combine:
        print(report(harness.load_runs(args.combine)))
        return

    teardown: dict[str, list[float]] = {}
    factories = pairs(args.steps, teardown)
    seconds: dict[str, list[float]] = {}
    for variant in args.variants:
        epochs = {setting: make() for setting, make in factories[variant].items()}
        for epoch in epochs.values():
            epoch()  # warm-up: compilation, initial masks
        for setting in epochs:
            seconds[f"{variant} {setting}"] = []
        if variant == "plain_loop":
            for values in teardown.values():
                values.clear()  # the warm-up epoch is not counted
        for r in range(args.rounds):
            for setting in (("on", "off") if r % 2 == 0 else ("off", "on")):
                start = time.perf_counter()
                epochs[setting]()
                seconds[f"{variant} {setting}"].append(time.perf_counter() - start)
    run = {"rounds": args.rounds, "steps": args.steps, "seconds": seconds, "teardown_seconds": teardown}
    print(report([run]))
    harness.write_json(args.out, run)


if __name__ == "__main__":
    main()
