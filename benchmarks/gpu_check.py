"""The GPU check of issue 16: every algorithm's step compiled with XLA on the GPU, exact zeros,
masks against the same runs on CPU, and masked ÷ dense and XLA on ÷ off at a GPU-sized batch.

    benchmarks/gpu_check.sh                                  # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py [--out gpu_check.json] [--rounds 7] [--seconds 0.3] [--batch N]
        [--algorithms dense static ...] [--parts check timing] [--mask-tolerance 0.01]
        [--tf32-in-check] [--jobs N] [--smoke] [--allow-cpu]
    python benchmarks/gpu_check.py --combine A.json B.json ...

It says first which device it runs on, and refuses in one line when TensorFlow sees no GPU,
unless ``--allow-cpu``: then it runs everything on the CPU with tiny models and batches (the
smoke mode, also ``--smoke`` on a GPU), which tests the script, not the GPU.

**Check** (``--parts check``; TensorFloat-32 off unless ``--tf32-in-check``, so that the GPU's
float32 matmuls and convolutions round like the CPU's). The MNIST-1D CNN (``mnist1d_cnn``: Conv1D,
BatchNorm, Dense), batch 64, SGD(0.01, momentum 0.9), 2 epochs of 6 fixed random batches (12
steps), every algorithm of ``common.ALGORITHMS`` at 90% (``common.algorithm``: SET and RigL
update every 3 steps until step 9, early-frozen RigL freezes at step 4, magnitude pruning prunes
at steps 0, 3, 6 and 9), through both public paths, all with XLA:

- ``trainer``: ``ks.wrap`` + ``ks.Trainer(jit_compile=True)`` (``common.trainer``), one step a
  call; RigL also at 3 steps a call (``trainerK3``, the K-step XLA loop);
- ``fit``: ``model.compile(optimizer=ks.SparseOptimizer(..., model=model), jit_compile=True)`` and
  ``model.fit`` (SNIP: ``optimizer.initialize_masks(data)`` first); Keras's own ``jit_compile``
  must still be on after ``compile`` (Keras turns it off silently for some models);
- ``set@0``: SET's update at step 0 alone (one batch);
- the MNIST-1D transformer (Dense, ``MultiHeadAttention``), AdamW(1e-3): static and RigL through
  the Trainer, RigL through ``fit``.

Each case starts from the same initial weights on both devices (this process's seeded build,
which every worker loads; whether a worker's own seeded build gave the same weights is reported).
After every compiled call (every step at one step a call; a ``ks.Callback`` / Keras callback)
every weight whose mask is off must be exactly 0.0; the run must reach its 12 steps with a finite
loss, its masked weights and masks on the GPU. The cases run in ``--jobs`` worker processes on
the GPU (memory growth on, so that they share it) and, at the same time, in as many with
``CUDA_VISIBLE_DEVICES=""`` (the CPU, XLA too), and the masks are compared entry by entry:

- ``dense``, ``static`` and ``set@0`` choose their masks without float arithmetic (all ones; a
  NumPy generator seeded by the algorithm's seed; SET's step-0 drop of the smallest initial
  weights, which both devices hold bit for bit, and its growth by an integer hash that is the
  same on every device and with or without XLA, ``mask_ops.hash_uniform``). Their masks must be
  equal, every entry: this checks the top-k select and the hash on the GPU bit for bit.
- ``snip`` (|g ⊙ w| at initialisation), ``magnitude`` (|w| after steps), ``set`` after step 0
  (|w|), ``rigl`` and ``rigl_frozen`` (|w| and |dense gradient|) are just as deterministic given
  the seed and the data, but choose by float scores: a different rounding on the GPU (another
  summation order in a convolution's gradient, say) moves a score by an ulp and can flip a
  near-tie at a layer's threshold, after which training diverges slightly. Each layer must still
  hold the CPU's number of active weights (for SNIP, which ranks all layers together, the total),
  and at most ``--mask-tolerance`` (default 1%) of the active entries may differ; the table gives
  every case's count of differing entries and the largest weight difference, so a flip shows as
  what it is.

**Timing** (``--parts timing``; TensorFloat-32 as TensorFlow's default, on). ResNet-20 (batch
256, SGD + momentum) and the MNIST-1D transformer (batch 512, AdamW), random batches; one
``tf.function`` a variant, the body of ``common.train_step``, as ``mask_overhead.py`` times:
``dense`` (plain model, plain optimizer), ``masked`` (``ks.wrap`` + ``SparseOptimizer``, static
90%, ``sparse_apply(update=False)``: the Trainer's step) and ``masked_cond`` (``optimizer.apply``
with its in-graph ``tf.cond``: ``model.fit``'s step), each with XLA, and ``dense`` and ``masked``
without (``--batch`` sets one batch for both models). The variants take turns in each of
``--rounds`` rounds of about ``--seconds`` each (compiled while the CPU reference may still
run, timed once it has finished); the table gives medians (ms a step) and the
median of per-round ratios of steps/s with quartiles: masked ÷ dense (> 1: the masked step is
faster) and XLA on ÷ off (> 1: XLA is faster). The pruned weights must be exactly 0 afterwards.

It writes ``--out`` (JSON: every case, every round, the machine; also after each phase, marked
``incomplete``) and prints markdown tables; its last line says "passed", or "FAILED" with the
first problem (exit status 1); a refusal is one line with exit status 2. Needs: TensorFlow with
CUDA (``pip install 'tensorflow[and-cuda]'``, which brings CUDA, cuDNN and the ``ptxas`` XLA
compiles with) and this project (``pip install -e .``), both installed beforehand: nothing is
downloaded, no data set is read (random batches).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Several processes share the GPU (the check's workers and this one): each takes memory as it needs it.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402

#: The check's schedule: 2 epochs of 6 batches; updates every 3 steps until step 9; RigL frozen at 4.
EPOCHS, BATCHES, EVERY, END_STEP, FREEZE_STEP = 2, 6, 3, 9, 4
#: Cases whose masks involve no float arithmetic: they must equal the CPU's entry for entry.
EXACT = ("dense", "static", "set@0")
#: The check's models (the CNN for every algorithm and path, the transformer for a few cases),
#: and the smoke mode's tiny versions of them.
CHECK_BATCH, SMOKE_CHECK_BATCH = 64, 16
SMOKE_OPTIONS = {"mnist1d_cnn": {"width": 8}, "mnist1d_transformer": {"dim": 8, "heads": 2, "mlp_dim": 16, "depth": 1},
                 "resnet": {"depth": 8}}
#: Timed models and their batches; the smoke mode's batch.
TIMING_BATCH = {"resnet": 256, "mnist1d_transformer": 512}
SMOKE_TIMING_BATCH = 8
VARIANTS = ("dense xla", "masked xla", "masked_cond xla", "dense no-xla", "masked no-xla")
RATIOS = (("masked xla", "dense xla"), ("masked_cond xla", "dense xla"), ("masked no-xla", "dense no-xla"),
          ("dense xla", "dense no-xla"), ("masked xla", "masked no-xla"))
RATIO_NAMES = {"masked xla/dense xla": "masked ÷ dense, XLA on", "masked_cond xla/dense xla":
               "masked_cond ÷ dense, XLA on", "masked no-xla/dense no-xla": "masked ÷ dense, XLA off",
               "dense xla/dense no-xla": "XLA on ÷ off, dense", "masked xla/masked no-xla": "XLA on ÷ off, masked"}


# ------------------------------------------------------------------ pure helpers (tested)
def refusal(gpu_count: int, allow_cpu: bool, cuda_build: bool, tf_version: str = tf.__version__) -> str | None:
    """The one-line refusal when no GPU is visible and ``--allow-cpu`` was not given, else None."""
    if gpu_count or allow_cpu:
        return None
    build = "a CUDA build" if cuda_build else "not a CUDA build: pip install 'tensorflow[and-cuda]'"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"gpu_check: no GPU visible to TensorFlow {tf_version} ({build}"
            + (f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "")
            + "): run it on a machine with a CUDA GPU, or pass --allow-cpu for the CPU smoke run")


def pruned_nonzeros(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Per masked weight, how many entries whose mask is off are not exactly 0.0."""
    return {key: int(np.count_nonzero(np.asarray(weights[key])[~np.asarray(masks[key], dtype=bool)]))
            for key in masks}


def compare_masks(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Entry-by-entry comparison of two runs' masks: per layer and in total, the entries that
    differ and both sides' active counts; ``keys_equal`` / ``shapes_equal`` say whether the
    masks can be compared at all."""
    keys_equal = list(ours) == list(reference)
    layers, shapes_equal = {}, keys_equal
    for key in (k for k in ours if k in reference):
        a, b = np.asarray(ours[key], dtype=bool), np.asarray(reference[key], dtype=bool)
        if a.shape != b.shape:
            shapes_equal = False
            continue
        layers[key] = {"differing": int(np.count_nonzero(a != b)), "active": int(a.sum()),
                       "reference_active": int(b.sum())}
    return {"keys_equal": keys_equal, "shapes_equal": shapes_equal, "layers": layers,
            "differing": sum(v["differing"] for v in layers.values()),
            "active": sum(v["active"] for v in layers.values()),
            "reference_active": sum(v["reference_active"] for v in layers.values()),
            "layer_counts_equal": all(v["active"] == v["reference_active"] for v in layers.values())}


def mask_problem(comparison: Mapping[str, Any], exact: bool, per_layer_counts: bool, tolerance: float) -> str | None:
    """What is wrong with ``compare_masks``' result, or None. ``exact``: no entry may differ;
    otherwise at most ``tolerance`` × the reference's active count (float near-ties).
    ``per_layer_counts``: every layer must hold the reference's active count (else the total)."""
    if not comparison["keys_equal"] or not comparison["shapes_equal"]:
        return "masked weights (keys or shapes) differ from the CPU run's"
    if per_layer_counts and not comparison["layer_counts_equal"]:
        layers = [k for k, v in comparison["layers"].items() if v["active"] != v["reference_active"]]
        return f"active counts differ from the CPU run's in {layers}"
    if comparison["active"] != comparison["reference_active"]:
        return f"{comparison['active']} active weights, the CPU run {comparison['reference_active']}"
    differing, allowed = comparison["differing"], (0 if exact else tolerance * comparison["reference_active"])
    if differing > allowed:
        what = "masks chosen without float arithmetic" if exact else f"over the tolerance {allowed:.0f}"
        return f"{differing} mask entries differ from the CPU run's ({what})"
    return None


def weight_difference(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The largest absolute difference of two runs' masked weights, alone and over the largest
    |weight| of the reference."""
    keys = [k for k in ours if k in reference and np.shape(ours[k]) == np.shape(reference[k])]
    if not keys:
        return {"max_abs": float("nan"), "relative": float("nan")}
    diff = max(float(np.max(np.abs(np.asarray(ours[k], np.float64) - reference[k]), initial=0.0)) for k in keys)
    scale = max(float(np.max(np.abs(reference[k]), initial=0.0)) for k in keys)
    return {"max_abs": diff, "relative": diff / scale if scale else float("nan")}


def save_arrays(path: str, groups: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """``{group: {key: array}}`` in one ``.npz`` (mask keys hold slashes, so they go in a list)."""
    names = [(group, key) for group, arrays in groups.items() for key in arrays]
    np.savez(path, *[groups[g][k] for g, k in names], names=np.array([f"{g}\t{k}" for g, k in names]))


def load_arrays(path: str) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path) as data:
        groups: dict[str, dict[str, np.ndarray]] = {}
        for i, name in enumerate(data["names"]):
            group, key = str(name).split("\t", 1)
            groups.setdefault(group, {})[key] = data[f"arr_{i}"]
    return groups


def error_text(error: BaseException) -> str:
    return harness.failed_record(error)["error"]


# --------------------------------------------------------------------------- the check
def check_cases(smoke: bool, algorithms: Sequence[str]) -> list[dict[str, Any]]:
    """The check's cases (JSON-able, so the CPU worker gets the same list)."""
    def case(model, path, algorithm, steps_per_execution=1, label=None, batches=BATCHES, epochs=EPOCHS):
        optimizer = "AdamW" if model == "mnist1d_transformer" else "SGD"
        label = label or algorithm
        return {"id": f"{model}/{path}{'K' + str(steps_per_execution) if steps_per_execution > 1 else ''}/{label}",
                "model": model, "options": SMOKE_OPTIONS[model] if smoke else {}, "path": path,
                "algorithm": algorithm, "label": label, "steps_per_execution": steps_per_execution,
                "batch": SMOKE_CHECK_BATCH if smoke else CHECK_BATCH, "batches": batches, "epochs": epochs,
                "optimizer": optimizer, "exact": label in EXACT, "per_layer_counts": algorithm != "snip"}

    cases = [case("mnist1d_cnn", path, name) for name in algorithms for path in ("trainer", "fit")]
    if "rigl" in algorithms:
        cases.append(case("mnist1d_cnn", "trainer", "rigl", steps_per_execution=3))
    if "set" in algorithms:
        cases.append(case("mnist1d_cnn", "trainer", "set", label="set@0", batches=1, epochs=1))
    cases += [case("mnist1d_transformer", path, name) for name, path in
              (("static", "trainer"), ("rigl", "trainer"), ("rigl", "fit")) if name in algorithms]
    return [{**c, "index": i} for i, c in enumerate(cases)]


def check_models(cases: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The builder options of each model the cases use."""
    return {case["model"]: case["options"] for case in cases}


def initial_weights(models: Mapping[str, Mapping[str, Any]]) -> dict[str, list[np.ndarray]]:
    """Each check model's seeded initial weights (``common.build``), all of them."""
    return {name: common.build(name, **options).get_weights() for name, options in models.items()}


class ZeroWatch:
    """Counts, over every check, the pruned weights of ``model`` that are not exactly 0."""

    def __init__(self, model: keras.Model):
        self.model, self.checks, self.worst, self.first_bad_step = model, 0, 0, None

    def check(self, step: int) -> None:
        weights = ks.masked_weights(self.model)
        count = sum(pruned_nonzeros({w.key: w.variable.numpy() for w in weights},
                                    {w.key: w.mask.numpy() for w in weights}).values())
        self.checks += 1
        if count and self.first_bad_step is None:
            self.first_bad_step = step
        self.worst = max(self.worst, count)


class TrainerZeros(ks.Callback):
    def __init__(self, watch: ZeroWatch):
        self.watch = watch

    def on_step_end(self, trainer, losses):
        self.watch.check(trainer.step)


class FitZeros(keras.callbacks.Callback):
    def __init__(self, watch: ZeroWatch, optimizer: ks.SparseOptimizer):
        super().__init__()
        self.watch, self.sparse = watch, optimizer

    def on_train_batch_end(self, batch, logs=None):
        self.watch.check(int(self.sparse.iterations.numpy()))


def variable_devices(model: keras.Model) -> list[str]:
    """The devices the masked weights and their masks live on."""
    return sorted({getattr(v, "value", v).device for w in ks.masked_weights(model) for v in (w.variable, w.mask)})


def run_case(case: Mapping[str, Any], initial: Mapping[str, list[np.ndarray]]):
    """Trains one case from ``initial``'s weights with XLA; returns its summary, masks and masked weights."""
    started = time.perf_counter()
    name = case["model"]
    model = common.build(name, **case["options"])
    model.set_weights(initial[name])
    algo = common.algorithm(case["algorithm"], every=EVERY, end_step=END_STEP, freeze_step=FREEZE_STEP)
    data = common.dataset(common.MODELS[name][0], case["batches"], case["batch"], seed=1)
    optimizer = common.optimizer_for(name)
    if case["path"] == "trainer":
        trainer = common.trainer(model, algo, optimizer, steps_per_execution=case["steps_per_execution"])
        watch = ZeroWatch(model)
        history = trainer.fit(data, epochs=case["epochs"], callbacks=[TrainerZeros(watch)])
        steps, losses = int(trainer.optimizer.iterations.numpy()), [h["train_loss"] for h in history]
        jit = getattr(trainer, "jit_compile", True)  # asked for; a Trainer with an "auto" mode keeps it
        programs = trainer.programs.trace_counts()
    else:
        sparse = ks.SparseOptimizer(optimizer, algo, total_steps=case["epochs"] * case["batches"],
                                    steps_per_epoch=case["batches"], model=model)
        if algo.scoring_batches:
            model.compile(optimizer=sparse, loss=common.loss_fn())
            sparse.initialize_masks(data)
        model.compile(optimizer=sparse, loss=common.loss_fn(), jit_compile=True)
        jit = bool(model.jit_compile)  # Keras turns it off, with a warning only, where it cannot compile
        watch = ZeroWatch(model)
        history = model.fit(data, epochs=case["epochs"], verbose=0, shuffle=False,
                            callbacks=[FitZeros(watch, sparse)])
        steps, losses, programs = int(sparse.iterations.numpy()), history.history["loss"], None
    masks = ks.get_masks(model)
    weights = {w.key: w.variable.numpy() for w in ks.masked_weights(model)}
    summary = {"id": case["id"], "steps": steps, "expected_steps": case["epochs"] * case["batches"],
               "losses": [float(v) for v in losses], "jit_compile": jit, "programs": programs,
               "devices": variable_devices(model), "zero_checks": watch.checks, "pruned_nonzero": watch.worst,
               "first_nonzero_step": watch.first_bad_step, "final_pruned_nonzero": sum(
                   pruned_nonzeros(weights, masks).values()), "sparsity": ks.sparsity(model),
               "seconds": time.perf_counter() - started}
    keras.backend.clear_session()
    return summary, masks, weights


def run_cases(cases: Sequence[Mapping[str, Any]], initial, out_dir: str, side: str) -> list[dict[str, Any]]:
    """Runs every case (a failing case is recorded, not raised); masks and weights to
    ``out_dir/<side><index>.npz``."""
    summaries = []
    for case in cases:
        try:
            summary, masks, weights = run_case(case, initial)
            save_arrays(os.path.join(out_dir, f"{side}{case['index']}.npz"), {"masks": masks, "weights": weights})
        except Exception as error:  # noqa: BLE001 (a compile failure is what the check reports)
            summary = {"id": case["id"], "error": error_text(error)}
        summary["index"] = case["index"]
        summaries.append(summary)
        print(f"{side} {case['id']}: " + (summary.get("error") or f"{summary['seconds']:.1f} s"), flush=True)
    return summaries


def case_worker(side: str, config: dict[str, Any]) -> None:
    """``--worker device|cpu``: ``config["cases"]`` on this process's device (``cpu``: the
    coordinator hid the GPUs; ``device``: the GPU, unless the whole run is on the CPU), from the
    coordinator's initial weights; masks and weights to ``config["dir"]``, one record on stdout."""
    emit = harness.json_lines_out()
    try:
        gpus = tf.config.list_physical_devices("GPU")
        if side == "cpu" and gpus:
            raise RuntimeError(f"the CPU worker sees {len(gpus)} GPU(s): CUDA_VISIBLE_DEVICES was not honoured")
        if side == "device" and config["on_gpu"] and not gpus:
            raise RuntimeError("the GPU worker sees no GPU")
        if gpus:  # TF32 rounds float32 matmuls and convolutions to 10-bit mantissas: off, as on the CPU
            tf.config.experimental.enable_tensor_float_32_execution(config["tf32"])
        cases = config["cases"]
        loaded = load_arrays(config["initial"])
        initial = {model: [loaded[model][str(i)] for i in range(len(loaded[model]))] for model in loaded}
        own = initial_weights(check_models(cases))
        same = {model: len(own[model]) == len(initial[model]) and all(
            np.array_equal(a, b) for a, b in zip(own[model], initial[model])) for model in own}
        summaries = run_cases(cases, initial, config["dir"], side)
        emit({"status": "ok", "cases": summaries, "own_initial_weights_equal": same,
              "tf32": bool(gpus) and tf.config.experimental.tensor_float_32_execution_enabled()})
    except Exception as error:  # noqa: BLE001
        emit(harness.failed_record(error))


def start_workers(side: str, cases: Sequence[Mapping[str, Any]], jobs: int, config: Mapping[str, Any],
                  env: Mapping[str, str]) -> list[harness.Worker]:
    """``jobs`` worker processes for ``side``, the cases dealt round-robin (in the order given)."""
    workers = []
    for j in range(min(jobs, len(cases))):
        command = harness.worker_command(__file__, side, {**config, "cases": list(cases[j::jobs])})
        workers.append(harness.Worker(command, env, os.path.join(config["dir"], f"{side}_worker{j}.log")))
    return workers


def collect(workers: Sequence[harness.Worker]) -> dict[str, Any]:
    """The workers' records merged: ``cases`` by index, the status and facts of each worker."""
    merged: dict[str, Any] = {"cases": {}, "workers": []}
    for worker in workers:
        record = worker.read()
        worker.close()
        merged["cases"].update({c["index"]: c for c in record.pop("cases", [])})
        merged["workers"].append({**record, "log": worker.log_path})
    return merged


def compare_cases(cases, device: Mapping[str, Any], cpu: Mapping[str, Any], out_dir: str, tolerance: float,
                  on_gpu: bool) -> list[dict[str, Any]]:
    """Each case's summary here with its comparison against the CPU run and its problems."""
    results = []
    for case in cases:
        summary = device["cases"].get(case["index"], {"error": "no record from its worker"})
        result = {**case, **summary, "problems": []}
        problems = result["problems"]
        if "error" in summary:
            problems.append(f"failed: {summary['error']}")
            results.append(result)
            continue
        if not summary["jit_compile"]:
            problems.append("XLA was turned off (jit_compile False after compile)")
        if summary["steps"] != summary["expected_steps"]:
            problems.append(f"ran {summary['steps']} steps, not {summary['expected_steps']}")
        if not np.all(np.isfinite(summary["losses"])):
            problems.append(f"non-finite loss {summary['losses']}")
        if summary["pruned_nonzero"] or summary["final_pruned_nonzero"]:
            problems.append(f"{max(summary['pruned_nonzero'], summary['final_pruned_nonzero'])} pruned weights "
                            f"not exactly 0 (first at step {summary['first_nonzero_step']})")
        if on_gpu and not all("GPU" in d for d in summary["devices"]):
            problems.append(f"masked weights or masks off the GPU: {summary['devices']}")
        reference = cpu["cases"].get(case["index"])
        if reference is None:
            problems.append("no CPU run to compare with")
        elif "error" in reference:
            problems.append(f"the CPU run failed: {reference['error']}")
        else:
            mine = load_arrays(os.path.join(out_dir, f"device{case['index']}.npz"))
            theirs = load_arrays(os.path.join(out_dir, f"cpu{case['index']}.npz"))
            result["cpu"] = {k: reference[k] for k in ("steps", "losses", "seconds", "sparsity")}
            result["vs_cpu"] = compare_masks(mine["masks"], theirs["masks"])
            result["weights_vs_cpu"] = weight_difference(mine["weights"], theirs["weights"])
            problem = mask_problem(result["vs_cpu"], case["exact"], case["per_layer_counts"], tolerance)
            if problem:
                problems.append(problem)
        results.append(result)
    return results


# --------------------------------------------------------------------------- timing
def timing_variants(name: str, batch: int, options: Mapping[str, Any]):
    """The timed step functions of model ``name`` and the masked model (for its zero check)."""
    loss = common.loss_fn()
    dense = common.build(name, **options)
    optimizer = common.optimizer_for(name)
    dense_xla = common.plain_step(dense, optimizer, loss, True)  # builds the optimizer
    masked = common.build(name, **options)  # the same initial weights
    sparse = common.sparse_optimizer(masked, common.algorithm("static"), common.optimizer_for(name))
    variants = {"dense xla": dense_xla,
                "masked xla": common.sparse_step(masked, sparse, loss, True, update=False),
                "masked_cond xla": common.sparse_step(masked, sparse, loss, True, update=None),
                "dense no-xla": common.train_step(dense, optimizer.apply, loss, False),
                "masked no-xla": common.sparse_step(masked, sparse, loss, False, update=False)}
    return variants, dense, masked


def prepare_timing(name: str, batch: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """Builds and compiles (first call, timed) the variants of model ``name``; the compiling
    overlaps the CPU worker's check, the timing does not."""
    x, y = common.batch_of(name, batch)
    variants, dense, masked = timing_variants(name, batch, options)
    first_call, losses = {}, {}
    for variant, step in variants.items():
        begin = time.perf_counter()
        losses[variant] = float(step(x, y).numpy())
        first_call[variant] = time.perf_counter() - begin
    return {"model": name, "options": dict(options), "batch": batch, "x": x, "y": y, "variants": variants,
            "dense": dense, "masked": masked, "first_call_seconds": first_call, "first_losses": losses}


def time_model(prepared: Mapping[str, Any], rounds: int, seconds: float) -> dict[str, Any]:
    """Alternates the prepared variants for ``rounds`` rounds of the same number of steps (about
    ``seconds`` for the slowest); rates, medians, per-round ratios and the checks' facts."""
    started = time.perf_counter()
    x, y, variants, masked = prepared["x"], prepared["y"], prepared["variants"], prepared["masked"]
    steps = min(common.steps_for(step, x, y, seconds) for step in variants.values())
    rates = common.rotated_rates(variants, x, y, steps, rounds)
    last = {n: float(step(x, y).numpy()) for n, step in variants.items()}
    weights = ks.masked_weights(masked)
    nonzero = sum(pruned_nonzeros({w.key: w.variable.numpy() for w in weights},
                                  {w.key: w.mask.numpy() for w in weights}).values())
    name = prepared["model"]
    return {"model": name, "options": prepared["options"], "batch": prepared["batch"],
            "parameters": prepared["dense"].count_params(), "optimizer": type(common.optimizer_for(name)).__name__,
            "steps": steps, "rounds": rounds, "first_call_seconds": prepared["first_call_seconds"],
            "first_losses": prepared["first_losses"], "last_losses": last, "steps_per_second": rates,
            "median": {n: float(np.median(v)) for n, v in rates.items()},
            "ratios": {f"{a}/{b}": harness.round_ratios(rates, a, b) for a, b in RATIOS},
            "sparsity": ks.sparsity(masked), "pruned_nonzero": nonzero, "devices": variable_devices(masked),
            "seconds": time.perf_counter() - started}


def timing_problems(result: Mapping[str, Any], on_gpu: bool) -> list[str]:
    problems = []
    if result["pruned_nonzero"]:
        problems.append(f"{result['pruned_nonzero']} pruned weights not exactly 0 after the timed steps")
    if not np.all(np.isfinite(list(result["last_losses"].values()))):
        problems.append(f"non-finite loss {result['last_losses']}")
    if abs(result["sparsity"] - common.SPARSITY) > 0.01:
        problems.append(f"masked model at sparsity {result['sparsity']:.3f}, not {common.SPARSITY}")
    if on_gpu and not all("GPU" in d for d in result["devices"]):
        problems.append(f"masked weights off the GPU: {result['devices']}")
    return problems


# --------------------------------------------------------------------------- report
def check_table(run: Mapping[str, Any]) -> str:
    rows = []
    for c in run["cases"]:
        programs = c.get("programs")
        compiled = ", ".join(f"{k} {v}" for k, v in programs.items() if v) if programs else (
            "fit" if c.get("jit_compile") else "–")
        versus, weights = c.get("vs_cpu"), c.get("weights_vs_cpu")
        rows.append([c["id"], "exact" if c["exact"] else "float", compiled if "error" not in c else "failed",
                     f"{c.get('steps', '–')}/{c['epochs'] * c['batches']}",
                     f"{c.get('pruned_nonzero', '–')} ({c.get('zero_checks', 0)} checks)",
                     f"{versus['differing']} of {versus['reference_active']}" if versus else "–",
                     "yes" if versus and versus["layer_counts_equal"] else ("no" if versus else "–"),
                     f"{weights['max_abs']:.2e}" if weights else "–",
                     f"{c.get('seconds', 0):.1f} / {c['cpu']['seconds']:.1f}" if c.get("cpu") else "–",
                     "ok" if not c["problems"] else "; ".join(c["problems"])])
    return harness.table(["case", "masks", "XLA programs (traces)", "steps", "pruned ≠ 0 (checks: after every call)",
                          "mask entries ≠ CPU (of active)", "active/layer = CPU", "max |Δw| vs CPU",
                          "s (here / CPU)", "result"], rows)


def timing_table(runs: Sequence[Mapping[str, Any]]) -> str:
    def measured(run):
        return {t["model"]: t for t in run["timing"] if "median" in t}

    names = [name for name in measured(runs[0]) if all(name in measured(run) for run in runs)]
    rows = []
    for name in names:
        points = [measured(run)[name] for run in runs]
        rows.append([name, f"{points[0]['batch']}, {points[0]['optimizer']}",
                     harness.cells(points, lambda p: p["steps"]),
                     *(harness.cells(points, lambda p, v=v: 1000 / p["median"][v], 2) for v in VARIANTS),
                     *(harness.ratio_cells([p["ratios"][label] for p in points], "iqr")
                       for label in RATIO_NAMES)])
    return harness.table(["model", "batch, optimizer", "steps a round", *(f"{v} ms/step" for v in VARIANTS),
                          *RATIO_NAMES.values()], rows)


def report(runs: Sequence[Mapping[str, Any]]) -> str:
    """The tables of one run (several: each run's check table, one timing table "A / B / …")."""
    out = []
    for run in runs:
        out.append(f"**{run['device']}**; TensorFlow {run['tensorflow']}, Keras {run['keras']}"
                   + (f", CUDA {run['cuda']}, cuDNN {run['cudnn']}" if run.get("cuda") else "")
                   + ("; smoke mode (tiny models)" if run["smoke"] else ""))
        if run.get("cases"):
            tf32 = f", TF32 {'on' if run['tf32_in_check'] else 'off'}" if run["on_gpu"] else ""
            same = {side: all(all(w.get("own_initial_weights_equal", {}).values()) for w in run["workers"][side])
                    for side in ("device", "cpu")}
            out.append(f"Check: XLA on{tf32}; {len(run['workers']['device'])} + {len(run['workers']['cpu'])} worker "
                       f"processes (here + CPU reference); seeded initial weights built in each worker equal the "
                       f"coordinator's: here {same['device']}, CPU {same['cpu']} (every case starts from the "
                       f"coordinator's); mask tolerance for float-chosen masks {run['mask_tolerance']:.2%} of the "
                       "active weights\n\n" + check_table(run))
    if all(run.get("timing") for run in runs):
        first = runs[0]
        tf32 = f"; TF32 {'on' if first['tf32_in_timing'] else 'off'}" if first["on_gpu"] else ""
        out.append(f"Timing: {first['rounds']} rounds, variants alternating, static 90% masks{tf32}; ratios: "
                   "median of per-round ratios of steps/s (quartiles)\n\n" + timing_table(runs))
    return "\n\n".join(out)


def problems_of(run: Mapping[str, Any]) -> list[str]:
    problems = [f"{side} worker: {w.get('error')} (log: {w['log']})" for side, workers in
                run.get("workers", {}).items() for w in workers if w.get("status") != "ok"]
    problems += [f"{c['id']}: {p}" for c in run.get("cases", []) for p in c["problems"]]
    return problems + [f"timing {t['model']}: {p}" for t in run.get("timing", []) for p in t["problems"]]


def verdict(run: Mapping[str, Any], out: str) -> tuple[int, str]:
    """The exit status and the last line: "passed", or "FAILED" with the first problem."""
    problems = run["problems"]
    if problems:
        more = f"; {len(problems) - 1} more in {out}" if len(problems) > 1 else ""
        return 1, f"gpu_check: FAILED ({len(problems)} problem{'s' * (len(problems) > 1)}): {problems[0]}{more}"
    return 0, f"gpu_check: passed on {run['device']} ({run['wall_seconds']:.0f} s)"


def summarize(run: dict[str, Any]) -> None:
    run["summary"] = {t["model"]: {RATIO_NAMES[k]: v["median"] for k, v in t["ratios"].items()}
                      for t in run.get("timing", []) if "ratios" in t}


# --------------------------------------------------------------------------- main
def device_description(gpus: Sequence[Any]) -> str:
    if not gpus:
        return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores): no GPU visible, "
                "CPU smoke run (--allow-cpu)")
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return (f"GPU:0, {details.get('device_name', gpus[0].name)}"
            + (f" (compute capability {capability[0]}.{capability[1]})" if capability else "")
            + (f"; {len(gpus)} GPUs visible, the first used" if len(gpus) > 1 else ""))


def preflight(device: str) -> None:
    """A tiny XLA program on ``device``: a GPU without a working XLA set-up (ptxas, libdevice)
    fails here, in one line, and not in the middle of the check."""
    with tf.device(device):
        program = tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)), jit_compile=True)
        program(tf.ones([8, 8])).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="without a GPU, run the CPU smoke mode (tiny sizes)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and batches also on a GPU")
    parser.add_argument("--parts", nargs="+", choices=["check", "timing"], default=["check", "timing"])
    parser.add_argument("--algorithms", nargs="+", choices=common.ALGORITHMS, default=common.ALGORITHMS)
    parser.add_argument("--mask-tolerance", type=float, default=0.01,
                        help="fraction of the active weights whose float-chosen masks may differ from the CPU's")
    parser.add_argument("--tf32-in-check", action="store_true", help="leave TensorFloat-32 on during the check")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7; 3 in the smoke mode)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="about how long a variant's round takes (default 0.3; 0.05 in the smoke mode)")
    parser.add_argument("--batch", type=int, default=None, help="one timing batch for both models")
    parser.add_argument("--jobs", type=int, default=max(1, min(3, (os.cpu_count() or 1) // 5)),
                        help="worker processes a side (the GPU, the CPU reference) for the check (default: a "
                             "fifth of the cores, 1 to 3)")
    parser.add_argument("--out", default="gpu_check.json")
    harness.add_worker_flags(parser, ["device", "cpu"])
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, case_worker):
        return
    started = time.perf_counter()
    gpus = tf.config.list_physical_devices("GPU")
    build = tf.sysconfig.get_build_info()
    message = refusal(len(gpus), args.allow_cpu, bool(build.get("is_cuda_build")))
    if message:
        print(message, flush=True)
        sys.exit(2)
    device = device_description(gpus)
    print(f"gpu_check: running on {device}", flush=True)
    on_gpu, smoke = bool(gpus), args.smoke or not gpus
    try:
        preflight("/GPU:0" if on_gpu else "/CPU:0")
    except Exception as error:  # noqa: BLE001
        print(f"gpu_check: XLA cannot compile on {'GPU:0' if on_gpu else 'the CPU'}: {error_text(error)}")
        sys.exit(1)
    log_dir = tempfile.mkdtemp(prefix="gpu_check_")
    run: dict[str, Any] = {"device": device, "on_gpu": on_gpu, "smoke": smoke, "tensorflow": tf.__version__,
                           "keras": keras.__version__, "cuda": build.get("cuda_version"),
                           "cudnn": build.get("cudnn_version"), "mask_tolerance": args.mask_tolerance,
                           "tf32_in_check": bool(args.tf32_in_check), "log_dir": log_dir,
                           "phases": {}}

    cases, workers = [], {}
    if "check" in args.parts:
        cases = check_cases(smoke, args.algorithms)
        initial = initial_weights(check_models(cases))
        initial_path = os.path.join(log_dir, "initial.npz")
        save_arrays(initial_path, {m: {str(i): w for i, w in enumerate(ws)} for m, ws in initial.items()})
        config = {"initial": initial_path, "dir": log_dir, "on_gpu": on_gpu, "tf32": bool(args.tf32_in_check)}
        workers = {"device": start_workers("device", cases, args.jobs, config, os.environ),
                   "cpu": start_workers("cpu", cases, args.jobs, config, dict(os.environ, CUDA_VISIBLE_DEVICES=""))}
        print(f"check: {len(cases)} cases in {len(workers['device'])} worker process(es) on this device and "
              f"{len(workers['cpu'])} on the CPU (logs: {log_dir})", flush=True)
        begin = time.perf_counter()
        device_record = collect(workers["device"])
        run["phases"]["check: the device's workers"] = time.perf_counter() - begin
        for index, summary in sorted(device_record["cases"].items()):
            print(f"  {summary['id']}: " + (summary.get("error") or f"{summary['seconds']:.1f} s"), flush=True)
        harness.write_json(args.out, {**run, "incomplete": True, "device_cases": device_record})

    prepared, failed = [], []
    if "timing" in args.parts:  # compiled while the CPU reference may still run (its autotuning sees a quiet GPU)
        run["tf32_in_timing"] = on_gpu and tf.config.experimental.tensor_float_32_execution_enabled()
        run["rounds"] = args.rounds or (3 if smoke else 7)
        begin = time.perf_counter()
        for name, batch in TIMING_BATCH.items():
            batch = args.batch or (SMOKE_TIMING_BATCH if smoke else batch)
            print(f"timing: compiling {name}, batch {batch}", flush=True)
            try:
                prepared.append(prepare_timing(name, batch, SMOKE_OPTIONS[name] if smoke else {}))
            except Exception as error:  # noqa: BLE001
                failed.append({"model": name, "batch": batch, "problems": [f"failed: {error_text(error)}"]})
        run["phases"]["timing: compiling"] = time.perf_counter() - begin

    if workers:
        begin = time.perf_counter()
        cpu_record = collect(workers["cpu"])
        run["phases"]["waiting for the CPU reference"] = time.perf_counter() - begin
        run["workers"] = {"device": device_record["workers"], "cpu": cpu_record["workers"]}
        run["cases"] = compare_cases(cases, device_record, cpu_record, log_dir, args.mask_tolerance, on_gpu)
        harness.write_json(args.out, {**run, "incomplete": True})

    if "timing" in args.parts:
        begin = time.perf_counter()
        run["timing"] = []
        for state in prepared:
            print(f"timing: {state['model']}, {run['rounds']} rounds", flush=True)
            try:
                result = time_model(state, run["rounds"], args.seconds or (0.05 if smoke else 0.3))
                result["problems"] = timing_problems(result, on_gpu)
            except Exception as error:  # noqa: BLE001
                result = {"model": state["model"], "batch": state["batch"],
                          "problems": [f"failed: {error_text(error)}"]}
            run["timing"].append(result)
        run["timing"] += failed
        run["phases"]["timing: rounds"] = time.perf_counter() - begin

    harness.finish_run(run, args.out, started, problems_of, summarize, report)
    status, line = verdict(run, args.out)
    print(line, flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
