"""Epoch times with tf.data's autotuning on and off: what ``without_autotune`` saves.

    python benchmarks/epoch_end.py [--rounds 15] [--steps 300] [--variants ...] [--out epoch_end.json]

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
  RigL 90%, batch 64, 62 steps), training and then evaluating on the test set, as
  ``binaries/train.py`` does each epoch.

"on" gives the data set ``options.autotune.enabled = True`` (TensorFlow's default, which the
Trainer keeps when the data set sets it); "off" leaves the options alone, so the Trainer turns
autotuning off (for ``plain_loop`` and ``keras_fit``, "off" sets ``autotune.enabled = False`` on
the data itself).
Reported: median and best epoch, and how many epochs took over 1.2× the variant's best.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import experiment  # noqa: E402

STALL = 1.2  # an epoch over 1.2× the variant's best counts as slowed down


def autotune(data: tf.data.Dataset, enabled: bool) -> tf.data.Dataset:
    options = tf.data.Options()
    options.autotune.enabled = enabled
    return data.with_options(options)


def lenet_data(steps: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 128, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=steps * 128)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(128, drop_remainder=True).cache()


def loss_fn() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trainer_epochs(data: tf.data.Dataset, steps_per_execution: int) -> Callable[[], None]:
    trainer = ks.Trainer(ks.wrap(common.lenet_300_100()), ks.algorithms.StaticSparse(0.9),
                         keras.optimizers.SGD(0.01, momentum=0.9), loss_fn(), progress=False,
                         steps_per_execution=steps_per_execution)

    done = [0]

    def epoch() -> None:
        done[0] += 1
        trainer.fit(data, epochs=done[0])

    return epoch


def plain_loop_epochs(data: tf.data.Dataset, teardown: list[float]) -> Callable[[], None]:
    """An epoch of a plain loop; appends how long destroying its exhausted iterator took."""
    step = common.plain_step(common.lenet_300_100(), keras.optimizers.SGD(0.01, momentum=0.9), loss_fn(),
                             jit_compile=True)

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
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss_fn(), jit_compile=True)
    return lambda: model.fit(data, epochs=1, verbose=0, shuffle=False)


@functools.cache
def parse_rigl_gin() -> None:
    """Once per process: gin locks its configuration once a run is built from it."""
    experiment.parse_gin(["rigl.gin"], ["training.progress = False"])


def mnist1d_epochs(enabled: bool | None) -> Callable[[], None]:
    parse_rigl_gin()
    run = experiment.build_run(seed=0)
    train_epoch = run.data.train_epoch
    test = run.data.test
    if enabled is not None:
        train_epoch, test = (lambda e: autotune(run.data.train_epoch(e), enabled)), autotune(test, enabled)
    done = [0]

    def epoch() -> None:
        done[0] += 1
        run.trainer.fit(train_epoch, done[0], validation_data=test, steps_per_epoch=run.data.steps_per_epoch)

    return epoch


def pairs(steps: int, teardown: dict[str, list[float]]) -> dict[str, dict[str, Callable[[], Callable[[], None]]]]:
    """Variant → {"on": factory, "off": factory}; factories build lazily, so only the chosen run.
    ``teardown`` gets the plain loop's iterator destruction times under "on" and "off"."""
    data = lenet_data(steps)
    return {
        "plain_loop": {"on": lambda: plain_loop_epochs(autotune(data, True), teardown.setdefault("on", [])),
                       "off": lambda: plain_loop_epochs(autotune(data, False), teardown.setdefault("off", []))},
        "trainer": {"on": lambda: trainer_epochs(autotune(data, True), 1), "off": lambda: trainer_epochs(data, 1)},
        "trainer_k20": {"on": lambda: trainer_epochs(autotune(data, True), 20),
                        "off": lambda: trainer_epochs(data, 20)},
        "keras_fit": {"on": lambda: keras_fit_epochs(autotune(data, True)),
                      "off": lambda: keras_fit_epochs(autotune(data, False))},
        "mnist1d": {"on": lambda: mnist1d_epochs(True), "off": lambda: mnist1d_epochs(None)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=300, help="steps an epoch of the LeNet-300-100 variants")
    names = ["plain_loop", "trainer", "trainer_k20", "keras_fit", "mnist1d"]
    parser.add_argument("--variants", nargs="+", default=names, choices=names)
    parser.add_argument("--out", default="epoch_end.json")
    args = parser.parse_args()

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

    print(f"Epoch wall time, {args.rounds} alternating rounds per pair; tf.data autotuning on ÷ off\n")
    print("| variant | autotune | median ms | best ms | epochs over 1.2× best | total s | median off ÷ on |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        on, off = seconds[f"{variant} on"], seconds[f"{variant} off"]
        for setting, values in (("on", on), ("off", off)):
            slowed = sum(v > STALL * min(values) for v in values)
            ratio = f"{statistics.median(off) / statistics.median(on):.3f}" if setting == "off" else ""
            print(f"| {variant} | {setting} | {1000 * statistics.median(values):.1f} | {1000 * min(values):.1f} "
                  f"| {slowed} / {len(values)} | {sum(values):.2f} | {ratio} |")
    if teardown:
        print("\nDestroying the plain loop's exhausted iterator at the end of each epoch\n")
        print("| autotune | median ms | max ms | epochs where it took over 5 ms |\n|---|---|---|---|")
        for setting, values in teardown.items():
            print(f"| {setting} | {1000 * statistics.median(values):.2f} | {1000 * max(values):.1f} "
                  f"| {sum(v > 0.005 for v in values)} / {len(values)} |")
    with open(args.out, "w") as f:
        json.dump({"rounds": args.rounds, "steps": args.steps, "seconds": seconds, "teardown_seconds": teardown},
                  f, indent=1)
    print(f"\nraw epoch times: {args.out}")


if __name__ == "__main__":
    main()
