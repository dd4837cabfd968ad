"""XLA on or off, one or 20 steps a call: ``ks.Trainer``'s four settings on one model, side by
side (the measurements behind ``Trainer(jit_compile="auto", steps_per_execution="auto")``).

    python benchmarks/xla_and_k.py --model mnist1d_cnn [--steps 100] [--rounds 5] [--out xla_and_k.json]
    python benchmarks/xla_and_k.py --combine A.json B.json ...

One ``ks.Trainer`` per setting (``jit_compile`` True/False × ``steps_per_execution`` 1/20) on the
same model (``common.MODELS``: its batch and optimizer), static ERK 90% masks, fixed random data;
each trains one untimed epoch of ``--steps`` steps (its compilation, reported as the first
epoch's seconds), then ``--rounds`` rounds time one more epoch of every setting, in an order
reversed every other round. Reported: ms a step by median over rounds, and each setting's speed
÷ XLA with one step a call as the median of per-round ratios. To time another revision's library,
put it first on ``PYTHONPATH`` (the script uses the public API only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import common
import harness

import keras_sparse as ks

SETTINGS = [(True, 1), (True, 20), (False, 1), (False, 20)]


def name(jit: bool, k: int) -> str:
    return f"XLA {'on' if jit else 'off'}, K={k}"


def measure(model_name: str, steps: int, rounds: int) -> dict[str, Any]:
    shape, batch, optimizer = common.MODELS[model_name]
    data = common.dataset(shape, steps, batch, distinct=20)
    epochs, first = {}, {}
    for jit, k in SETTINGS:
        trainer = common.trainer(common.build(model_name), common.algorithm("static"), optimizer(), k, jit)
        epochs[name(jit, k)] = common.epochs_of(trainer, data, steps)
        started = time.perf_counter()
        epochs[name(jit, k)]()
        first[name(jit, k)] = time.perf_counter() - started
    seconds: dict[str, list[float]] = {key: [] for key in epochs}
    for r in range(rounds):
        for key in (list(epochs) if r % 2 == 0 else list(epochs)[::-1]):
            started = time.perf_counter()
            epochs[key]()
            seconds[key].append(time.perf_counter() - started)
    return {"first_epoch_seconds": first, "seconds": seconds}


def summarize(run: dict[str, Any]) -> None:
    steps = run["config"]["steps"]
    rates = {key: [steps / s for s in values] for key, values in run["seconds"].items()}
    run["cases"] = {key: {"ms_per_step": 1e3 / statistics.median(rates[key]),
                          "vs_xla_k1": harness.round_ratios(rates, key, name(True, 1)),
                          "first_epoch_seconds": run["first_epoch_seconds"][key]} for key in rates}


def report(runs: list[dict[str, Any]]) -> str:
    rows = [[key, harness.cells(runs, lambda r, key=key: r["cases"][key]["ms_per_step"], 2),
             harness.ratio_cells([r["cases"][key]["vs_xla_k1"] for r in runs], "iqr"),
             harness.cells(runs, lambda r, key=key: r["cases"][key]["first_epoch_seconds"], 1)]
            for key in runs[0]["cases"]]
    title = " / ".join(f"{r['config']['model']} ({r['config']['steps']}-step epochs, {r['config']['rounds']} rounds)"
                       for r in runs)
    return title + "\n\n" + harness.table(
        ["setting", "ms a step", "speed ÷ XLA on, K=1 (IQR)", "first epoch s (compilation)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist1d_cnn", choices=sorted(common.MODELS))
    parser.add_argument("--steps", type=int, default=100, help="steps an epoch, a multiple of 20")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="xla_and_k.json")
    harness.add_worker_flags(parser)
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, lambda *_: None):
        return
    started = time.perf_counter()
    run = {"config": {"model": args.model, "steps": args.steps, "rounds": args.rounds},
           "library": ks.__file__, **measure(args.model, args.steps, args.rounds), "log_dir": "-"}
    harness.finish_run(run, args.out, started, lambda run: [], summarize, report)


if __name__ == "__main__":
    main()
