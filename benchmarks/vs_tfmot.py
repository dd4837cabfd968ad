"""Steps/s of gradual magnitude pruning to 90%: keras-sparse against tensorflow-model-optimization.

    python benchmarks/vs_tfmot.py [--steps 300] [--rounds 5] [--steps-per-execution 10]
                                  [--frequency 100] [--variants ...] [--out vs_tfmot.json]
    python benchmarks/vs_tfmot.py --combine A.json B.json ...

Both sides train the same model on the same data with the same schedule: LeNet-300-100
(Flatten, Dense 300 ReLU, Dense 100 ReLU, Dense 10 logits) on 28×28×1 inputs, batch 128,
SGD(0.01, momentum 0.9), sparse categorical cross-entropy on logits, a fixed random in-memory
data set (seed 0; at most 50 distinct batches, cached and repeated to ``--steps`` batches a round).
Every Dense kernel is pruned from 0 to 90% sparsity, uniform per layer, every ``--frequency``
steps from step 0 to ``end_step``, the last multiple of ``--frequency`` inside the whole run
(warm-up + all rounds): the mask updates happen during the timed rounds, and the last one sets
exactly 90%, on both sides. (Setting ``end_step`` to the run's length would leave the last update
at ``end_step - frequency``, about 89.98%, on keras-sparse.)

Variants (each measured as the wall time of one ``fit`` call of ``--steps`` steps):

- ``tfmot``, ``tfmot_xla``: ``prune_low_magnitude`` with ``PolynomialDecay`` and the
  ``UpdatePruningStep`` callback, tf_keras ``model.fit``, ``jit_compile`` off / on.
- ``tfmot_spe``, ``tfmot_xla_spe``: the same with ``steps_per_execution=K``. With tfmot 0.8.1
  this is correct: the pruning wrapper increments its own step in ``call`` (the callback only sets
  it to 0 at the start), so the step advances once per training step, not once per execution.
  The script checks it: each tfmot variant's ``pruning_step`` must equal the steps it trained,
  and its sparsity must reach 90%, or the variant is flagged and left out of the comparison.
- ``tfmot_spe_no_autotune``: ``tfmot_spe`` on data with tf.data's autotuning off, as keras-sparse
  runs it: destroying an autotuned iterator at the end of an epoch can wait for the autotuner
  (BENCHMARKS.md, section 8), which a tfmot user can avoid the same way.
- ``ks_trainer``: ``ks.Trainer(ks.wrap(model), MagnitudePruning(...), jit_compile=True).fit``.
- ``ks_trainer_spe``: the same with ``steps_per_execution=K``.
- ``keras_fit_sparse_optimizer``, ``keras_fit_sparse_optimizer_spe``: Keras 3 ``model.fit`` of
  the wrapped model compiled with ``optimizer=ks.SparseOptimizer(SGD, MagnitudePruning(...),
  total_steps=<the whole run>)``, ``jit_compile=True`` (and ``steps_per_execution=K``),
  ``fit(epochs=1)`` a round, on data with autotuning off (as the Trainer runs it; Keras leaves
  the data as given). The optimizer decides each step's mask update in-graph from the whole
  run's schedule.
- ``keras_dense``, ``keras_dense_spe``: reference, plain Keras 3 ``model.fit`` of the dense
  model, ``jit_compile=True`` (and ``steps_per_execution=K``), on data with autotuning off: the
  loop ``keras_fit_sparse_optimizer*`` runs in.

tfmot needs tf_keras (``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported), which must not
leak into the Keras 3 side: every variant runs in its own persistent worker process (this file
with ``--worker``). Each worker builds its model and runs one untimed warm-up round (tracing,
XLA compilation); then the main process runs the variants one round each, in turn, ``--rounds``
times (the order rotating each round), so the noise of a shared machine hits all of them alike,
and reports medians. Ratios are to the fastest tfmot variant that ran correctly (by median), and,
best round against best round, to the fastest round of any correct tfmot variant. The table also
gives each variant's CPU time per step (the worker process, all its threads, median over rounds):
other jobs on a shared machine move it less than the wall time, though it counts spinning threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import harness

SPARSITY = 0.9
BATCH = 128
INPUT_SHAPE = (28, 28, 1)
MAX_DISTINCT_BATCHES = 50

# name: (framework, options, description). Dicts keep this order in the table.
VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "tfmot": ("tfmot", {"jit": False, "spe": False}, "tfmot, tf_keras fit"),
    "tfmot_xla": ("tfmot", {"jit": True, "spe": False}, "tfmot, tf_keras fit, XLA"),
    "tfmot_spe": ("tfmot", {"jit": False, "spe": True}, "tfmot, tf_keras fit, steps_per_execution=K"),
    "tfmot_xla_spe": ("tfmot", {"jit": True, "spe": True}, "tfmot, tf_keras fit, XLA, steps_per_execution=K"),
    "tfmot_spe_no_autotune": ("tfmot", {"jit": False, "spe": True, "autotune": False},
                              "tfmot, tf_keras fit, steps_per_execution=K, tf.data autotuning off"),
    "ks_trainer": ("ks_trainer", {"spe": False}, "keras-sparse Trainer, XLA"),
    "ks_trainer_spe": ("ks_trainer", {"spe": True}, "keras-sparse Trainer, XLA, steps_per_execution=K"),
    "keras_fit_sparse_optimizer": ("keras_fit_sparse_optimizer", {"spe": False},
                                   "Keras 3 fit with ks.SparseOptimizer, XLA"),
    "keras_fit_sparse_optimizer_spe": ("keras_fit_sparse_optimizer", {"spe": True},
                                       "Keras 3 fit with ks.SparseOptimizer, XLA, steps_per_execution=K"),
    "keras_dense": ("keras_dense", {"spe": False},
                    "Keras 3 dense fit, XLA, no pruning, tf.data autotuning off (reference)"),
    "keras_dense_spe": ("keras_dense", {"spe": True},
                        ("Keras 3 dense fit, XLA, steps_per_execution=K, no pruning, tf.data autotuning off "
                         "(reference)")),
}


# --------------------------------------------------------------------------- worker side
def _dataset(steps: int, autotune: bool | None = None):
    """The same batches on both sides (``common.dataset``: at most 50 distinct batches, repeated
    to ``steps``); ``autotune`` None leaves TensorFlow's default (on), which ``ks.Trainer`` turns
    off itself."""
    import common  # TensorFlow and Keras 3: only in the workers

    return common.dataset(INPUT_SHAPE, steps, BATCH, autotune=autotune, distinct=MAX_DISTINCT_BATCHES)


def _fraction_zero(masks: list) -> float:
    """Fraction of False/0 entries over all ``masks`` together."""
    import numpy as np

    total = sum(int(np.size(m)) for m in masks)
    return 1.0 - sum(int(np.count_nonzero(m)) for m in masks) / total


class Runner:
    """One variant in a worker: ``__init__`` builds it and runs the warm-up round, ``run_round``
    runs one timed round, ``state`` says how far it got."""

    def run_round(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError


class TfmotRunner(Runner):
    """``prune_low_magnitude`` on a tf_keras LeNet-300-100, trained with tf_keras ``fit``."""

    def __init__(self, config: dict[str, Any], jit: bool, spe: bool, autotune: bool | None = None):
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras

        if not tf.keras.__name__.startswith("tf_keras"):
            raise RuntimeError(f"tf.keras is {tf.keras.__name__}, not tf_keras: TF_USE_LEGACY_KERAS was not set")
        self.tfmot = tfmot
        tf_keras.utils.set_random_seed(0)
        layers = tf_keras.layers
        inputs = tf_keras.Input(INPUT_SHAPE)
        x = layers.Flatten()(inputs)
        x = layers.Dense(300, activation="relu", name="fc1")(x)
        x = layers.Dense(100, activation="relu", name="fc2")(x)
        model = tf_keras.Model(inputs, layers.Dense(10, name="logits")(x), name="lenet_300_100")
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=SPARSITY, begin_step=0, end_step=config["end_step"],
            frequency=config["frequency"])
        self.model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        self.model.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                           loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           jit_compile=jit, steps_per_execution=config["spe"] if spe else 1)
        self.data = _dataset(config["steps"], autotune=autotune)
        self.run_round()  # warm-up

    def run_round(self) -> None:
        self.model.fit(self.data, epochs=1, verbose=0, callbacks=[self.tfmot.sparsity.keras.UpdatePruningStep()])

    def state(self) -> dict[str, Any]:
        wrappers = [layer for layer in self.model.layers if getattr(layer, "pruning_vars", None)]
        return {"steps": int(self.model.optimizer.iterations.numpy()),
                "pruning_step": sorted({int(w.pruning_step.numpy()) for w in wrappers}),
                "pruned_kernels": sum(len(w.pruning_vars) for w in wrappers),
                "sparsity": _fraction_zero([mask.numpy() for w in wrappers for _, mask, _ in w.pruning_vars])}


def _magnitude_pruning(config: dict[str, Any]):
    import keras_sparse as ks

    return ks.algorithms.MagnitudePruning(sparsity=SPARSITY, distribution="uniform", begin_step=0,
                                          end_step=config["end_step"], frequency=config["frequency"])


class TrainerRunner(Runner):
    """``ks.Trainer`` on the wrapped model; each round trains one more epoch."""

    def __init__(self, config: dict[str, Any], spe: bool):
        import common

        import keras_sparse as ks

        self.ks = ks
        self.model = common.lenet_300_100()
        self.trainer = common.trainer(self.model, _magnitude_pruning(config), common.sgd(),
                                      steps_per_execution=config["spe"] if spe else 1)
        self.run_round = common.epochs_of(self.trainer, _dataset(config["steps"]))
        self.run_round()  # warm-up

    def state(self) -> dict[str, Any]:
        return {"steps": int(self.trainer.step), "sparsity": self.ks.sparsity(self.model)}


class KerasFitRunner(Runner):
    """Keras 3 ``model.fit`` with XLA, ``fit(epochs=1)`` a round: of the model wrapped through a
    ``ks.SparseOptimizer`` (``sparse``), or of the plain model with the plain optimizer."""

    def __init__(self, config: dict[str, Any], spe: bool, sparse: bool):
        import common

        import keras_sparse as ks

        self.ks, self.sparse = ks, sparse
        self.model = common.lenet_300_100()
        optimizer = common.sgd()
        if sparse:
            total_steps = config["steps"] * (config["rounds"] + 1)  # warm-up round + timed rounds
            optimizer = ks.SparseOptimizer(optimizer, _magnitude_pruning(config), total_steps=total_steps,
                                           model=self.model)
        self.model.compile(optimizer=optimizer, loss=common.loss_fn(), jit_compile=True,
                           steps_per_execution=config["spe"] if spe else 1)
        self.data = _dataset(config["steps"], autotune=False)
        self.run_round()  # warm-up

    def run_round(self) -> None:
        self.model.fit(self.data, epochs=1, verbose=0, shuffle=False)

    def state(self) -> dict[str, Any]:
        steps = int(self.model.optimizer.iterations.numpy())
        if self.sparse:
            return {"steps": steps, "sparsity": self.ks.sparsity(self.model)}
        kernels = [layer.kernel.numpy() for layer in self.model.layers if hasattr(layer, "kernel")]
        return {"steps": steps, "sparsity": _fraction_zero(kernels)}


def _make_runner(variant: str, config: dict[str, Any]) -> Runner:
    framework, options, _ = VARIANTS[variant]
    if framework == "tfmot":
        return TfmotRunner(config, **options)
    if framework == "ks_trainer":
        return TrainerRunner(config, **options)
    return KerasFitRunner(config, **options, sparse=framework == "keras_fit_sparse_optimizer")


def _versions() -> dict[str, str]:
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__}
    for name in ("keras", "tf_keras", "tensorflow_model_optimization"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def worker(variant: str, config: dict[str, Any]) -> None:
    """Builds ``variant`` and warms it up, then runs one round per line read from stdin.

    Writes one JSON line to stdout for the set-up (``status``: ready or failed) and one
    per round; everything else that would go to stdout (TensorFlow's C++ logs included) goes to
    stderr.
    """
    emit = harness.json_lines_out()
    started = time.perf_counter()
    try:
        runner = _make_runner(variant, config)
    except Exception as error:  # reported, e.g. a variant XLA cannot compile
        emit(harness.failed_record(error))
        raise
    emit({"status": "ready", "setup_seconds": time.perf_counter() - started, "versions": _versions(),
          **runner.state()})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        start, cpu_start = time.perf_counter(), time.process_time()
        runner.run_round()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        emit({"seconds": seconds, "steps_per_second": config["steps"] / seconds, "cpu_seconds": cpu_seconds,
              **runner.state()})


# ----------------------------------------------------------------------------- main side
def start_worker(variant: str, config: dict[str, Any], log_dir: str) -> harness.Worker:
    """One variant's worker process (this file with ``--worker``); tfmot's with tf_keras."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if VARIANTS[variant][0] == "tfmot":
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
    command = harness.worker_command(__file__, variant, config)
    return harness.Worker(command, env, os.path.join(log_dir, f"{variant}.log"))


def _check(variant: str, result: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What is wrong with a finished variant's run (empty when nothing is)."""
    problems = []
    expected_steps = config["steps"] * (config["rounds"] + 1)
    if result["steps"] != expected_steps:
        problems.append(f"trained {result['steps']} steps, expected {expected_steps}")
    if not variant.startswith("keras_dense") and abs(result["sparsity"] - SPARSITY) > 0.005:
        problems.append(f"sparsity {result['sparsity']:.4f}, expected {SPARSITY}")
    if "pruning_step" in result and result["pruning_step"] != [result["steps"]]:
        problems.append(f"tfmot pruning_step {result['pruning_step']} != steps trained {result['steps']}")
    return problems


def run(variants: list[str], config: dict[str, Any]) -> dict[str, Any]:
    """Starts one worker per variant, alternates their rounds, and collects the results."""
    log_dir = tempfile.mkdtemp(prefix="vs_tfmot_")
    workers = {v: start_worker(v, config, log_dir) for v in variants}  # set-ups run concurrently: not timed
    results: dict[str, dict[str, Any]] = {}
    try:
        for variant, w in workers.items():
            ready = w.read()
            results[variant] = {"description": VARIANTS[variant][2], **ready, "rates": [], "seconds": [],
                                "cpu_seconds": []}
            if ready["status"] != "ready":
                print(f"note: {variant} {ready['status']}: {ready.get('reason') or ready.get('error')}", flush=True)
        active = [v for v in variants if results[v]["status"] == "ready"]
        for r in range(config["rounds"]):
            order = active[r % len(active):] + active[:r % len(active)] if active else []
            for variant in order:
                if results[variant]["status"] != "ready":
                    continue
                record = workers[variant].request("round")
                if "status" in record:  # the worker died
                    print(f"note: {variant} failed in round {r + 1}: {record['error']}", flush=True)
                    results[variant].update(record)
                    continue
                result = results[variant]
                result["rates"].append(record["steps_per_second"])
                for key in ("seconds", "cpu_seconds"):
                    result[key].append(record[key])
                result.update({k: v for k, v in record.items()
                               if k not in ("seconds", "cpu_seconds", "steps_per_second")})
    finally:
        for w in workers.values():
            w.close()
    for variant, result in results.items():
        if result["status"] == "ready":
            result["status"] = "ok"
            result["median"] = statistics.median(result["rates"])
            result["cpu_ms_per_step"] = 1000 * statistics.median(result["cpu_seconds"]) / config["steps"]
            result["problems"] = _check(variant, result, config)
    return {"log_dir": log_dir, "variants": results}


def valid_tfmot(run: dict[str, Any]) -> list[str]:
    """The tfmot variants of ``run`` that ran and passed ``_check``."""
    return [name for name, r in run["variants"].items()
            if VARIANTS[name][0] == "tfmot" and r["status"] == "ok" and not r["problems"]]


def fastest_tfmot(run: dict[str, Any]) -> str | None:
    return max(valid_tfmot(run), key=lambda name: run["variants"][name]["median"], default=None)


def report(runs: list[dict[str, Any]]) -> str:
    """The table of one run, or of several (cells "A / B / …"; variants that ran in every run).

    Ratios are to the tfmot variant with the best median, and, best round against best round,
    to the fastest round of any valid tfmot variant (slow stretches only ever slow a round down)."""
    def best_tfmot(run):
        return max(max(run["variants"][name]["rates"]) for name in valid_tfmot(run))

    def ratios(run, name, median):
        r = run["variants"][name]
        if not valid_tfmot(run):
            return "–"
        if median:
            return f"{r['median'] / run['variants'][fastest_tfmot(run)]['median']:.2f}"
        return f"{max(r['rates']) / best_tfmot(run):.2f}"

    config = runs[0]["config"]
    names = [name for name in runs[0]["variants"]
             if all(name in run["variants"] and run["variants"][name]["status"] == "ok" for run in runs)]
    rows = []
    for name in names:
        def of(run, name=name):
            return run["variants"][name]

        rows.append([name, of(runs[0])["description"], harness.cells(runs, lambda run: of(run)["median"], 1),
                     harness.cells(runs, lambda run: f"{min(of(run)['rates']):.1f}–{max(of(run)['rates']):.1f}"),
                     harness.cells(runs, lambda run, n=name: ratios(run, n, True)),
                     harness.cells(runs, lambda run, n=name: ratios(run, n, False)),
                     harness.cells(runs, lambda run: of(run)["cpu_ms_per_step"], 2),
                     harness.cells(runs, lambda run: f"{of(run)['sparsity']:.2%}")])
    for run in runs:
        for name, r in run["variants"].items():
            if r["status"] != "ok":
                rows.append([name, r["description"], f"{r['status']}: {r.get('error')}", "", "", "", "", ""])
    warnings = [f"warning: {name}: {problem}" for run in runs for name, r in run["variants"].items()
                for problem in r.get("problems", [])]
    return "\n".join([
        f"LeNet-300-100, batch {config['batch']}, magnitude pruning 0 → {config['sparsity']:.0%} every "
        f"{config['frequency']} steps up to step {config['end_step']} of {config['total_steps']} (1 warm-up round + "
        f"{config['rounds']} timed rounds of {config['steps']} steps), K = {config['spe']}; medians over alternating "
        f"rounds; ratios to the fastest tfmot setting by median: "
        + " / ".join(fastest_tfmot(run) or "none" for run in runs), "",
        harness.table(["variant", "setting", "median steps/s", "min–max", "÷ fastest tfmot (medians)",
                       "best ÷ tfmot's best", "CPU ms/step", "final sparsity"], rows), *warnings])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps a round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each variant, alternating")
    parser.add_argument("--steps-per-execution", type=int, default=10, help="K of the *_spe variants")
    parser.add_argument("--frequency", type=int, default=100, help="steps between mask updates")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="vs_tfmot.json")
    harness.add_worker_flags(parser, VARIANTS)
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, worker):
        return

    total_steps = args.steps * (args.rounds + 1)  # warm-up round + timed rounds
    end_step = args.frequency * ((total_steps - 1) // args.frequency)
    if end_step < args.frequency:
        parser.error(f"the run has {total_steps} steps: fewer than 2 mask updates at --frequency "
                     f"{args.frequency}; use more --steps/--rounds or a smaller --frequency")
    config = {"steps": args.steps, "rounds": args.rounds, "spe": args.steps_per_execution,
              "frequency": args.frequency, "end_step": end_step, "batch": BATCH, "sparsity": SPARSITY}
    outcome = run(args.variants, config)
    versions: dict[str, str] = {}
    for framework_is_tfmot in (True, False):  # tf_keras's versions from a tfmot worker, Keras 3's from another
        versions.update(next((r["versions"] for v, r in outcome["variants"].items()
                              if (VARIANTS[v][0] == "tfmot") == framework_is_tfmot and "versions" in r), {}))
    run_record = {"config": {**config, "total_steps": total_steps}, "python": platform.python_version(),
                  "machine": platform.machine(), "cpus": os.cpu_count(), "versions": versions, **outcome}
    run_record["fastest_tfmot"] = fastest_tfmot(run_record)
    print(report([run_record]))
    harness.write_json(args.out, run_record)
    print(f"\nraw rates: {args.out}; worker logs: {outcome['log_dir']}")

if __name__ == "__main__":
    main()
