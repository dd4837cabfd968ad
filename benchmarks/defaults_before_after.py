"""Fast by default (issue 16): what a user gets without choosing settings, before and after.

    python benchmarks/defaults_before_after.py --before REV [--repeats 2] [--parts main resnet]
        [--resnet-steps 200] [--out defaults_before_after.json]
    python benchmarks/defaults_before_after.py --combine A.json B.json ...

``--before`` (a git revision; BENCHMARKS.md names the last one whose defaults were XLA on and one
step a call) is extracted with ``git archive`` into a temporary folder; "after" is this working
tree. Each measurement is a fresh process with ``PYTHONPATH`` set to its tree, the two trees
alternating (before first in odd repeats, after first in even ones). Parts:

- ``main``: the main job, ``python binaries/train.py --gin_config=gin_configs/rigl.gin`` (MNIST-1D
  CNN, RigL 90%, 60 epochs, export included) with nothing else set, each tree its own binary and
  configs: wall time of the whole command, and the epochs' ``seconds`` from its ``metrics.json``
  history (the first epoch holds the compilations);
- ``resnet``: ResNet-20 on random 32×32×3 data (batch 128, SGD + momentum, RigL 90% updating every
  100 steps), ``ks.Trainer(model, algorithm, optimizer, loss)`` with the defaults of its tree,
  trained ``--resnet-steps`` steps as epochs of 50: wall time from building the trainer to the end
  (compilation included), and the steps/s of the last epoch.

Reported: medians over repeats, and after ÷ before of each repeat's pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import harness

EPOCH_STEPS = 50


# --------------------------------------------------------------------------------- worker side
def resnet_worker(tree: str, config: dict[str, Any]) -> None:
    """Trains ResNet-20 with the tree's Trainer defaults; prints one JSON line."""
    emit = harness.json_lines_out()
    import common

    import keras_sparse as ks

    origin = os.path.dirname(os.path.dirname(os.path.abspath(ks.__file__)))
    if os.path.realpath(origin) != os.path.realpath(tree):
        raise SystemExit(f"keras_sparse came from {origin}, not {tree}")
    steps = config["steps"]
    shape, batch, optimizer = common.MODELS["resnet"]
    data = common.dataset(shape, EPOCH_STEPS, batch, distinct=10)
    started = time.perf_counter()
    model = ks.wrap(common.build("resnet"))
    algorithm = ks.algorithms.RigL(sparsity=0.9, distribution="erdos_renyi_kernel", update_frequency=100,
                                   end_step=steps)
    trainer = ks.Trainer(model, algorithm, optimizer(), common.loss_fn(), progress=False)
    trainer.fit(data, epochs=steps // EPOCH_STEPS)
    emit({"seconds": time.perf_counter() - started, "epoch_seconds": [r["seconds"] for r in trainer.history],
          "step": trainer.step, "sparsity": float(ks.sparsity(model)),
          "settings": {k: v for k, v in trainer.summary().items()
                       if k in ("jit_compile", "xla", "steps_per_execution")}})


# ----------------------------------------------------------------------------------- main side
def run_main_job(tree: str, logdir: str) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.join(tree, "binaries", "train.py"),
               f"--gin_config={os.path.join(tree, 'gin_configs', 'rigl.gin')}", f"--logdir={logdir}"]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the main job failed in {tree}: {done.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(logdir, "metrics.json")) as f:
        metrics = json.load(f)
    history = metrics["history"]
    return {"seconds": seconds, "epoch_seconds": [r["seconds"] for r in history],
            "test_accuracy": metrics.get("test_accuracy"),
            "settings": {k: metrics.get(k) for k in ("jit_compile", "xla", "steps_per_execution")}}


def run_resnet(tree: str, steps: int, log_path: str) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="2")
    worker = harness.Worker(harness.worker_command(__file__, tree, {"steps": steps}), env, log_path)
    record = worker.read()
    worker.close()
    if "seconds" not in record:
        raise SystemExit(f"the ResNet-20 worker failed in {tree}: {record.get('error')}")
    return record


def summarize(run: dict[str, Any]) -> None:
    run["summary"] = {}
    for part, sides in run["results"].items():
        pairs = list(zip(sides["before"], sides["after"]))
        row = {}
        for name, value in (("whole", lambda r: r["seconds"]), ("first epoch", lambda r: r["epoch_seconds"][0]),
                            ("later epochs", lambda r: statistics.median(r["epoch_seconds"][1:]))):
            row[name] = {"before": statistics.median(value(b) for b, _ in pairs),
                         "after": statistics.median(value(a) for _, a in pairs),
                         "after_over_before": [value(a) / value(b) for b, a in pairs]}
        row["settings"] = {side: sides[side][0]["settings"] for side in sides}
        run["summary"][part] = row


def report(runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        for part, row in run["summary"].items():
            lines.append(f"\n{part} ({run['config']['repeats']} repeats; before {run['trees']['before']['revision']}, "
                         f"after: working tree at {run['trees']['after']['commit'][:7]}); after settings: "
                         f"{row['settings']['after']}")
            rows = [[name, f"{row[name]['before']:.1f}", f"{row[name]['after']:.1f}",
                     ", ".join(f"{r:.2f}" for r in row[name]["after_over_before"])]
                    for name in ("whole", "first epoch", "later epochs")]
            lines.append(harness.table(["seconds (median)", "before", "after", "after ÷ before, each repeat"], rows))
    return "\n".join(lines)


def problems_of(run: dict[str, Any]) -> list[str]:
    problems = []
    for side, records in run["results"].get("resnet", {}).items():
        for record in records:
            if record["step"] != run["config"]["resnet_steps"] or abs(record["sparsity"] - 0.9) > 0.005:
                problems.append(f"resnet ({side}): step {record['step']}, sparsity {record['sparsity']:.4f}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="git revision of the 'before' library (needed to measure)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=["main", "resnet"], default=["main", "resnet"])
    parser.add_argument("--resnet-steps", type=int, default=200)
    parser.add_argument("--out", default="defaults_before_after.json")
    harness.add_worker_flags(parser)
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, resnet_worker):
        return
    if args.before is None:
        parser.error("--before REV is needed: the revision to measure against (BENCHMARKS.md names it)")
    if args.resnet_steps % EPOCH_STEPS:
        parser.error(f"--resnet-steps must be a multiple of {EPOCH_STEPS}")
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="defaults_before_after_")
    trees = {"before": harness.extract(args.before, os.path.join(work, "before"),
                                       ("keras_sparse", "gin_configs", "binaries")),
             "after": harness.working_tree()}
    results: dict[str, dict[str, list]] = {part: {"before": [], "after": []} for part in args.parts}
    for r in range(args.repeats):
        for part in args.parts:
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                where = os.path.join(work, f"{part}-{side}-{r}")
                if part == "main":
                    record = run_main_job(trees[side]["path"], where)
                else:
                    record = run_resnet(trees[side]["path"], args.resnet_steps, where + ".log")
                results[part][side].append(record)
                print(f"repeat {r + 1} {part} {side}: {record['seconds']:.1f} s {record['settings']}", flush=True)
    run = {"config": {"repeats": args.repeats, "parts": args.parts, "resnet_steps": args.resnet_steps},
           "trees": trees, "results": results, "log_dir": work}
    harness.finish_run(run, args.out, started, problems_of, summarize, report)


if __name__ == "__main__":
    main()
