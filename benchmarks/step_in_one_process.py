"""Two versions of the library's one-step program in one process, alternated.

    python benchmarks/step_in_one_process.py --before REV [--after REV | --after-tree DIR]
        [--rounds 15] [--steps 300]

Separate processes of one library run the same compiled step 10-40% apart (BENCHMARKS.md, "The
loop before and after its split"), more than the differences worth finding between versions.
Here both versions run in one process: each side's ``keras_sparse`` (``git archive`` of a
revision, or a folder holding a ``keras_sparse`` package: a hand-edited variant) is copied under
a package name of its own, with every ``keras_sparse`` in its sources renamed, so both import side
by side. ``--after`` defaults to this working tree.

Each side builds LeNet-300-100 (``common.lenet_300_100``) with static ERK 90% masks in a
``Trainer`` (XLA on, one step a call, SGD with momentum, batch 128) and trains one 300-step
epoch. Then each round calls each side's one-step program ``--steps`` times on one fixed batch,
the sides alternating which goes first. Printed: µs a step (medians over rounds) and after ÷
before as the median of per-round speed ratios, with their range.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import harness

BATCH_SHAPE = (28, 28, 1)


def renamed_copy(source: str, package: str, into: str) -> str:
    """``source``/keras_sparse copied to ``into``/``package`` with its imports renamed; returns ``into``."""
    target = os.path.join(into, package)
    shutil.copytree(os.path.join(source, "keras_sparse"), target)
    for folder, _, files in os.walk(target):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as file:
                    text = re.sub(r"\bkeras_sparse\b", package, file.read())
                with open(path, "w") as file:
                    file.write(text)
    return into


def side(label: str, revision: str | None, tree: str | None, workdir: str):
    """The library of one side, imported under its own name."""
    if revision is not None:
        tree = harness.extract(revision, os.path.join(workdir, f"{label}_source"), paths=("keras_sparse",))["path"]
    folder = renamed_copy(tree or harness.ROOT, f"keras_sparse_{label}", os.path.join(workdir, label))
    sys.path.insert(0, folder)
    return importlib.import_module(f"keras_sparse_{label}")


def one_step_program(trainer):
    """The trainer's one-step XLA program: ``programs.train[True]``; revisions from before the loop
    was split keep it as ``_train_step``."""
    programs = getattr(trainer, "programs", None)
    if programs is None:
        return trainer._train_step
    return programs.train[True] if isinstance(programs.train, dict) else programs.train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' side")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--after", help="git revision of the 'after' side (default: this working tree)")
    after.add_argument("--after-tree", help="a folder holding the 'after' side's keras_sparse package")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=300, help="calls a side makes in a round")
    args = parser.parse_args()

    import common

    workdir = tempfile.mkdtemp(prefix="step_in_one_process_")
    libraries = {"before": side("before", args.before, None, workdir),
                 "after": side("after", args.after, args.after_tree, workdir)}
    data = common.dataset(BATCH_SHAPE, 300, 128)
    steps = {}
    for label, library in libraries.items():
        trainer = library.Trainer(library.wrap(common.lenet_300_100(), quiet=True),
                                  library.algorithms.StaticSparse(sparsity=common.SPARSITY), common.sgd(),
                                  common.loss_fn(), jit_compile=True, progress=False, steps_per_execution=1)
        trainer.fit(data, epochs=1)
        steps[label] = one_step_program(trainer)
    x, y = next(iter(data))

    def seconds_a_step(label: str) -> float:
        step = steps[label]
        step(x, y)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step(x, y)
        loss.numpy()
        return (time.perf_counter() - start) / args.steps

    times = {"before": [], "after": []}
    for index in range(args.rounds):
        for label in (("before", "after") if index % 2 == 0 else ("after", "before")):
            times[label].append(seconds_a_step(label))
    ratios = [b / a for b, a in zip(times["before"], times["after"])]
    print(f"before {args.before}: {statistics.median(times['before']) * 1e6:.0f} µs a step; "
          f"after {args.after or args.after_tree or 'working tree'}: {statistics.median(times['after']) * 1e6:.0f} µs; "
          f"after ÷ before speed {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f}, "
          f"{args.rounds} rounds)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
