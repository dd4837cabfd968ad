"""The frameworks' own floor: one plain training step of LeNet-300-100 written directly in
TensorFlow and in JAX, no Keras, flax, optax, keras-sparse or jaxpruner, side by side.

    python benchmarks/framework_floor.py [--alternations 7] [--steps 300] [--out framework_floor.json]
    python benchmarks/framework_floor.py --combine A.json B.json ...

The step: 784 → 300 → 100 → 10, ReLU, softmax cross-entropy, SGD with momentum 0.9 (m ← 0.9 m −
0.01 g; w ← w + m), batch 128, float32, on 20 fixed random batches, XLA on both sides:
TensorFlow ``tf.function(jit_compile=True)`` over ``tf.Variable``s (K = 1: the concrete
function called once a step; K = 20: a ``tf.while_loop`` over 20 stacked batches in the one
program), JAX ``jax.jit`` with the state donated (K = 1; K = 20: ``lax.scan``). Each framework
runs in its own worker process (the TensorFlow worker never imports JAX and the other way
round); rounds of ``--steps`` steps alternate between them. ``vs_jaxpruner.py`` compares the
libraries; this script gives the ratio that the same model costs in the two frameworks with
nothing of either library in it, the floor under keras-sparse ÷ jaxpruner at the same K.

The TensorFlow worker also runs keras-sparse on the same batches (``--trainer``: ``ks.Trainer``,
Keras's LeNet-300-100 of ``common.py``, static ERK 90%, XLA on, ``steps_per_execution`` K, an
epoch of ``--steps`` a round), so that what keras-sparse adds to TensorFlow's own step is timed
in the same process, round by round.
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

SHAPES = [(784, 300), (300,), (300, 100), (100,), (100, 10), (10,)]
BATCH, DISTINCT, KS = 128, 20, (1, 20)
SIDES = ("tensorflow", "jax")
PROGRAMS = ("tensorflow", "keras_sparse", "jax")


def batches():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((DISTINCT, BATCH, 784)).astype("float32")
    y = rng.integers(0, 10, (DISTINCT, BATCH)).astype("int32")
    params = [(rng.standard_normal(s) * 0.05).astype("float32") for s in SHAPES]
    return x, y, params


def keras_sparse_programs(steps: int):
    """``ks.Trainer`` (static ERK 90%, XLA on) for K = 1 and 20, an epoch of ``steps`` a run."""
    import common

    data = common.dataset((28, 28, 1), steps, BATCH, distinct=DISTINCT)  # the same sizes, common.py's draws
    epochs = {k: common.epochs_of(common.trainer(common.lenet_300_100(), common.algorithm("static"), common.sgd(),
                                                 k, True), data, steps) for k in KS}

    def run(k: int, _steps: int) -> None:
        epochs[k]()

    return run


def tensorflow_programs() -> dict[int, Any]:
    sys.modules["jax"] = None  # TensorFlow imports JAX when it is installed; keep this worker pure
    import tensorflow as tf

    x, y, initial = batches()
    params = [tf.Variable(p) for p in initial]
    momenta = [tf.Variable(tf.zeros_like(p)) for p in initial]

    def step(xb, yb):
        with tf.GradientTape() as tape:
            h = xb
            for i in range(0, 6, 2):
                h = h @ params[i] + params[i + 1]
                h = tf.nn.relu(h) if i < 4 else h
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, h))
        for p, m, g in zip(params, momenta, tape.gradient(loss, params)):
            m.assign(0.9 * m - 0.01 * g)
            p.assign_add(m)
        return loss

    one = tf.function(step, jit_compile=True)

    @tf.function(jit_compile=True)
    def staged(xs, ys):
        return tf.while_loop(lambda i, _: i < KS[1], lambda i, _: (i + 1, step(tf.gather(xs, i), tf.gather(ys, i))),
                             (tf.constant(0), tf.constant(0.0)))[1]

    singles = [(tf.constant(x[i]), tf.constant(y[i])) for i in range(DISTINCT)]
    stacks = [(tf.constant(x[i:i + KS[1]]), tf.constant(y[i:i + KS[1]])) for i in range(0, DISTINCT, KS[1])]
    one_concrete = one.get_concrete_function(*singles[0])
    staged_concrete = staged.get_concrete_function(*stacks[0])

    def run(k: int, steps: int) -> None:
        if k == 1:
            for i in range(steps):
                loss = one_concrete(*singles[i % DISTINCT])
        else:
            for i in range(steps // k):
                loss = staged_concrete(*stacks[i % len(stacks)])
        loss.numpy()

    return run


def jax_programs():
    sys.modules["tensorflow"] = None
    import jax
    import jax.numpy as jnp

    x, y, initial = batches()

    def loss_fn(params, xb, yb):
        h = xb
        for i in range(0, 6, 2):
            h = h @ params[i] + params[i + 1]
            h = jax.nn.relu(h) if i < 4 else h
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), yb[:, None], axis=1))

    def step(state, batch):
        params, momenta = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        momenta = [0.9 * m - 0.01 * g for m, g in zip(momenta, grads)]
        return ([p + m for p, m in zip(params, momenta)], momenta), loss

    one = jax.jit(step, donate_argnums=0)
    staged = jax.jit(lambda state, xs, ys: jax.lax.scan(step, state, (xs, ys)), donate_argnums=0)
    state = [[jnp.asarray(p) for p in initial], [jnp.zeros_like(jnp.asarray(p)) for p in initial]]
    singles = [(jnp.asarray(x[i]), jnp.asarray(y[i])) for i in range(DISTINCT)]
    stacks = [(jnp.asarray(x[i:i + KS[1]]), jnp.asarray(y[i:i + KS[1]])) for i in range(0, DISTINCT, KS[1])]
    holder = {"state": state}

    def run(k: int, steps: int) -> None:
        state = holder["state"]
        if k == 1:
            for i in range(steps):
                state, _ = one(state, singles[i % DISTINCT])
        else:
            for i in range(steps // k):
                state, _ = staged(state, *stacks[i % len(stacks)])
        jax.block_until_ready(state)
        holder["state"] = state

    return run


def worker(side: str, config: dict[str, Any]) -> None:
    emit = harness.json_lines_out()
    runs = {"jax": jax_programs()} if side == "jax" else {"tensorflow": tensorflow_programs()}
    if side == "tensorflow" and config["trainer"]:
        runs["keras_sparse"] = keras_sparse_programs(config["steps"])
    for run in runs.values():
        for k in KS:
            run(k, 2 * config["steps"])  # compilation and warm-up
    emit({"status": "ready"})
    for line in sys.stdin:
        command, _, what = line.strip().partition(" ")
        if command != "run":
            break
        program, k = what.split()
        start = time.perf_counter()
        runs[program](int(k), config["steps"])
        emit({"seconds": time.perf_counter() - start})


def summarize(run: dict[str, Any]) -> None:
    steps = run["config"]["steps"]
    run["cases"] = {}
    for k, programs in run["seconds"].items():
        rates = {program: [steps / s for s in seconds] for program, seconds in programs.items() if seconds}
        case = {**{program: statistics.median(r) for program, r in rates.items()},
                "ratio": harness.round_ratios(rates, "tensorflow", "jax")}
        if "keras_sparse" in rates:
            case["trainer_ratio"] = harness.round_ratios(rates, "keras_sparse", "tensorflow")
        run["cases"][k] = case


def report(runs: list[dict[str, Any]]) -> str:
    trainer = all("trainer_ratio" in case for r in runs for case in r["cases"].values())
    rows = [[f"K = {k}", harness.cells(runs, lambda r, k=k: r["cases"][k]["tensorflow"], 1),
             harness.cells(runs, lambda r, k=k: r["cases"][k]["jax"], 1),
             harness.ratio_cells([r["cases"][k]["ratio"] for r in runs], "iqr")]
            + ([harness.cells(runs, lambda r, k=k: r["cases"][k]["keras_sparse"], 1),
                harness.ratio_cells([r["cases"][k]["trainer_ratio"] for r in runs], "iqr")] if trainer else [])
            for k in runs[0]["cases"]]
    header = ["steps a call", "TensorFlow steps/s", "JAX steps/s", "TensorFlow ÷ JAX (IQR)"]
    if trainer:
        header += ["ks.Trainer static steps/s", "ks.Trainer ÷ TensorFlow (IQR)"]
    return harness.table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alternations", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300, help="steps a round, a multiple of 20")
    parser.add_argument("--trainer", action="store_true", help="also time ks.Trainer in the TensorFlow worker")
    parser.add_argument("--out", default="framework_floor.json")
    harness.add_worker_flags(parser, SIDES)
    args = parser.parse_args()
    if harness.ran_combine_or_worker(args, report, worker):
        return
    started = time.perf_counter()
    config = {"steps": args.steps, "alternations": args.alternations, "trainer": args.trainer}
    programs = PROGRAMS if args.trainer else SIDES
    log_dir = tempfile.mkdtemp(prefix="framework_floor_")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    workers = {side: harness.Worker(harness.worker_command(__file__, side, config), env,
                                    os.path.join(log_dir, f"{side}.log")) for side in SIDES}
    seconds = {str(k): {program: [] for program in programs} for k in KS}
    try:
        for side, w in workers.items():
            record = w.read()
            if record.get("status") != "ready":
                raise SystemExit(f"the {side} worker failed: {record.get('error')}")
        for r in range(args.alternations):
            for c, k in enumerate(KS):
                for program in (programs if (r + c) % 2 == 0 else programs[::-1]):
                    side = "jax" if program == "jax" else "tensorflow"
                    seconds[str(k)][program].append(workers[side].request(f"run {program} {k}")["seconds"])
    finally:
        for w in workers.values():
            w.close()
    run = {"config": config, "seconds": seconds, "log_dir": log_dir}
    harness.finish_run(run, args.out, started, lambda run: [], summarize, report)


if __name__ == "__main__":
    main()
