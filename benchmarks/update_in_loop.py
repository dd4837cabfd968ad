"""What one RigL mask update costs inside the training loop: every compiled call of
``Trainer.fit`` timed on its own, by its distance from the last update.

    python benchmarks/update_in_loop.py [--epochs 30] [--algorithm rigl] [--out update_in_loop.json]

The training-loop setting of ``training_loop.py`` (LeNet-300-100, batch 128, 90% sparsity, one
step a call, XLA on), with epochs of 100 steps, so that each epoch has exactly one update. The
Trainer's two programs are wrapped so that every call is timed up to its result (an update call
includes reading back its masks' active counts), and the host's FLOPs bookkeeping after an
update (``_refresh_densities``) is timed too. The table gives medians over the epochs of:
the update call, the train calls 0, 1, 2, … after it, and the typical train call (10 or more
after an update). "Extra cost of an update" adds up what an update costs over a plain step:
the update call minus a typical call, the later calls' excess over it, and the bookkeeping;
divided by 100 typical steps, it is the overhead ``training_loop.py`` measures as RigL ÷ static.

The per-call timing adds a result read-back to every call (a few µs); the epoch times it
saves are therefore not comparable with ``training_loop.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
import training_loop  # noqa: E402

STEPS = 100  # steps an epoch: one mask update an epoch
AFTER = 5  # train calls after an update timed one by one; later ones are "typical"
TYPICAL_FROM = 10


def timed(program: Callable, log: list, kind: str) -> Callable:
    """``program`` called as before, with each call's time (up to its result) added to ``log``."""
    def call(*args):
        start = time.perf_counter()
        result = program(*args)
        np.asarray(result[0] if isinstance(result, tuple) else result)
        log.append((kind, time.perf_counter() - start))
        return result

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="timed 100-step epochs (one update each)")
    parser.add_argument("--algorithm", default="rigl", choices=["rigl", "set", "magnitude"])
    parser.add_argument("--out", default="update_in_loop.json")
    args = parser.parse_args()
    data = training_loop.make_data(STEPS, 128)
    make = training_loop.algorithm_factories(STEPS, args.epochs)[args.algorithm]
    trainer = ks.Trainer(ks.wrap(common.lenet_300_100()), make(), training_loop.optimizer(), training_loop.loss_fn(),
                         jit_compile=True, progress=False)
    warmup = training_loop.warmup_epochs(STEPS)
    trainer.fit(data, epochs=warmup)  # initial masks, both programs compiled

    log: list[tuple[str, float]] = []
    trainer._train_step = timed(trainer._train_step, log, "train")
    trainer._update_step = timed(trainer._update_step, log, "update")
    refresh = trainer._refresh_densities

    def timed_refresh(counts=None):
        start = time.perf_counter()
        refresh(counts)
        log.append(("bookkeeping", time.perf_counter() - start))

    trainer._refresh_densities = timed_refresh
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        trainer.fit(data, epochs=warmup + epoch + 1)
        epochs.append(time.perf_counter() - start)

    by_distance: dict[int, list[float]] = {}
    updates, bookkeeping, since = [], [], None
    for kind, seconds in log:
        if kind == "update":
            updates.append(seconds)
            since = 0
        elif kind == "bookkeeping":
            bookkeeping.append(seconds)
        elif since is not None:
            by_distance.setdefault(min(since, TYPICAL_FROM), []).append(seconds)
            since += 1
    ms = {name: 1000 * statistics.median(values) for name, values in
          {"update call": updates, "bookkeeping": bookkeeping,
           **{f"train call {d} after": by_distance[d] for d in range(AFTER)},
           "typical train call": by_distance[TYPICAL_FROM]}.items()}
    typical = ms["typical train call"]
    later = sum(ms[f"train call {d} after"] - typical for d in range(AFTER))
    extra = ms["update call"] - typical + later + ms["bookkeeping"]

    print(f"LeNet-300-100, {args.algorithm}, one update every {STEPS} steps, medians over {args.epochs} epochs\n")
    print("| call | ms |\n|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.3f} |")
    print(f"| extra cost of an update: update call − typical ({ms['update call'] - typical:.3f}) + later calls' "
          f"excess ({later:.3f}) + bookkeeping | {extra:.3f} |")
    print(f"\n÷ {STEPS} typical steps: {extra / (STEPS * typical):.1%} overhead, "
          f"i.e. {args.algorithm} ÷ static ≈ {STEPS * typical / (STEPS * typical + extra):.3f}")
    with open(args.out, "w") as f:
        json.dump({"algorithm": args.algorithm, "epochs": args.epochs, "ms": ms, "extra_ms": extra,
                   "epoch_seconds": epochs, "calls": log}, f, indent=1)


if __name__ == "__main__":
    main()
