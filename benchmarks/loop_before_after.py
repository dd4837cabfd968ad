"""The training loop of this working tree against an earlier revision's, side by side in one run.

    python benchmarks/loop_before_after.py --before REV [--after REV] [--alternations 9]
        [--workers 2] [--steps 300] [--cases ...] [--quick] [--out loop_before_after.json]
    python benchmarks/loop_before_after.py --combine A.json B.json ...

The library of ``--before`` (a git revision; BENCHMARKS.md names the one before the loop was split
into a loop and callbacks) is extracted with ``git archive`` into a temporary folder;
``--after`` is this working tree, or another revision extracted the same way. Both trees run the
same measurement, the code of this script and ``common.py``, in worker processes whose
``PYTHONPATH`` is their tree (each worker checks that ``keras_sparse`` came from it), and only
the library differs. Cases, each a ``ks.Trainer`` with XLA on:

- ``lenet_300_100 static K=1`` / ``K=20``: LeNet-300-100 on fixed random 28×28×1 data, batch 128,
  SGD(0.01, momentum 0.9), static ERK 90% masks, ``steps_per_execution`` 1 or 20, epochs of
  ``--steps`` batches;
- ``lenet_300_100 rigl K=1`` / ``K=20``: the same with RigL (ERK 90%) updating every 100 steps
  through the whole run;
- ``mnist1d rigl.gin``: the default config's run (``gin_configs/rigl.gin`` of the after tree,
  read by ``harness.gin_bindings``, built by ``common.mnist1d_run``: MNIST-1D CNN, RigL 90%,
  batch 64, cosine learning rate, on every training example, so both trees train the same 62
  batches an epoch).

Each worker builds every case and trains its first epoch untimed (compilation, initial masks);
then each of ``--alternations`` rounds times one more epoch of every case in every worker, the
two trees' epochs of a case one right after the other, in an order that alternates from round to
round and case to case. With ``--workers N`` each tree has N worker processes and a round's time
is their mean: identical processes run a few percent apart, which one worker a tree would
charge to the library. Reported per case: steps/s by median over rounds, and after ÷ before as
the median of per-round ratios (both epochs of a ratio from the same round), with its spread.
One JSON file per run (``--out``). ``--quick`` is a smoke run: 100-step LeNet epochs, 3
alternations, one worker a tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET_CASES = [f"lenet_300_100 {algorithm} K={k}" for algorithm in ("static", "rigl") for k in (1, 20)]
MNIST1D_CASE = "mnist1d rigl.gin"
CASES = [*LENET_CASES, MNIST1D_CASE]
UPDATE_EVERY = 100  # RigL's ΔT on LeNet-300-100
WARMUP_EPOCHS = 1


# --------------------------------------------------------------------------------- worker side
class Case:
    """One trainer of the worker: ``epoch()`` trains one more epoch of its data."""

    def __init__(self, name: str, config: dict[str, Any]):
        import common

        import keras_sparse as ks

        self.ks = ks
        if name == MNIST1D_CASE:
            self.trainer, self.model, data = common.mnist1d_run(config["mnist1d_bindings"])
            self.steps_per_epoch = data.steps_per_epoch
            self.epoch = common.epochs_of(self.trainer, data.train_epoch, data.steps_per_epoch)
        else:
            _, algorithm, k = name.split()
            steps = config["steps"]
            self.model = common.lenet_300_100()
            last = steps * (WARMUP_EPOCHS + config["alternations"] + 1)
            self.trainer = common.trainer(self.model, common.algorithm(algorithm, UPDATE_EVERY, end_step=last),
                                          common.sgd(), steps_per_execution=int(k[2:]))
            self.steps_per_epoch = steps
            self.epoch = common.epochs_of(self.trainer, common.dataset((28, 28, 1), steps, 128))
        self.epoch(WARMUP_EPOCHS)

    def state(self) -> dict[str, Any]:
        return {"step": int(self.trainer.step), "sparsity": float(self.ks.sparsity(self.model))}


def worker(tree: str, config: dict[str, Any]) -> None:
    """Builds every case on the library of ``tree``, then runs one epoch of the case named on
    each line of stdin ("run CASE"), answering one JSON line each."""
    emit = harness.json_lines_out()
    import tensorflow as tf

    import keras_sparse

    origin = os.path.realpath(keras_sparse.__file__)
    if not origin.startswith(os.path.realpath(tree) + os.sep):
        emit({"status": "failed", "error": f"keras_sparse was imported from {origin}, not from {tree}"})
        raise SystemExit(1)
    started = time.perf_counter()
    try:
        cases = {name: Case(name, config) for name in config["cases"]}
    except Exception as error:
        emit(harness.failed_record(error))
        raise
    emit({"status": "ready", "keras_sparse": origin, "tensorflow": tf.__version__,
          "setup_seconds": time.perf_counter() - started,
          "steps_per_epoch": {name: case.steps_per_epoch for name, case in cases.items()}})
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if command != "run":
            break
        start = time.perf_counter()
        cases[name].epoch()
        emit({"seconds": time.perf_counter() - start, **cases[name].state()})


# ----------------------------------------------------------------------------------- main side
def start_workers(side: str, tree: str, count: int, config: dict[str, Any], log_dir: str) -> list[harness.Worker]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    command = harness.worker_command(__file__, tree, config)
    return [harness.Worker(command, env, os.path.join(log_dir, f"{side}{i}.log")) for i in range(count)]


def measure(trees: dict[str, dict[str, Any]], config: dict[str, Any], workers: int) -> dict[str, Any]:
    """Starts the workers of both trees, alternates their epochs, and returns the raw times."""
    log_dir = tempfile.mkdtemp(prefix="loop_before_after_")
    pool = {side: start_workers(side, tree["path"], workers, config, log_dir) for side, tree in trees.items()}
    seconds = {case: {side: [] for side in trees} for case in config["cases"]}  # per round: mean over workers
    copies = {case: {side: [[] for _ in range(workers)] for side in trees} for case in config["cases"]}
    states: dict[str, dict[str, list]] = {case: {side: [] for side in trees} for case in config["cases"]}
    try:
        ready = {side: [w.read() for w in ws] for side, ws in pool.items()}  # set-ups run concurrently
        failed = [f"{side}: {r['error']}" for side, records in ready.items() for r in records if r["status"] != "ready"]
        if failed:
            raise SystemExit("a worker failed: " + "; ".join(failed) + f" (logs: {log_dir})")
        sides = list(trees)
        for r in range(config["alternations"]):
            for c, case in enumerate(config["cases"]):
                for side in (sides if (r + c) % 2 == 0 else sides[::-1]):
                    times = []
                    for i, w in enumerate(pool[side]):
                        record = w.request(f"run {case}")
                        if "status" in record:
                            raise SystemExit(f"{side} worker {i} failed in round {r + 1}: {record['error']}")
                        times.append(record["seconds"])
                        copies[case][side][i].append(record["seconds"])
                        if r == config["alternations"] - 1:
                            states[case][side].append({k: record[k] for k in ("step", "sparsity")})
                    seconds[case][side].append(statistics.fmean(times))
    finally:
        for ws in pool.values():
            for w in ws:
                w.close()
    return {"log_dir": log_dir, "ready": ready, "seconds": seconds, "copy_seconds": copies, "final_state": states}


def problems_of(run: dict[str, Any]) -> list[str]:
    """What makes a case's two sides not the same measurement, or a trainer not where it should be."""
    problems = []
    for case in run["config"]["cases"]:
        steps = {side: {r["steps_per_epoch"][case] for r in records} for side, records in run["ready"].items()}
        if len(set().union(*steps.values())) != 1:
            problems.append(f"{case}: steps an epoch differ between the trees: {steps}")
        for side, states in run["final_state"][case].items():
            expected = next(iter(steps[side])) * (WARMUP_EPOCHS + run["config"]["alternations"])
            for state in states:
                if state["step"] != expected:
                    problems.append(f"{case} ({side}): at step {state['step']}, expected {expected}")
                if abs(state["sparsity"] - 0.9) > 0.005:
                    problems.append(f"{case} ({side}): sparsity {state['sparsity']:.4f}, expected 0.9")
    return problems


def summarize(run: dict[str, Any]) -> None:
    """Adds steps/s and the paired ratios to ``run``, case by case."""
    run["cases"] = {}
    for case in run["config"]["cases"]:
        steps = run["ready"]["before"][0]["steps_per_epoch"][case]
        rates = {side: [steps / s for s in values] for side, values in run["seconds"][case].items()}
        run["cases"][case] = {"steps_per_epoch": steps, "steps_per_second": rates,
                              "median": {side: statistics.median(values) for side, values in rates.items()},
                              "after_over_before": harness.round_ratios(rates, "after", "before")}


def report(runs: list[dict[str, Any]]) -> str:
    """The table of one run, or of several (cells "A / B / …"; cases that every run has)."""
    cases = harness.common_cases(runs)
    rows = []
    for case in cases:
        points = [run["cases"][case] for run in runs]
        q = [p["after_over_before"] for p in points]
        rows.append([case, harness.cells(points, lambda p: p["steps_per_epoch"]),
                     harness.cells(points, lambda p: p["median"]["before"], 1),
                     harness.cells(points, lambda p: p["median"]["after"], 1),
                     harness.cells(points, lambda p: p["median"]["after"] / p["median"]["before"]),
                     *(harness.ratio_cells(q, spread) for spread in (None, "iqr only", "range only"))])

    def side(run, name):
        tree = run["trees"][name]
        dirty = tree.get("uncommitted_library_files")
        return f"{tree['revision']} ({tree['commit'][:7]}" + (f", {dirty} library files changed)" if dirty else ")")

    head = (f"before: {harness.cells(runs, lambda run: side(run, 'before'))}; after: "
            f"{harness.cells(runs, lambda run: side(run, 'after'))}; "
            + harness.cells(runs, lambda run: f"{run['config']['alternations']} alternations × "
                                              f"{run['config']['workers']} worker(s) a tree") + "; XLA on")
    lines = [head, "", harness.table(["case", "steps an epoch", "before steps/s", "after steps/s",
                                      "after ÷ before (medians)", "after ÷ before (median of round ratios)", "IQR",
                                      "min–max"], rows)]
    lines += [f"warning: {problem}" for run in runs for problem in run["problems"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="git revision of the 'before' library (needed to measure)")
    parser.add_argument("--after", default=None, help="git revision of the 'after' library (default: this working "
                                                      "tree as it is)")
    parser.add_argument("--alternations", type=int, default=None, help="timed rounds, at least 3 (default 9)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes a tree (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps an epoch of the LeNet cases (default 300)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--quick", action="store_true", help="smoke run: 100-step LeNet epochs, 3 alternations, "
                                                             "1 worker a tree")
    parser.add_argument("--out", default="loop_before_after.json")
    harness.add_worker_flags(parser)
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, worker):
        return
    if args.before is None:
        parser.error("--before REV is needed: the revision to measure against (BENCHMARKS.md names it)")
    alternations = args.alternations or (3 if args.quick else 9)
    workers = args.workers or (1 if args.quick else 2)
    steps = args.steps or (100 if args.quick else 300)
    if alternations < 3:
        parser.error("--alternations must be at least 3")
    if any(steps % k for case in args.cases if case in LENET_CASES for k in [int(case.split("K=")[1])]):
        parser.error("--steps must be a multiple of 20 (the K=20 cases)")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loop_trees_") as trees_dir:
        trees = {"before": harness.extract(args.before, os.path.join(trees_dir, "before")),
                 "after": (harness.extract(args.after, os.path.join(trees_dir, "after")) if args.after
                           else harness.working_tree())}
        bindings_path = os.path.join(trees["after"]["path"], "gin_configs", "rigl.gin")
        config = {"cases": args.cases, "steps": steps, "alternations": alternations, "workers": workers,
                  "mnist1d_bindings": harness.gin_bindings(bindings_path)}
        run = {"trees": trees, "config": config, **measure(trees, config, workers)}
    harness.finish_run(run, args.out, started, problems_of, summarize, report)


if __name__ == "__main__":
    main()
