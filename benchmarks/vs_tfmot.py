"""Steps/s of gradual magnitude pruning to 90%: keras-sparse against tensorflow-model-optimization.

    python benchmarks/vs_tfmot.py [--steps 300] [--rounds 5] [--steps-per-execution 10]
                                  [--frequency 100] [--variants ...] [--out vs_tfmot.json]

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
  runs it: destroying an autotuned iterator at the end of an epoch can wait up to ~0.3 s
  (BENCHMARKS.md), which a tfmot user can avoid the same way.
- ``ks_trainer``: ``ks.Trainer(ks.wrap(model), MagnitudePruning(...), jit_compile=True).fit``.
- ``ks_trainer_spe``: the same with ``steps_per_execution=K`` (skipped with a note where this
  version of ``ks.Trainer`` does not take that argument).
- ``keras_fit_sparse_optimizer``, ``keras_fit_sparse_optimizer_spe``: Keras 3 ``model.fit`` of
  the wrapped model compiled with ``optimizer=ks.SparseOptimizer(SGD, MagnitudePruning(...),
  total_steps=<the whole run>)``, ``jit_compile=True`` (and ``steps_per_execution=K``),
  ``fit(epochs=1)`` a round, on data with autotuning off (as the Trainer runs it; Keras leaves
  the data as given). The optimizer decides each step's mask update in-graph from the whole
  run's schedule. (These replace the ``ks_sparse_model*`` variants of the code before the
  any-model core, where ``ks.SparseModel`` wrapped the model for ``fit``.)
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
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

SPARSITY = 0.9
BATCH = 128
INPUT_SHAPE = (28, 28, 1)
CLASSES = 10
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
    "keras_dense": ("keras_dense", {"spe": False}, "Keras 3 dense fit, XLA, no pruning, tf.data autotuning off (reference)"),
    "keras_dense_spe": ("keras_dense", {"spe": True},
                        "Keras 3 dense fit, XLA, steps_per_execution=K, no pruning, tf.data autotuning off (reference)"),
}


class Skip(Exception):
    """A variant this installation cannot run (reported, not an error)."""


# --------------------------------------------------------------------------- worker side
def _dataset(steps: int, seed: int = 0, autotune: bool | None = None):
    """The same batches on both sides: a fixed random array, cached, repeated to ``steps``
    batches; ``autotune`` sets tf.data's ``options.autotune.enabled`` (None: TensorFlow's
    default, on, which ``ks.Trainer`` turns off itself)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = BATCH * min(steps, MAX_DISTINCT_BATCHES)
    x = rng.normal(size=(n, *INPUT_SHAPE)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int64")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True).cache()
    data = data.repeat().take(steps)  # known cardinality: one epoch is one round
    if autotune is not None:
        options = tf.data.Options()
        options.autotune.enabled = autotune
        data = data.with_options(options)
    return data


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
        model = tf_keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x), name="lenet_300_100")
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


def _keras3_parts() -> tuple[Any, Callable[[], Any], Callable[[], Any], Any]:
    """keras_sparse, a seeded LeNet-300-100 builder, an optimizer factory, the loss (Keras 3)."""
    import common  # imports Keras 3: only in the Keras 3 workers
    import keras

    import keras_sparse as ks

    def optimizer():
        return keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)

    return ks, common.lenet_300_100, optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _magnitude_pruning(ks, config: dict[str, Any]):
    return ks.algorithms.MagnitudePruning(sparsity=SPARSITY, distribution="uniform", begin_step=0,
                                          end_step=config["end_step"], frequency=config["frequency"])


class TrainerRunner(Runner):
    """``ks.Trainer`` on the wrapped model; round r runs ``fit(epochs=r + 2)``, one more epoch."""

    def __init__(self, config: dict[str, Any], spe: bool):
        ks, build, optimizer, loss = _keras3_parts()
        self.ks = ks
        self.model = ks.wrap(build())
        extra = {"steps_per_execution": config["spe"]} if spe else {}
        try:
            self.trainer = ks.Trainer(self.model, _magnitude_pruning(ks, config), optimizer(), loss,
                                      jit_compile=True, progress=False, **extra)
        except TypeError as error:
            if "steps_per_execution" in str(error):
                raise Skip("ks.Trainer does not take steps_per_execution in this version") from error
            raise
        self.data = _dataset(config["steps"])
        self.epochs = 0
        self.run_round()  # warm-up

    def run_round(self) -> None:
        self.epochs += 1
        self.trainer.fit(self.data, epochs=self.epochs)

    def state(self) -> dict[str, Any]:
        return {"steps": int(self.trainer.step), "sparsity": self.ks.sparsity(self.model)}


class SparseOptimizerFitRunner(Runner):
    """Keras 3 ``model.fit`` with a ``ks.SparseOptimizer``, XLA; ``fit(epochs=1)`` a round."""

    def __init__(self, config: dict[str, Any], spe: bool):
        ks, build, optimizer, loss = _keras3_parts()
        self.ks = ks
        self.model = build()
        total_steps = config["steps"] * (config["rounds"] + 1)  # warm-up round + timed rounds
        sparse = ks.SparseOptimizer(optimizer(), _magnitude_pruning(ks, config), total_steps=total_steps,
                                    model=self.model)
        self.model.compile(optimizer=sparse, loss=loss, jit_compile=True,
                           steps_per_execution=config["spe"] if spe else 1)
        self.data = _dataset(config["steps"], autotune=False)
        self.run_round()  # warm-up

    def run_round(self) -> None:
        self.model.fit(self.data, epochs=1, verbose=0, shuffle=False)

    def state(self) -> dict[str, Any]:
        return {"steps": int(self.model.optimizer.iterations.numpy()), "sparsity": self.ks.sparsity(self.model)}


class DenseRunner(Runner):
    """Plain Keras 3 ``model.fit`` of the unpruned model with XLA: the reference."""

    def __init__(self, config: dict[str, Any], spe: bool):
        _, build, optimizer, loss = _keras3_parts()
        self.model = build()
        self.model.compile(optimizer=optimizer(), loss=loss, jit_compile=True,
                           steps_per_execution=config["spe"] if spe else 1)
        self.data = _dataset(config["steps"], autotune=False)
        self.run_round()  # warm-up

    def run_round(self) -> None:
        self.model.fit(self.data, epochs=1, verbose=0, shuffle=False)

    def state(self) -> dict[str, Any]:
        kernels = [layer.kernel.numpy() for layer in self.model.layers if hasattr(layer, "kernel")]
        return {"steps": int(self.model.optimizer.iterations.numpy()), "sparsity": _fraction_zero(kernels)}


def _make_runner(variant: str, config: dict[str, Any]) -> Runner:
    framework, options, _ = VARIANTS[variant]
    if framework == "tfmot":
        return TfmotRunner(config, **options)
    if framework == "ks_trainer":
        return TrainerRunner(config, **options)
    if framework == "keras_fit_sparse_optimizer":
        return SparseOptimizerFitRunner(config, **options)
    return DenseRunner(config, **options)


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

    Writes one JSON line to stdout for the set-up (``status``: ready, skipped or failed) and one
    per round; everything else that would go to stdout (TensorFlow's C++ logs included) goes to
    stderr.
    """
    out: TextIO = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(record) + "\n")
        out.flush()

    started = time.perf_counter()
    try:
        runner = _make_runner(variant, config)
    except Skip as reason:
        emit({"status": "skipped", "reason": str(reason)})
        return
    except Exception as error:  # reported, e.g. a variant XLA cannot compile
        lines = str(error).strip().splitlines() or [""]
        emit({"status": "failed", "error": f"{type(error).__name__}: {lines[0]}"})
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
class Worker:
    """The main process's handle on one variant's worker process."""

    def __init__(self, variant: str, config: dict[str, Any], log_dir: str):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if VARIANTS[variant][0] == "tfmot":
            env["TF_USE_LEGACY_KERAS"] = "1"
        else:
            env.pop("TF_USE_LEGACY_KERAS", None)
        self.variant = variant
        self.log_path = os.path.join(log_dir, f"{variant}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 (the worker's stderr, open as long as it runs)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", variant, "--worker-config", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def read(self) -> dict[str, Any]:
        """The worker's next JSON line; a dead worker reads as failed, with its log's last line."""
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            with open(self.log_path) as f:
                tail = [l.strip() for l in f.read().strip().splitlines()][-1:] or [""]
            return {"status": "failed", "error": f"worker exited with {self.process.returncode}: {tail[0]} "
                                                 f"(log: {self.log_path})"}
        return json.loads(line)

    def round(self) -> dict[str, Any]:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("stop\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


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
    workers = {v: Worker(v, config, log_dir) for v in variants}  # set-ups run concurrently: not timed
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
                record = workers[variant].round()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps a round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each variant, alternating")
    parser.add_argument("--steps-per-execution", type=int, default=10, help="K of the *_spe variants")
    parser.add_argument("--frequency", type=int, default=100, help="steps between mask updates")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="vs_tfmot.json")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.worker_config))
        return

    total_steps = args.steps * (args.rounds + 1)  # warm-up round + timed rounds
    end_step = args.frequency * ((total_steps - 1) // args.frequency)
    if end_step < args.frequency:
        parser.error(f"the run has {total_steps} steps: fewer than 2 mask updates at --frequency "
                     f"{args.frequency}; use more --steps/--rounds or a smaller --frequency")
    config = {"steps": args.steps, "rounds": args.rounds, "spe": args.steps_per_execution,
              "frequency": args.frequency, "end_step": end_step, "batch": BATCH, "sparsity": SPARSITY}
    outcome = run(args.variants, config)
    results = outcome["variants"]

    valid_tfmot = {v: r["median"] for v, r in results.items()
                   if VARIANTS[v][0] == "tfmot" and r["status"] == "ok" and not r["problems"]}
    fastest = max(valid_tfmot, key=valid_tfmot.get) if valid_tfmot else None
    # Best rounds: the stalls only ever slow a round down, so each variant's fastest round is its
    # nearest to an unstalled speed; compared with the best round of any valid tfmot variant.
    best_tfmot = max((max(results[v]["rates"]) for v in valid_tfmot), default=None)
    for result in results.values():
        if fastest and result["status"] == "ok":
            result["ratio_to_fastest_tfmot"] = result["median"] / results[fastest]["median"]
            result["best_ratio_to_best_tfmot"] = max(result["rates"]) / best_tfmot

    print(f"\nLeNet-300-100, batch {BATCH}, magnitude pruning 0 → {SPARSITY:.0%} every {args.frequency} steps "
          f"up to step {end_step} of {total_steps} (1 warm-up round + {args.rounds} timed rounds of "
          f"{args.steps} steps), K = {args.steps_per_execution}; median of {args.rounds} alternating rounds; "
          f"ratio to the fastest tfmot setting ({fastest or 'none'})\n")
    print("| variant | setting | median steps/s | min–max | ÷ fastest tfmot | best ÷ tfmot's best | CPU ms/step "
          "| final sparsity |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        if r["status"] != "ok":
            why = r.get("reason") or r.get("error")
            print(f"| {variant} | {r['description']} | {r['status']}: {why} | | | | | |")
            continue
        ratio, best = (f"{r[key]:.2f}" if key in r else "–"
                       for key in ("ratio_to_fastest_tfmot", "best_ratio_to_best_tfmot"))
        print(f"| {variant} | {r['description']} | {r['median']:.1f} | {min(r['rates']):.1f}–{max(r['rates']):.1f} "
              f"| {ratio} | {best} | {r['cpu_ms_per_step']:.2f} | {r['sparsity']:.2%} |")
    for variant, r in results.items():
        for problem in r.get("problems", []):
            print(f"warning: {variant}: {problem}")

    versions = next((r["versions"] for v, r in results.items() if VARIANTS[v][0] == "tfmot" and "versions" in r), {})
    versions.update(next((r["versions"] for v, r in results.items() if VARIANTS[v][0] != "tfmot" and "versions" in r),
                         {}))
    with open(args.out, "w") as f:
        json.dump({"config": {**config, "total_steps": total_steps}, "fastest_tfmot": fastest,
                   "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                   "versions": versions, **outcome}, f, indent=1)
    print(f"\nraw rates: {args.out}; worker logs: {outcome['log_dir']}")


if __name__ == "__main__":
    main()
