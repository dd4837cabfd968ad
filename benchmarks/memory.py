"""Memory cost of masking: mask state against the kernels it masks, and peak process memory of
a training run against dense training.

    python benchmarks/memory.py [--models lenet_300_100 lenet5 resnet mnist1d_cnn]
        [--train-models mlp_4096 lenet_300_100] [--variants keras dense static rigl magnitude]
        [--steps 50] [--batch 128] [--repeats 3] [--jit-compile true] [--steps-per-execution 1]
        [--out memory.json]
    python benchmarks/memory.py --select [--out memory_select.json]

(a) Mask state ÷ kernel bytes, per model: LeNet-300-100 and LeNet-5 (28×28×1), ResNet-20
(32×32×3), the MNIST-1D CNN and the MNIST-1D transformer (40×1). Counted from the variables
themselves (bytes = dtype size × elements): the ``mask`` of every weight ``keras_sparse.wrap``
masks (``ks.masked_weights``) against the weight itself; and, as checks, all bytes of the mask
state wrap attaches to the model (``keras_sparse.masking.mask_state(model).weights``: the masks
and one ``initialized`` flag), and the bytes of ``model.weights`` after wrapping minus before
(wrapping masks in place: it must add nothing to the model's own weights).
``keras_sparse.Trainer`` and ``ks.SparseOptimizer`` allocate no other per-weight state: their
other variables are scalars, the optimizer slots they touch (momentum) are the optimizer's own,
the same in dense training, and they keep no host copy of the masks.

(c) ``--select``: the peak RSS growth of one mask selection on 2^24 scores (a 4096 x 4096
kernel), compiled as a graph and with XLA, each in a fresh process (``select_worker``).

(b) Peak resident memory of a training run: each run is a fresh process
(``python benchmarks/memory.py --worker MODEL VARIANT``) that builds the model and its trainer,
records ``ru_maxrss`` (its peak RSS so far), trains ``--steps`` steps of batch ``--batch`` on one
synthetic batch repeated (SGD with momentum), and records ``ru_maxrss`` again. By default
the Trainer compiles with XLA, one step a call (``--jit-compile true --steps-per-execution 1``);
``--jit-compile auto --steps-per-execution auto`` measures the Trainer's defaults instead (both
XLA settings timed on the first calls, and the mask update a plain graph, ``keras_sparse.tuning``). The growth
in training therefore includes ``Trainer.setup`` (initial masks), the XLA compilations and, for
RigL and magnitude pruning, the second compiled program that updates masks. Models: ``mlp_4096``
(784 → 4096 → 4096 → 10, ~20M parameters, where the weights dominate) and LeNet-300-100.
Variants (``common.algorithm``): ``dense`` = ``keras_sparse.algorithms.Dense()`` through the
Trainer (the baseline the ratios use), ``static`` = StaticSparse(0.9), ``rigl`` = RigL(0.9,
update_frequency=10), ``magnitude`` = MagnitudePruning(0.9, frequency=10, begin_step=0), and
``keras`` = a plain Keras 3 XLA step on the unwrapped model, with no masks at all. The variants
alternate within each of ``--repeats`` repeats, and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse.masking import mask_state as state_of  # noqa: E402

STATE_MODELS = ["lenet_300_100", "lenet5", "resnet", "mnist1d_cnn", "mnist1d_transformer"]
TRAIN_MODELS = {  # name: (model, builder options)
    "mlp_4096": ("mlp", {"hidden": (4096, 4096)}),
    "lenet_300_100": ("lenet_300_100", {}),
}
VARIANTS = ["keras", "dense", "static", "rigl", "magnitude"]


def variable_bytes(variable) -> int:
    """Bytes of a variable's value: dtype size × number of elements."""
    return np.dtype(keras.backend.standardize_dtype(variable.dtype)).itemsize * int(np.prod(variable.shape))


# ----------------------------------------------------------------- (a) mask state
def mask_state(name: str) -> dict:
    """Mask-state bytes of model ``name`` against the bytes of the weights they mask."""
    model = common.build(name)
    unwrapped_bytes = sum(variable_bytes(v) for v in model.weights)
    wrapped = ks.wrap(model, quiet=True)
    weights = ks.masked_weights(wrapped)
    kernel_bytes = sum(variable_bytes(w.variable) for w in weights)
    mask_bytes = sum(variable_bytes(w.mask) for w in weights)
    return {"model": name, "input_shape": list(common.MODELS[name][0]), "masked_kernels": len(weights),
            "kernel_elements": sum(int(np.prod(w.variable.shape)) for w in weights),
            "kernel_dtypes": sorted({keras.backend.standardize_dtype(w.variable.dtype) for w in weights}),
            "mask_dtypes": sorted({keras.backend.standardize_dtype(w.mask.dtype) for w in weights}),
            "kernel_bytes": kernel_bytes, "mask_variable_bytes": mask_bytes,
            "mask_state_bytes": sum(variable_bytes(v) for v in state_of(wrapped).weights),
            "bytes_added_to_model_weights": sum(variable_bytes(v) for v in wrapped.weights) - unwrapped_bytes,
            "mask_over_kernel": mask_bytes / kernel_bytes}


# ------------------------------------------------------- (c) one mask selection
SELECT_SIZE = 1 << 24  # a 4096 x 4096 kernel's scores


def select_worker(what: str, jit_compile: bool) -> dict:
    """Peak RSS growth of one compiled call of a mask selection on ``SELECT_SIZE`` scores:
    ``topk`` = ``mask_ops.topk_mask`` of magnitude scores (10% active); ``rigl`` = RigL's two
    selections (keep the largest active weights, grow by |gradient| among the rest). The
    inputs are variables made before the call; the first call (tracing and compiling included)
    is measured, then a second."""
    import tensorflow as tf

    from keras_sparse import mask_ops

    weight = tf.Variable(tf.random.normal([SELECT_SIZE], seed=1))
    mask = tf.Variable(tf.random.uniform([SELECT_SIZE], seed=2) < 0.1)
    gradient = tf.Variable(tf.random.normal([SELECT_SIZE], seed=3))
    keep = int(0.1 * SELECT_SIZE)

    @tf.function(jit_compile=jit_compile)
    def select():
        kept = mask_ops.topk_mask(tf.where(mask, tf.abs(weight), -1.0), keep - (keep // 10 if what == "rigl" else 0))
        if what == "rigl":
            kept = kept | mask_ops.topk_mask(tf.where(kept, float("-inf"), tf.abs(gradient)), keep // 10)
        return kept

    before = peak_rss_mib()
    kept = select()
    first = peak_rss_mib()
    select()
    second = peak_rss_mib()
    times = []
    for _ in range(5):  # the time of a call, once compiled (memory is measured before: no timing skews it)
        start = time.perf_counter()
        select().numpy()
        times.append(time.perf_counter() - start)
    return {"what": what, "jit_compile": jit_compile, "active": int(kept.numpy().sum()),
            "first_call_growth_mib": first - before, "second_call_growth_mib": second - first,
            "ms_per_call": 1000 * statistics.median(times)}


def run_select_worker(what: str, jit_compile: bool) -> dict:
    """``select_worker`` in a fresh Python process."""
    return _fresh_process("--select-worker", what, str(jit_compile).lower())


# ------------------------------------------------------------- (b) peak memory
def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(model_name: str, variant: str, steps: int, batch: int, jit_compile: bool | str = True,
           steps_per_execution: int | str = 1) -> dict:
    """Builds ``model_name`` for ``variant``, trains ``steps`` steps, and returns the peak RSS
    after the imports, after building, and after training."""
    after_imports = peak_rss_mib()
    name, options = TRAIN_MODELS[model_name]
    data = common.dataset(common.MODELS[name][0], steps, batch, autotune=None, distinct=1)
    model = common.build(name, **options)
    if variant == "keras":
        step = common.plain_step(model, common.sgd(), common.loss_fn(), jit_compile=True)
        after_build = peak_rss_mib()
        for x, y in data:
            loss = step(x, y)
        loss.numpy()
    else:
        trainer = common.trainer(model, common.algorithm(variant, every=10), common.sgd(),
                                 steps_per_execution=steps_per_execution, jit_compile=jit_compile)
        after_build = peak_rss_mib()
        trainer.fit(data, epochs=1)
    return {"model": model_name, "variant": variant, "steps": steps, "batch": batch, "jit_compile": jit_compile,
            "steps_per_execution": steps_per_execution,
            "parameters": model.count_params(), "peak_after_imports_mib": after_imports,
            "peak_after_build_mib": after_build, "peak_mib": peak_rss_mib()}


def run_worker(model_name: str, variant: str, steps: int, batch: int, jit_compile: bool | str,
               steps_per_execution: int | str) -> dict:
    """Runs ``worker`` in a fresh Python process and returns its result."""
    return _fresh_process("--worker", model_name, variant, "--steps", str(steps), "--batch", str(batch),
                          "--jit-compile", str(jit_compile).lower(), "--steps-per-execution", str(steps_per_execution))


def _fresh_process(*arguments: str) -> dict:
    """This script run with ``arguments`` in a fresh Python process: the JSON of its last line."""
    command = [sys.executable, os.path.abspath(__file__), *arguments]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def peak_memory(model_names: list[str], variants: list[str], steps: int, batch: int, repeats: int,
                jit_compile: bool | str = True, steps_per_execution: int | str = 1) -> list[dict]:
    """Every (model, variant) run ``repeats`` times in fresh processes, variants alternating
    within each repeat; returns per (model, variant) the raw runs and their medians."""
    runs: dict[tuple[str, str], list[dict]] = {(m, v): [] for m in model_names for v in variants}
    for _ in range(repeats):
        for m in model_names:
            for v in variants:
                runs[(m, v)].append(run_worker(m, v, steps, batch, jit_compile, steps_per_execution))
    results = []
    for (m, v), raw in runs.items():
        growth = [r["peak_mib"] - r["peak_after_build_mib"] for r in raw]
        results.append({"model": m, "variant": v, "parameters": raw[0]["parameters"], "runs": raw,
                        "median": {"peak_mib": statistics.median(r["peak_mib"] for r in raw),
                                   "peak_after_build_mib": statistics.median(r["peak_after_build_mib"] for r in raw),
                                   "growth_mib": statistics.median(growth)}})
    for r in results:
        dense = next(d for d in results if d["model"] == r["model"] and d["variant"] == "dense")["median"]
        r["peak_over_dense"] = r["median"]["peak_mib"] / dense["peak_mib"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=STATE_MODELS, choices=STATE_MODELS,
                        help="models of (a), mask state")
    parser.add_argument("--train-models", nargs="*", default=list(TRAIN_MODELS), choices=list(TRAIN_MODELS),
                        help="models of (b), peak memory")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--select", action="store_true", help="only (c): one mask selection's peak memory growth")
    parser.add_argument("--select-worker", nargs=2, metavar=("WHAT", "JIT"), help=argparse.SUPPRESS)
    parser.add_argument("--jit-compile", default="true", choices=["true", "false", "auto"],
                        help="the Trainer's jit_compile in (b) (the plain Keras step always uses XLA)")
    parser.add_argument("--steps-per-execution", default="1",
                        help="the Trainer's steps_per_execution in (b): N or auto")
    parser.add_argument("--out", default="memory.json")
    args = parser.parse_args()
    jit_compile = {"true": True, "false": False}.get(args.jit_compile, args.jit_compile)
    steps_per_execution = "auto" if args.steps_per_execution == "auto" else int(args.steps_per_execution)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.batch, jit_compile, steps_per_execution)))
        return
    if args.select_worker:
        print(json.dumps(select_worker(args.select_worker[0], args.select_worker[1] == "true")))
        return
    if args.select:
        rows = [run_select_worker(what, jit) for what in ("topk", "rigl") for jit in (False, True)]
        print(f"(c) peak RSS growth of one mask selection on {SELECT_SIZE:,} scores, fresh process each\n")
        print(harness.table(["selection", "XLA", "first call MiB", "second call MiB", "ms a call (median of 5)"],
                            [[r["what"], str(r["jit_compile"]), f"{r['first_call_growth_mib']:.0f}",
                              f"{r['second_call_growth_mib']:.0f}", f"{r['ms_per_call']:.0f}"] for r in rows]))
        harness.write_json(args.out, {"selection": rows})
        return
    if "dense" not in args.variants:
        parser.error("--variants must include dense: the ratios are to it")

    state = [mask_state(name) for name in args.models]
    print("(a) mask state ÷ bytes of the kernels it masks (a float32 mask per weight would be 1.0; target ≤ 0.25)\n")
    print(harness.table(["model", "masked weights", "their elements", "their bytes", "mask variable bytes",
                         "mask state bytes", "added to model.weights", "mask ÷ kernel"],
                        [[r["model"], str(r["masked_kernels"]), f"{r['kernel_elements']:,}", f"{r['kernel_bytes']:,}",
                          f"{r['mask_variable_bytes']:,}", f"{r['mask_state_bytes']:,}",
                          f"{r['bytes_added_to_model_weights']:,}", f"{r['mask_over_kernel']:.3f}"] for r in state]))

    peaks = peak_memory(args.train_models, args.variants, args.steps, args.batch, args.repeats, jit_compile,
                        steps_per_execution)
    print(f"\n(b) peak RSS of a training run, fresh process each: {args.steps} steps, batch {args.batch}, "
          f"Trainer jit_compile={jit_compile}, steps_per_execution={steps_per_execution}, "
          f"median of {args.repeats} alternating repeats\n")
    print(harness.table(["model", "parameters", "variant", "peak after build MiB", "peak MiB",
                         "growth in training MiB", "peak ÷ Trainer dense"],
                        [[r["model"], f"{r['parameters']:,}", r["variant"],
                          f"{r['median']['peak_after_build_mib']:.0f}", f"{r['median']['peak_mib']:.0f}",
                          f"{r['median']['growth_mib']:.0f}",
                          f"{r['peak_over_dense']:.3f}"] for r in peaks]))
    harness.write_json(args.out, {"mask_state": state, "peak_memory": peaks,
                                  "trainer": {"jit_compile": jit_compile, "steps_per_execution": steps_per_execution}})


if __name__ == "__main__":
    main()
