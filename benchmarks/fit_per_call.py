"""The fused ``model.fit`` against ``ks.Trainer`` split into a cost per compiled call and a cost per
``fit`` call, from epochs of two lengths.

    python benchmarks/fit_per_call.py [--model lenet_300_100] [--steps 40 320] [--rounds 15]

``fit_vs_trainer.py`` times one ``fit`` call per epoch, so each epoch also carries what a ``fit``
call costs before and after its steps (Keras's set-up of the epoch iterator and callbacks, and
the fused function's first chunk of a new iterator, pulled on the call's path). Here both loops
train static 90% sparsity at ``steps_per_execution=20`` (models, batches and optimizers as
``common.MODELS``), one epoch a round on ``--steps`` fixed random batches of each of two lengths:
``model.fit(data, epochs=1)`` after ``ks.fuse_steps(model)``, and ``trainer.fit(data, epochs=...)``
one epoch further (one Trainer per length). The rounds alternate loops and lengths; from the
medians of the two lengths' epoch times, a line through them gives the ms a call of 20 steps
(its slope) and the ms a ``fit`` call adds (its value at zero calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402

import keras_sparse as ks  # noqa: E402

K = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet_300_100", choices=sorted(common.MODELS))
    parser.add_argument("--steps", type=int, nargs=2, default=[40, 320], help="two epoch lengths, multiples of 20")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    short, long = sorted(args.steps)
    if short % K or long % K or short == long:
        raise SystemExit(f"--steps: two different multiples of {K}, e.g. --steps 40 320")
    shape, batch, _ = common.MODELS[args.model]
    data = {n: common.dataset(shape, n, batch) for n in (short, long)}

    model = common.build(args.model)
    optimizer = ks.SparseOptimizer(common.optimizer_for(args.model), common.algorithm("static"), model=model)
    model.compile(optimizer=optimizer, loss=common.loss_fn(), jit_compile=True, steps_per_execution=K)
    if not ks.fuse_steps(model):
        raise SystemExit("fuse_steps does not apply to this model")
    trainers = {n: common.trainer(common.build(args.model), common.algorithm("static"),
                                  common.optimizer_for(args.model), K) for n in data}
    epochs = {n: 0 for n in data}

    def fused_fit(n: int) -> None:
        model.fit(data[n], epochs=1, verbose=0, shuffle=False)

    def trainer(n: int) -> None:
        epochs[n] += 1
        trainers[n].fit(data[n], epochs=epochs[n])

    loops = {"fused model.fit": fused_fit, "ks.Trainer": trainer}
    for run in loops.values():  # compilation, and the first epoch of each length
        for n in data:
            run(n)
            run(n)
    seconds = {(name, n): [] for name in loops for n in data}
    for r in range(args.rounds):
        order = [(name, n) for name in loops for n in data]
        for name, n in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            loops[name](n)
            seconds[name, n].append(time.perf_counter() - start)

    print(f"{args.model}, static 90%, K = {K}, epochs of {short} and {long} steps, {args.rounds} rounds; "
          "medians, ms")
    print(f"| loop | epoch of {short} | epoch of {long} | a call of {K} steps | a fit call adds |")
    print("|---|---|---|---|---|")
    per_call = {}
    for name in loops:
        a, b = (statistics.median(seconds[name, n]) * 1e3 for n in (short, long))
        per_call[name] = (b - a) / ((long - short) / K)
        print(f"| {name} | {a:.1f} | {b:.1f} | {per_call[name]:.2f} | {a - per_call[name] * short / K:.1f} |")
    print(f"a call: Trainer ÷ fused fit = {per_call['ks.Trainer'] / per_call['fused model.fit']:.3f} "
          "(> 1: the fused fit's calls are faster)")


if __name__ == "__main__":
    main()
