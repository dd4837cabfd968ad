"""The fused ``model.fit`` of this working tree against an earlier revision's and ``ks.Trainer``, in
one process.

    python benchmarks/fused_before_after.py --before REV [--model lenet_300_100] [--algorithm rigl]
        [--steps 300] [--rounds 15]

``keras_sparse/fused_steps.py`` of ``--before`` (a git revision) is read with ``git show`` and
loaded as a module of its own beside this tree's; everything else (Keras's ``fit``, the
``SparseOptimizer``, the Trainer) is this tree's, so only the fused train function differs. Three
models of ``--model`` (``common.MODELS``: its batch and optimizer) train with ``--algorithm`` at
90% sparsity (RigL: updates every 100 steps through the whole run) and ``steps_per_execution=20``:
``model.fit`` with this tree's fused train function ("after"), with the revision's ("before"),
and ``ks.Trainer``. After two untimed epochs each, every round times one epoch of ``--steps``
fixed random batches of each, in a new seeded random order each round. Printed: epoch ms by
median, and after ÷ Trainer, before ÷ Trainer and after ÷ before in speed, as medians of the
per-round ratios. One process, so the three share its speed: on the 2-core VM, separate
processes of the same program run up to 2 × apart.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import fused_steps  # noqa: E402

K = 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_at(revision: str):
    """``keras_sparse/fused_steps.py`` of ``revision``, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{revision}:keras_sparse/fused_steps.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    folder = tempfile.mkdtemp(prefix="fused_before_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # kept until then: autograph reads the source
    path = os.path.join(folder, "fused_steps.py")
    with open(path, "w") as file:
        file.write(source)
    spec = importlib.util.spec_from_file_location(f"fused_steps_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a git revision")
    parser.add_argument("--model", default="lenet_300_100", choices=sorted(common.MODELS))
    parser.add_argument("--algorithm", default="rigl", choices=["static", "rigl"])
    parser.add_argument("--steps", type=int, default=300, help="steps an epoch")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    shape, batch, _ = common.MODELS[args.model]
    data = common.dataset(shape, args.steps, batch)
    total = args.steps * (args.rounds + 3)

    def algorithm():
        return common.algorithm(args.algorithm, end_step=total)

    def fused_fit(module):
        model = common.build(args.model)
        optimizer = ks.SparseOptimizer(common.optimizer_for(args.model), algorithm(), total_steps=total, model=model)
        model.compile(optimizer=optimizer, loss=common.loss_fn(), jit_compile=True, steps_per_execution=K)
        model.make_train_function()
        model.train_function = module._FusedTrainFunction(model, model.train_function)
        return lambda: model.fit(data, epochs=1, verbose=0, shuffle=False)

    trainer = common.trainer(common.build(args.model), algorithm(), common.optimizer_for(args.model), K)
    epochs = [0]

    def trainer_epoch() -> None:
        epochs[0] += 1
        trainer.fit(data, epochs=epochs[0])

    loops = {"after": fused_fit(fused_steps), "before": fused_fit(module_at(args.before)), "trainer": trainer_epoch}
    for epoch in loops.values():
        epoch()
        epoch()
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for round_ in range(args.rounds):
        for name in random.Random(round_).sample(list(loops), len(loops)):
            start = time.perf_counter()
            loops[name]()
            seconds[name].append(time.perf_counter() - start)

    def speed_ratio(a: str, b: str) -> float:
        return statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b]))

    print(f"{args.model}, {args.algorithm}, K = {K}, {args.steps}-step epochs, {args.rounds} rounds; "
          f"before = {args.before}")
    print("| epoch ms: after / before / Trainer | after ÷ Trainer | before ÷ Trainer | after ÷ before |")
    print("|---|---|---|---|")
    print(f"| {' / '.join(f'{statistics.median(seconds[n]) * 1e3:.1f}' for n in loops)} | "
          f"{speed_ratio('after', 'trainer'):.3f} | {speed_ratio('before', 'trainer'):.3f} | "
          f"{speed_ratio('after', 'before'):.3f} |")


if __name__ == "__main__":
    sys.exit(main())
