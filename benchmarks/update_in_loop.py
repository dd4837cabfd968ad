"""What one mask update costs inside the training loop: every iteration of ``Trainer.fit``'s
loop timed on its own, by its distance from the last update.

    python benchmarks/update_in_loop.py [--epochs 30] [--algorithm rigl] [--out update_in_loop.json]

The training-loop setting of ``training_loop.py`` (LeNet-300-100, batch 128, 90% sparsity, one
step a call, XLA on), with epochs of 200 steps and an update every 100: one update at the first
step of each epoch, one in its middle. A ``ks.Callback`` (public API: ``on_step_end`` runs after
every compiled call, outside it) stamps the time at the end of every loop iteration; an
iteration's time is the time since the previous stamp: the compiled call (which on CPU returns
when its work is done), and the loop's host work around it (the next batch, the FLOPs count, and
after an update the read-back of the masks' active counts). The first iteration of each
``fit`` call also holds the call's set-up (the epoch's iterator), so it is left out, and with it
the update at the start of the epoch; the mid-epoch update is the one timed. The table gives
medians over the epochs of: the update iteration, the iterations 0, 1, 2, … after it (after
both updates of an epoch), and the typical iteration (10 or more after an update). "Extra cost
of an update" adds up what an update costs over a plain step: the update iteration minus a
typical one, and the later iterations' excess over it; divided by 100 typical steps, it is the
overhead ``training_loop.py`` measures as RigL ÷ static.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import training_loop  # noqa: E402

import keras_sparse as ks  # noqa: E402

STEPS = 200  # steps an epoch: updates every 100 steps, at the epoch's first step and in its middle
AFTER = 5  # iterations after an update timed one by one; later ones are "typical"
TYPICAL_FROM = 10


class IterationTimer(ks.Callback):
    """Records ``(kind, seconds)`` for every loop iteration: kind "update" when the step it ran
    updated the masks (by ``algorithm``'s schedule), else "train"; seconds None for each ``fit``
    call's first iteration."""

    def __init__(self, algorithm: ks.algorithms.SparseAlgorithm):
        self.algorithm = algorithm
        self.log: list[tuple[str, float | None]] = []
        self.recording = False
        self._last: float | None = None

    def on_train_begin(self, trainer: ks.Trainer) -> None:
        self._last = None  # a fit call's first iteration holds its set-up: not timed

    def on_step_end(self, trainer: ks.Trainer, *losses) -> None:
        now = time.perf_counter()
        if self.recording:
            kind = "update" if self.algorithm.is_update_step(trainer.step - 1) else "train"
            self.log.append((kind, None if self._last is None else now - self._last))
        self._last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="timed 200-step epochs (two updates each, one timed)")
    parser.add_argument("--algorithm", default="rigl", choices=["rigl", "set", "magnitude"])
    parser.add_argument("--out", default="update_in_loop.json")
    args = parser.parse_args()
    data = common.dataset((28, 28, 1), STEPS, 128)
    algorithm = training_loop.algorithm_factories(STEPS, args.epochs)[args.algorithm]()
    trainer = common.trainer(common.lenet_300_100(), algorithm, common.sgd())
    timer = IterationTimer(algorithm)
    warmup = training_loop.warmup_epochs(STEPS)
    trainer.fit(data, epochs=warmup, callbacks=[timer])  # initial masks, both programs compiled
    timer.recording = True
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer.fit(data, epochs=warmup + epoch + 1, callbacks=[timer])
        epochs.append(time.perf_counter() - start)

    by_distance: dict[int, list[float]] = {}
    updates, since = [], None
    for kind, seconds in timer.log:
        if kind == "update":
            if seconds is not None:
                updates.append(seconds)
            since = 0
        elif since is not None:
            if seconds is not None:
                by_distance.setdefault(min(since, TYPICAL_FROM), []).append(seconds)
            since += 1
    ms = {name: 1000 * statistics.median(values) for name, values in
          {"update iteration": updates,
           **{f"iteration {d} after": by_distance[d] for d in range(AFTER)},
           "typical iteration": by_distance[TYPICAL_FROM]}.items()}
    typical = ms["typical iteration"]
    later = sum(ms[f"iteration {d} after"] - typical for d in range(AFTER))
    extra = ms["update iteration"] - typical + later

    print(f"LeNet-300-100, {args.algorithm}, one update every 100 steps, medians over {args.epochs} epochs "
          f"({len(updates)} timed updates)\n")
    print("| loop iteration | ms |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} |")
    print(f"| extra cost of an update: update iteration − typical ({ms['update iteration'] - typical:.3f}) "
          f"+ later iterations' excess ({later:.3f}) | {extra:.3f} |")
    print(f"\n÷ 100 typical steps: {extra / (100 * typical):.1%} overhead, "
          f"i.e. {args.algorithm} ÷ static ≈ {100 * typical / (100 * typical + extra):.3f}")
    harness.write_json(args.out, {"algorithm": args.algorithm, "epochs": args.epochs, "steps_per_epoch": STEPS,
                                  "ms": ms, "extra_ms": extra, "epoch_seconds": epochs, "calls": timer.log})


if __name__ == "__main__":
    main()
