"""Epoch wall time of Keras's ``model.fit`` with a ``ks.SparseOptimizer`` against ``ks.Trainer.fit``
at the same steps per compiled call.

    python benchmarks/fit_vs_trainer.py [--models lenet_300_100 mnist1d_transformer] [--rounds 15]
        [--steps 100] [--steps-per-execution 1 20] [--algorithms static rigl] [--no-reference]
        [--diagnose] [--programs] [--program-rounds 9] [--no-loops] [--out fit_vs_trainer.json]
    python benchmarks/fit_vs_trainer.py --combine A.json B.json ...

Models, batches and optimizers as ``mask_overhead.py`` (``common.MODELS``): LeNet-300-100,
batch 128, SGD(0.01, momentum 0.9); the MNIST-1D transformer, batch 64, AdamW(1e-3). Every
variant reads the same ``--steps`` fixed random in-memory batches (tf.data autotuning off, as
the Trainer runs its data), one epoch a round, XLA on, 90% sparsity (ERK):

- ``fit <algorithm> K=<k>``: ``ks.wrap(model)``; ``model.compile(optimizer=ks.SparseOptimizer(
  optimizer, algorithm, total_steps=...), loss, jit_compile=True, steps_per_execution=k)``; one
  ``model.fit(data, epochs=1, verbose=0)`` a round. Mask updates are decided in-graph.
- ``trainer <algorithm> K=<k>``: ``ks.Trainer(model, algorithm, optimizer, loss,
  jit_compile=True, steps_per_execution=k)``; round r runs ``trainer.fit(data, epochs=...)``
  one epoch further.
- ``fit dense K=<k>`` (reference, unless ``--no-reference``): plain Keras 3 ``model.fit`` of the
  unwrapped model with the plain optimizer: Keras's own loop, without keras-sparse.
- ``--diagnose`` adds ``fit static-no-cond K=<k>``: ``model.fit`` with a ``SparseOptimizer``
  subclass (written here) whose ``apply`` calls ``sparse_apply(update=False)``, i.e. without the
  in-graph ``tf.cond`` that decides mask updates (valid for static sparsity only).

Algorithms: ``static`` = StaticSparse(0.9); ``rigl`` = RigL(0.9, update_frequency=100,
``end_step`` past the last round), so each 100-step round holds one mask update. Two untimed
warm-up epochs (compilation, the updates at steps 0 and 100) precede the rounds.

The machine is shared and noisy: every round runs each variant once, in a new seeded random
order, and the script reports medians over rounds and, for each (algorithm, K), the median of
the per-round ratios ``fit ÷ trainer`` in steps/s (both epochs of a ratio from the same round),
with their min–max.

``--programs`` adds a table of the compiled programs alone, without either loop, to say where
the loops' difference goes (static 90%, the model's batch repeated, called back to back; ms a
step, median over ``--program-rounds`` alternating rounds):

- ``1 a call, sparse_apply(update=False)``: the one-step program, called as a ``tf.function``;
  ``..., optimizer.apply (tf.cond)``: the same through ``optimizer.apply``, which ``model.fit``
  calls (the in-graph decision of mask updates); ``1 a call, dense``: the plain model's step.
- ``20 in one XLA program, ...``: 20 steps in one XLA ``tf.while_loop`` (what
  ``ks.Trainer(steps_per_execution=20)`` compiles; ``common.staged_steps``).
- ``20 XLA steps from a graph loop, ...``: a ``tf.function`` without XLA whose ``tf.while_loop``
  calls the one-step XLA program 20 times (the shape of Keras's ``model.fit`` with
  ``steps_per_execution=20``, without its iterator, ``Optional`` and metrics;
  ``common.graph_loop``).

``--no-loops`` leaves the loops out (programs only).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402

UPDATE_EVERY, WARMUP_EPOCHS = 100, 2


class NoCondSparseOptimizer(ks.SparseOptimizer):
    """A ``SparseOptimizer`` whose ``apply`` never updates masks, decided while tracing
    (``sparse_apply(update=False)``) instead of by the in-graph ``tf.cond``: the diagnostic
    variant of ``--diagnose``; right for static sparsity only."""

    def apply(self, grads, trainable_variables=None):
        variables = list(trainable_variables)  # Keras's apply_gradients always passes them
        if not self.built:
            self.build(variables)
        self.prepare()
        self.sparse_apply(grads, variables, update=False)


def algorithm(name: str, last_step: int) -> ks.algorithms.SparseAlgorithm:
    """``static`` or ``rigl`` (every 100 steps to ``last_step``)."""
    return common.algorithm("rigl" if name == "rigl" else "static", UPDATE_EVERY, end_step=last_step)


class Variant:
    """One loop that runs one epoch a call (``run``), its epoch times, and how it ended."""

    def __init__(self, name: str, epoch: Callable[[int], None], state: Callable[[], dict]):
        self.name, self._epoch, self.state, self.seconds = name, epoch, state, []
        started = time.perf_counter()
        for done in range(WARMUP_EPOCHS):
            self._epoch(done)
        self.setup_seconds = time.perf_counter() - started

    def run(self) -> None:
        start = time.perf_counter()
        self._epoch(WARMUP_EPOCHS + len(self.seconds))
        self.seconds.append(time.perf_counter() - start)


def fit_variant(model_name: str, algo: str, k: int, data, last_step: int, fused: bool = False) -> Variant:
    """``model.fit`` with a ``SparseOptimizer`` (``algo`` "dense": the plain model and optimizer);
    ``fused``: with ``ks.fuse_steps(model)`` after ``compile``."""
    model = common.build(model_name)
    if algo == "dense":
        optimizer = common.optimizer_for(model_name)
    else:
        kind = NoCondSparseOptimizer if algo == "static-no-cond" else ks.SparseOptimizer
        optimizer = kind(common.optimizer_for(model_name), algorithm(algo, last_step), total_steps=last_step,
                         model=model)
    model.compile(optimizer=optimizer, loss=common.loss_fn(), jit_compile=True, steps_per_execution=k)
    if fused and not ks.fuse_steps(model):
        raise SystemExit("fuse_steps does not apply to this model")

    def state() -> dict:
        return {"steps": int(model.optimizer.iterations.numpy()),
                "sparsity": ks.sparsity(model) if algo != "dense" else 0.0}

    return Variant(f"{'fit-fused' if fused else 'fit'} {algo} K={k}",
                   lambda done: model.fit(data, epochs=1, verbose=0, shuffle=False), state)


def trainer_variant(model_name: str, algo: str, k: int, data, last_step: int) -> Variant:
    model = common.build(model_name)
    trainer = common.trainer(model, algorithm(algo, last_step), common.optimizer_for(model_name), k)

    def state() -> dict:
        return {"steps": trainer.step, "sparsity": ks.sparsity(model)}

    return Variant(f"trainer {algo} K={k}", lambda done: trainer.fit(data, epochs=done + 1), state)


def measure(model_name: str, args) -> dict:
    shape, batch, _ = common.MODELS[model_name]
    data = common.dataset(shape, args.steps, batch)
    last_step = args.steps * (WARMUP_EPOCHS + args.rounds + 1)
    started = time.perf_counter()
    variants = []
    for k in args.steps_per_execution:
        for algo in args.algorithms:
            variants += [fit_variant(model_name, algo, k, data, last_step),
                         trainer_variant(model_name, algo, k, data, last_step)]
            if args.fused:
                variants.append(fit_variant(model_name, algo, k, data, last_step, fused=True))
        if args.diagnose:
            variants.append(fit_variant(model_name, "static-no-cond", k, data, last_step))
        if args.reference:
            variants.append(fit_variant(model_name, "dense", k, data, last_step))
    order = random.Random(0)
    for _ in range(args.rounds):
        for v in order.sample(variants, len(variants)):
            v.run()
    seconds = {v.name: v.seconds for v in variants}
    rates = {name: [args.steps / s for s in values] for name, values in seconds.items()}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {}
    for k in args.steps_per_execution:
        for algo in args.algorithms:
            ratios[f"fit {algo} K={k} / trainer {algo} K={k}"] = harness.round_ratios(
                rates, f"fit {algo} K={k}", f"trainer {algo} K={k}")
            if args.fused:
                for other in (f"trainer {algo} K={k}", f"fit {algo} K={k}"):
                    ratios[f"fit-fused {algo} K={k} / {other}"] = harness.round_ratios(
                        rates, f"fit-fused {algo} K={k}", other)
        others = ([f"fit static-no-cond K={k}"] if args.diagnose else []) + \
                 ([f"fit dense K={k}"] if args.reference else [])
        for name in others:
            if "static" in args.algorithms:
                ratios[f"{name} / trainer static K={k}"] = harness.round_ratios(rates, name, f"trainer static K={k}")
                ratios[f"fit static K={k} / {name}"] = harness.round_ratios(rates, f"fit static K={k}", name)
    expected = args.steps * (WARMUP_EPOCHS + args.rounds)
    states = {v.name: v.state() for v in variants}
    problems = [f"{name}: trained {s['steps']} steps, expected {expected}" for name, s in states.items()
                if s["steps"] != expected]
    problems += [f"{name}: sparsity {s['sparsity']:.4f}" for name, s in states.items()
                 if "dense" not in name and abs(s["sparsity"] - common.SPARSITY) > 0.005]
    return {"model": model_name, "batch": batch, "optimizer": type(common.optimizer_for(model_name)).__name__,
            "steps": args.steps, "rounds": args.rounds, "steps_per_execution": args.steps_per_execution,
            "algorithms": args.algorithms, "seconds": seconds, "steps_per_second": rates,
            "median": medians, "ratios": ratios, "state": states, "problems": problems,
            "setup_seconds": {v.name: v.setup_seconds for v in variants},
            "wall_seconds": time.perf_counter() - started}


def programs(model_name: str, rounds: int, stack: int = 20) -> dict:
    """Milliseconds a step of the compiled programs alone (``--programs``), alternating by round."""
    x, y = common.batch_of(model_name)
    xs, ys = tf.stack([x] * stack), tf.stack([y] * stack)
    loss = common.loss_fn()
    dense_model = common.build(model_name)
    dense_optimizer = common.optimizer_for(model_name)
    dense = common.plain_step(dense_model, dense_optimizer, loss, True)
    model = common.build(model_name)
    sparse = common.sparse_optimizer(model, algorithm("static", 0), common.optimizer_for(model_name))
    plain = common.sparse_step(model, sparse, loss, True, update=False)
    cond = common.sparse_step(model, sparse, loss, True, update=None)
    single, staged = (lambda: (x, y)), (lambda: (xs, ys))
    table = {  # name: (program, its arguments, steps a call)
        "1 a call, dense": (dense, single, 1),
        "1 a call, sparse_apply(update=False)": (plain, single, 1),
        "1 a call, optimizer.apply (tf.cond)": (cond, single, 1),
        f"{stack} in one XLA program, dense": (common.staged_steps(dense_model, dense_optimizer, loss, True), staged,
                                              stack),
        f"{stack} in one XLA program, sparse_apply(update=False)":
            (common.staged_steps(model, sparse, loss, True, update=False), staged, stack),
        f"{stack} in one XLA program, optimizer.apply (tf.cond)":
            (common.staged_steps(model, sparse, loss, True, update=None), staged, stack),
        f"{stack} XLA steps from a graph loop, dense": (common.graph_loop(dense), staged, stack),
        f"{stack} XLA steps from a graph loop, sparse_apply(update=False)": (common.graph_loop(plain), staged, stack),
        f"{stack} XLA steps from a graph loop, optimizer.apply (tf.cond)": (common.graph_loop(cond), staged, stack),
    }
    calls = {}  # a round of each program: about 0.2 s, from three timed calls after the compiling one
    for name, (program, arguments, _) in table.items():
        args = arguments()
        calls[name] = max(2, round(0.2 / common.seconds_per_call(lambda p=program, a=args: p(*a), 3)))
    ms: dict[str, list[float]] = {name: [] for name in table}
    names = list(table)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            program, arguments, steps = table[name]
            args = arguments()
            ms[name].append(1000 * common.seconds_per_call(lambda p=program, a=args: p(*a), calls[name]) / steps)
    return {"ms_per_step": ms, "median": {name: statistics.median(v) for name, v in ms.items()}, "calls": calls,
            "rounds": rounds, "sparsity": ks.sparsity(model)}


def report(runs: list[dict]) -> str:
    """The tables of one run, or of several (cells "A / B / …"; models that every run has)."""
    out = []
    names = [r["model"] for r in runs[0]["results"] if all(any(s["model"] == r["model"] for s in run["results"])
                                                           for run in runs)]
    for name in names:
        points = [next(r for r in run["results"] if r["model"] == name) for run in runs]
        first = points[0]
        if "seconds" in first:
            rows = []
            for k in first["steps_per_execution"]:
                for algo in first["algorithms"]:
                    fit, trainer = f"fit {algo} K={k}", f"trainer {algo} K={k}"
                    q = f"{fit} / {trainer}"
                    ratios = [p["ratios"][q] for p in points]
                    rows.append([str(k), algo, harness.cells(points, lambda p, n=fit: p["median"][n], 1),
                                 harness.cells(points, lambda p, n=trainer: p["median"][n], 1),
                                 *(harness.ratio_cells(ratios, spread) for spread in (None, "iqr only", "range only"))])
            out.append(f"{name}, batch {first['batch']}, {first['optimizer']}, {first['steps']} steps a round, "
                       + harness.cells(points, lambda p: f"{p['rounds']} rounds", 0) + " in random order, XLA on\n\n"
                       + harness.table(["K", "algorithm", "model.fit steps/s", "Trainer steps/s",
                                        "fit ÷ Trainer (median of round ratios)", "IQR", "min–max"], rows))
            others = [label for label in first["ratios"]
                      if label not in {f"fit {a} K={k} / trainer {a} K={k}" for k in first["steps_per_execution"]
                                       for a in first["algorithms"]}]
            if others:
                rows = [[label, *(harness.ratio_cells([p["ratios"][label] for p in points], spread)
                                  for spread in (None, "iqr only"))] for label in others]
                out.append(f"{name}: where the difference goes (steps/s ratios, median of round ratios)\n\n"
                           + harness.table(["ratio", "median", "IQR"], rows))
            for point in points:
                out += [f"warning: {problem}" for problem in point["problems"]]
        if "programs" in first:
            programs_of = [p["programs"] for p in points]
            rows = [[program, harness.cells(programs_of, lambda p, n=program: p["median"][n]),
                     harness.cells(programs_of, lambda p, n=program: f"{min(p['ms_per_step'][n]):.3f}–"
                                                                   f"{max(p['ms_per_step'][n]):.3f}")]
                    for program in programs_of[0]["median"]]
            out.append(f"{name}: compiled programs alone, static 90%, XLA, ms a step, median of "
                       + harness.cells(programs_of, lambda p: f"{p['rounds']} alternating rounds", 0) + "\n\n"
                       + harness.table(["program", "ms a step", "min–max"], rows))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "mnist1d_transformer"],
                        choices=list(common.MODELS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100, help="steps an epoch (one epoch a round)")
    parser.add_argument("--steps-per-execution", nargs="+", type=int, default=[1, 20])
    parser.add_argument("--algorithms", nargs="+", default=["static", "rigl"], choices=["static", "rigl"])
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="leave out the plain Keras model.fit reference")
    parser.add_argument("--diagnose", action="store_true",
                        help="add model.fit with a SparseOptimizer that skips the in-graph tf.cond (static only)")
    parser.add_argument("--fused", action="store_true",
                        help="add model.fit after ks.fuse_steps(model) (K > 1: K steps in one XLA program; "
                             "K = 1: the XLA step called directly)")
    parser.add_argument("--programs", action="store_true", help="also time the compiled programs alone")
    parser.add_argument("--program-rounds", type=int, default=9)
    parser.add_argument("--no-loops", dest="loops", action="store_false", help="programs only")
    parser.add_argument("--out", default="fit_vs_trainer.json")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help=harness.COMBINE_HELP)
    args = parser.parse_args()
    if args.combine:
        print(report(harness.load_runs(args.combine)))
        return
    if any(args.steps % k for k in args.steps_per_execution):
        parser.error("--steps must be a multiple of every --steps-per-execution")
    results = []
    for name in args.models:
        r = measure(name, args) if args.loops else {"model": name}
        if args.programs:
            r["programs"] = programs(name, args.program_rounds)
        results.append(r)
    run = {"results": results}
    print(report([run]))
    harness.write_json(args.out, run)

if __name__ == "__main__":
    main()
