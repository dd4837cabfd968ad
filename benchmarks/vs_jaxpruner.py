"""Steps/s of keras-sparse against jaxpruner (JAX, flax, optax), same models, algorithms and masks.

    python benchmarks/vs_jaxpruner.py [--alternations 5] [--lenet-steps 300] [--resnet-steps 20]
                                      [--transformer-steps 100] [--cases ...] [--jaxpruner PATH]
                                      [--out vs_jaxpruner.json]
    python benchmarks/vs_jaxpruner.py --quick             # smoke run, about 4 minutes
    python benchmarks/vs_jaxpruner.py --combine A.json B.json ...

The JAX side needs the ``jaxbench`` extra (``pip install -e '.[jaxbench]'``: pinned jax, jaxlib,
flax, optax, chex, ml-collections) and jaxpruner, which is not on the package index: the source of
google-research/jaxpruner at commit f133ee5 (Apache License 2.0), e.g.
``git clone https://github.com/google-research/jaxpruner && git -C jaxpruner checkout f133ee5``.
``--jaxpruner`` names the folder that holds its ``jaxpruner`` package (default
``../shared/vendor/jaxpruner-f133ee5`` beside this repository, where the project keeps that
commit's library package); the JAX worker alone puts it on ``sys.path``, after defining
``jax.tree_map`` (gone from current JAX, called by that commit) as ``jax.tree_util.tree_map``
with the None handling of the JAX that commit was written for (``tree_map_keeping_none``: a
plain alias breaks its SET and RigL on models with unpruned parameters). Nothing of jaxpruner
is copied into this repository.

Cases (``MODEL ALGORITHM K=k``, ``k`` steps a compiled call):

- ``lenet_300_100 {dense,static,set,rigl,magnitude} K={1,20}``: LeNet-300-100 (Flatten, Dense
  300 ReLU, Dense 100 ReLU, Dense 10) on random 28×28×1 (784-d) inputs, batch 128, SGD(0.01,
  momentum 0.9);
- ``lenet_300_100 static_fit K={1,20}``: the same static case with Keras's own loop on our side,
  ``model.compile(optimizer=ks.SparseOptimizer(...), jit_compile=True, steps_per_execution=k)``
  and ``model.fit(..., callbacks=[ks.SparsityCallback()])`` (the path most users run; the
  callback runs fit's steps as ``ks.Trainer`` does, ``ks.fuse_steps``), against jaxpruner's
  static case;
- ``resnet20 {static,rigl} K=1``: the CIFAR ResNet-20 of ``keras_sparse.models`` (3×3 convs
  without bias, BatchNorm, 1×1 shortcut convs with BatchNorm) on random 32×32×3 inputs, batch
  128, SGD(0.01, momentum 0.9); a flax module of the same layers, names and shapes on the JAX
  side, BatchNorm statistics updated in the step (``mutable=["batch_stats"]``);
- ``mnist1d_transformer {static,rigl} K=1``: ``keras_sparse.models.mnist1d_transformer``
  (patches of 4, dim 64, 4 heads, 2 pre-norm blocks, MLP 128, exact GELU) on random 40×1
  inputs, batch 64, AdamW(1e-3, weight decay 0.004, ε 1e-7: Keras's defaults, given to optax);
  flax's ``MultiHeadDotProductAttention`` has the same query/key/value/output kernel shapes.

keras-sparse runs ``ks.Trainer`` (``benchmarks/common.py``: ``ks.wrap``, XLA on,
``steps_per_execution=k``), one ``fit`` epoch of the round's length a round, on a cached
``tf.data`` set; jaxpruner runs ``updater.wrap_optax(optax ...)`` with
``updater.post_gradient_update`` after ``optax.apply_updates``, in one ``jax.jit`` step (state
donated), called once a step (K=1) or under ``jax.lax.scan`` over 20 stacked batches (K=20), on
batches already on the device. Both sides cycle through the same 20 random batches (numpy seed
0). ``dense`` is the plain step on both sides (``ks.algorithms.Dense`` in the Trainer; plain
optax, no jaxpruner updater).

Sparsity: ERK 90% over the kernels keras-sparse masks (Dense, conv and attention kernels; not
biases, normalisation or the position embedding), for magnitude pruning as well. The per-layer
targets come from keras-sparse (``keras_sparse.distributions`` through the algorithm's
``target_active``) and go to jaxpruner as its per-parameter sparsity tree (1 − active / size,
which its top-k rounds back to the same count); the script checks that every masked kernel has
the same shape on both sides and that both hold the same number of active weights per layer
(static/SET/RigL after set-up and at the end; magnitude pruning at the end), and stops if not.
jaxpruner's own ``sparsity_distributions.erk`` over the same kernels is recorded for comparison
(``jaxpruner_erk_active`` in the JSON): it budgets each layer's zeros with a floor, ours the
global count, so a layer's count can differ by one or so.

Schedules, the same on both sides: SET/RigL update every ``--update-every`` (ΔT = 100) steps from
step 0 through the whole run (ours: ``end_step`` = the run's length, updates at t < end;
jaxpruner: ``PeriodicSchedule(update_end_step=end − 1)``, whose bound is inclusive), drop
fraction α/2 (1 + cos(π t / end)) with keras-sparse's α = 0.3 (jaxpruner: ``drop_fraction_fn =
optax.cosine_decay_schedule(α, end)``, the same function; ``create_updater_from_config``'s default
α would be 0.1). Magnitude pruning goes from dense at step 0 to the targets at ``end``, the last
multiple of ΔT inside the run, every ΔT steps, cubic (Zhu & Gupta; jaxpruner
``PolynomialSchedule``).

Conventions that differ (read from jaxpruner f133ee5: ``base_updater.py``,
``algorithms/sparse_trainers.py``, ``algorithms/pruners.py``, ``sparsity_schedules.py``,
``sparsity_distributions.py``, ``mask_calculator.py``):

- An update step replaces the optimizer step in RigL and SET on both sides (jaxpruner:
  ``skip_gradients=True``: zero updates and the optimizer state left as it is); magnitude pruning
  takes its optimizer step on both.
- jaxpruner decides each step's mask update in the compiled step (``lax.cond`` on the count in the
  optimizer state) and computes every top-k with a full ``argsort`` of the layer (RigL/SET: two
  sorts a layer an update: drop, then grow); ``ks.Trainer`` picks the update program in Python
  (``model.fit`` with ``ks.SparseOptimizer`` decides in-graph, as jaxpruner does) and uses its
  own top-k.
- Drop count: jaxpruner keeps round(n_active · (1 − f)) (float32), keras-sparse drops
  round(f · n_active): the same count except at a half tie.
- A weight dropped and grown again in the same update keeps its value in jaxpruner (its mask ends
  at 1, nothing zeroes it); keras-sparse zeroes every grown weight. Both reset the grown weights'
  optimizer slots (momentum; Adam's moments).
- Gradient masking: keras-sparse masks the gradients of every algorithm before the optimizer
  and re-masks the weights after it; jaxpruner masks them for static/SET/RigL
  (``is_sparse_gradients=True``) but not for magnitude pruning, whose pruned weights (and their
  momentum) move in the optimizer and are re-zeroed after the step by ``post_gradient_update``.
- Magnitude pruning's progress is (t + 1 − begin) / (end − begin) in jaxpruner, (t − begin) /
  (end − begin) in keras-sparse (tfmot's ``PolynomialDecay``): jaxpruner's step-0 update already
  prunes a little; both reach the targets at ``end``.
- jaxpruner's initial masks live in the optimizer state and its parameters are not masked until
  the first ``post_gradient_update``; the script applies it once after ``init`` so both start from
  masked weights.

Timing: the keras-sparse worker (TensorFlow, never JAX) starts first and reports its per-layer
targets; then the jaxpruner worker (JAX, never TensorFlow). Each makes the other side's modules
unimportable and checks they are not loaded (TensorFlow imports JAX by itself whenever it is
installed, in ``tensorflow/lite/python/util.py``, and does without it on an ImportError). Each
builds every case and runs one untimed round (tracing, XLA compilation, the first mask update).
Then ``--alternations`` rounds: every case runs one round of its length on each side, the two
sides back to back, in an order that alternates from round to round and case to case. Reported
per case: steps/s by median over rounds on each side; ours ÷ jaxpruner as the median of per-round
ratios, with its spread; the ratio over all timed steps (total steps ÷ total seconds: with
ResNet-20's 20-step rounds and ΔT = 100 only some rounds hold a mask update, which the medians
mostly skip and the all-steps ratio counts); the mask updates inside the timed rounds; and the
compile time, reported apart (jaxpruner: its first call, i.e. tracing, compilation and one call's
steps; keras-sparse: its first round minus that round's steps at its median rate). One JSON per
run (``--out``). ``--quick``: 100-step LeNet rounds, 10-step ResNet rounds, 40-step transformer
rounds, 3 alternations.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_JAXPRUNER = os.path.normpath(os.path.join(ROOT, "..", "shared", "vendor", "jaxpruner-f133ee5"))
SIDES = ("keras_sparse", "jaxpruner")
#: Case models: name in the case -> ``common.MODELS`` name.
MODELS = {"lenet_300_100": "lenet_300_100", "resnet20": "resnet", "mnist1d_transformer": "mnist1d_transformer"}
CASES = ([f"lenet_300_100 {algorithm} K={k}" for algorithm in ("dense", "static", "static_fit", "set", "rigl",
                                                                 "magnitude") for k in (1, 20)]
         + [f"{model} {algorithm} K=1" for model in ("resnet20", "mnist1d_transformer")
            for algorithm in ("static", "rigl")])
DISTINCT_BATCHES = 20  # both sides cycle through this many random batches
WARMUP_ROUNDS = 1
SPARSITY = 0.9  # common.SPARSITY (checked in the keras-sparse worker)


def parse(case: str) -> tuple[str, str, int]:
    model, algorithm, k = case.split()
    return model, algorithm, int(k[2:])


def schedule(case: str, config: dict[str, Any]) -> dict[str, int]:
    """The run's length and the algorithm's last step, the same on both sides.

    ``total``: steps of the whole run (warm-up + timed rounds); SET/RigL update at multiples of
    ΔT below ``end`` = ``total`` (the whole run); magnitude pruning at multiples of ΔT up to and
    including ``end``, the last one inside the run."""
    model, algorithm, _ = parse(case)
    steps, every = config["steps"][model], config["update_every"]
    total = steps * (WARMUP_ROUNDS + config["alternations"])
    end = every * ((total - 1) // every) if algorithm == "magnitude" else total
    return {"steps": steps, "total": total, "end": end, "every": every}


def update_steps(case: str, config: dict[str, Any], start: int, stop: int) -> int:
    """How many mask updates fall in steps [start, stop)."""
    algorithm = parse(case)[1]
    s = schedule(case, config)
    if algorithm in ("set", "rigl"):
        last = s["end"] - 1
    elif algorithm == "magnitude":
        last = s["end"]
    else:
        return 0
    return sum(1 for t in range(start, min(stop, last + 1)) if t % s["every"] == 0)


def _random_batches(shape, batch: int, seed: int = 0):
    """``DISTINCT_BATCHES`` batches of random float32 inputs and int labels: the draws of
    ``common.arrays`` (which the jaxpruner worker cannot import: it loads TensorFlow)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(DISTINCT_BATCHES * batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=DISTINCT_BATCHES * batch).astype("int64")
    return x.reshape(DISTINCT_BATCHES, batch, *shape), y.reshape(DISTINCT_BATCHES, batch)


# ------------------------------------------------------------------------ keras-sparse worker
class OursCase:
    """One ``ks.Trainer``; ``run()`` trains one more round (a ``fit`` epoch of the round's length)."""

    def __init__(self, case: str, config: dict[str, Any]):
        import common

        import keras_sparse as ks

        self.ks = ks
        model_name, self.algorithm, k = parse(case)
        s = schedule(case, config)
        key = MODELS[model_name]
        shape, batch, _ = common.MODELS[key]
        self.model = common.build(key)
        if self.algorithm == "magnitude":  # ERK targets, pruning from step 0 (common.algorithm's is uniform)
            self.algo = ks.algorithms.MagnitudePruning(sparsity=common.SPARSITY, distribution="erdos_renyi_kernel",
                                                       begin_step=0, end_step=s["end"], frequency=s["every"])
        else:
            self.algo = common.algorithm(self.algorithm.removesuffix("_fit"), s["every"], end_step=s["end"])
        optimizer = common.optimizer_for(key)
        self.hyper = {"batch": batch, "input_shape": list(shape), "optimizer": type(optimizer).__name__,
                      **{name: float(value) for name, value in optimizer.get_config().items()
                         if name in ("learning_rate", "momentum", "weight_decay", "beta_1", "beta_2", "epsilon")
                         and value is not None},
                      "drop_fraction": getattr(self.algo, "drop_fraction", None)}
        data = common.dataset(shape, s["steps"], batch, distinct=DISTINCT_BATCHES)
        if self.algorithm.endswith("_fit"):  # Keras's own loop: model.fit with the sparse optimizer
            self.sparse = ks.SparseOptimizer(optimizer, self.algo, model=self.model)
            self.model.compile(optimizer=self.sparse, loss=common.loss_fn(), jit_compile=True, steps_per_execution=k)
            callback = ks.SparsityCallback()  # as README shows it: K steps fused into one XLA program
            self.run = lambda rounds=1: self.model.fit(data, epochs=rounds, verbose=0, callbacks=[callback])
        else:
            self.trainer = common.trainer(self.model, self.algo, optimizer, steps_per_execution=k)
            self.run = common.epochs_of(self.trainer, data)
        self.warmup_seconds = None

    def warm_up(self) -> None:
        """The untimed round: compilation and the first mask update. The worker warms every case up
        after building them all: a build seeds (``keras.utils.set_random_seed``), and
        ``tf.random.set_seed`` clears TensorFlow's kernel caches, which costs the next call of a
        graph function a new instantiation (the fused ``fit``'s, about 0.65 s)."""
        start = time.perf_counter()
        self.run(WARMUP_ROUNDS)
        self.warmup_seconds = time.perf_counter() - start

    def layout(self) -> dict[str, dict[str, Any]]:
        """Per masked kernel: shape, size, target active count (ERK 90%; all for dense), active now."""
        masks = self.ks.get_masks(self.model)
        result = {}
        for w in self.ks.masked_weights(self.model):
            shape = [int(d) for d in w.variable.shape]
            size = math.prod(shape)
            target = size if self.algorithm == "dense" else int(self.algo.target_active(w.key))
            result[w.key] = {"shape": shape, "size": size, "target_active": target, "active": int(masks[w.key].sum())}
        return result

    def state(self) -> dict[str, Any]:
        step = self.sparse.iterations.numpy() if self.algorithm.endswith("_fit") else self.trainer.step
        return {"step": int(step), "sparsity": float(self.ks.sparsity(self.model)),
                "active": {key: entry["active"] for key, entry in self.layout().items()}}


#: What each worker must not load: the other side's frameworks.
JAX_MODULES = ("jax", "jaxlib", "flax", "optax", "chex", "jaxpruner")
TF_MODULES = ("tensorflow", "keras", "tf_keras", "keras_sparse")


def block(names) -> None:
    """Makes ``import NAME`` raise ImportError in this process. TensorFlow imports JAX whenever it
    is installed (``tensorflow/lite/python/util.py``: ``try: from jax import jit``), which the
    keras-sparse worker turns into the ImportError that code expects."""
    for name in names:
        sys.modules[name] = None


def loaded(names) -> list[str]:
    return [name for name in names if sys.modules.get(name) is not None]


def ours_worker(config: dict[str, Any]) -> None:
    emit = harness.json_lines_out()
    block(JAX_MODULES)
    try:
        import common
        import keras
        import tensorflow as tf

        import keras_sparse

        if common.SPARSITY != SPARSITY:
            raise RuntimeError(f"common.SPARSITY is {common.SPARSITY}, this script's {SPARSITY}")
        started = time.perf_counter()
        cases = {case: OursCase(case, config) for case in config["cases"]}
        for case in cases.values():
            case.warm_up()
        if loaded(JAX_MODULES):
            raise RuntimeError(f"the TensorFlow worker loaded {loaded(JAX_MODULES)}")
    except Exception as error:
        emit(harness.failed_record(error))
        raise
    emit({"status": "ready", "setup_seconds": time.perf_counter() - started,
          "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                       "keras_sparse": os.path.realpath(keras_sparse.__file__)},
          "cases": {name: {"warmup_seconds": c.warmup_seconds, "hyper": c.hyper, "layout": c.layout(),
                           **c.state()} for name, c in cases.items()}})
    serve(cases, emit)


def serve(cases: dict[str, Any], emit) -> None:
    """Answers "run CASE" (one timed round) and "state CASE" lines until another line comes."""
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if command == "run":
            start, cpu_start = time.perf_counter(), time.process_time()
            cases[name].run()
            emit({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start})
        elif command == "state":
            emit(cases[name].state())
        else:
            break


# --------------------------------------------------------------------------- jaxpruner worker
def flax_key(path: tuple[str, ...]) -> str:
    """keras-sparse's key of a flax parameter path: the same layer names, and Keras's
    ``attention_output`` for flax's attention ``out``."""
    return "/".join("attention_output" if part == "out" else part for part in path)


def flax_models():
    """The flax modules of the three models, named as ``keras_sparse.models`` names its layers."""
    import flax.linen as nn
    import jax.numpy as jnp

    init = nn.initializers.glorot_uniform()  # Keras's default kernel initializer

    class LeNet300100(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(300, kernel_init=init, name="fc1")(x))
            x = nn.relu(nn.Dense(100, kernel_init=init, name="fc2")(x))
            return nn.Dense(10, kernel_init=init, name="logits")(x)

    class ResNet(nn.Module):
        depth: int = 20

        @nn.compact
        def __call__(self, x, train: bool = True):
            def conv(filters, stride, name, size=3):
                return nn.Conv(filters, (size, size), strides=(stride, stride), padding="SAME" if size > 1 else "VALID",
                               use_bias=False, kernel_init=init, name=name)

            def norm():  # Keras's BatchNormalization defaults
                return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)

            x = nn.relu(norm()(conv(16, 1, "conv0")(x)))
            for stage, filters in enumerate([16, 32, 64]):
                for block in range((self.depth - 2) // 6):
                    stride = 2 if stage > 0 and block == 0 else 1
                    name = f"stage{stage + 1}_block{block + 1}"
                    y = nn.relu(norm()(conv(filters, stride, f"{name}_conv1")(x)))
                    y = norm()(conv(filters, 1, f"{name}_conv2")(y))
                    if stride != 1 or x.shape[-1] != filters:
                        x = norm()(conv(filters, stride, f"{name}_shortcut", size=1)(x))
                    x = nn.relu(x + y)
            return nn.Dense(10, kernel_init=init, name="logits")(jnp.mean(x, axis=(1, 2)))

    class PositionEmbedding(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x + self.param("embeddings", nn.initializers.normal(0.02), x.shape[-2:])

    class Transformer(nn.Module):
        patch_size: int = 4
        dim: int = 64
        heads: int = 4
        depth: int = 2
        mlp_dim: int = 128

        @nn.compact
        def __call__(self, x, train: bool = True):
            length, channels = x.shape[1], (x.shape[2] if x.ndim > 2 else 1)
            x = x.reshape((x.shape[0], length // self.patch_size, self.patch_size * channels))
            x = nn.Dense(self.dim, kernel_init=init, name="patch_embedding")(x)
            x = PositionEmbedding(name="position_embedding")(x)
            for block in range(1, self.depth + 1):
                name = f"block{block}"
                y = nn.LayerNorm(epsilon=1e-6, name=f"{name}_norm1")(x)
                y = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.dim, out_features=self.dim,
                                                    kernel_init=init, deterministic=True,
                                                    name=f"{name}_attention")(y, y)
                x = x + y
                y = nn.LayerNorm(epsilon=1e-6, name=f"{name}_norm2")(x)
                y = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=init, name=f"{name}_ffn1")(y), approximate=False)
                x = x + nn.Dense(self.dim, kernel_init=init, name=f"{name}_ffn2")(y)
            x = nn.LayerNorm(epsilon=1e-6, name="norm")(jnp.mean(x, axis=1))
            return nn.Dense(10, kernel_init=init, name="logits")(x)

    return {"lenet_300_100": LeNet300100, "resnet20": ResNet, "mnist1d_transformer": Transformer}


class TheirsCase:
    """One jaxpruner run: flax model, optax optimizer wrapped by a jaxpruner updater, a jitted
    step (K=1) or ``lax.scan`` of K steps; ``run()`` trains one more round."""

    def __init__(self, case: str, config: dict[str, Any], ours: dict[str, Any], modules):
        import flax
        import jax
        import jax.numpy as jnp
        import jaxpruner
        import numpy as np
        import optax

        self.jax, self.np, self.flax = jax, np, flax
        model_name, self.algorithm, self.k = parse(case)
        self.algorithm = self.algorithm.removesuffix("_fit")  # the same jaxpruner run for ours in model.fit
        s = schedule(case, config)
        self.steps = s["steps"]
        hyper, layout = ours["hyper"], ours["layout"]
        model = modules[model_name]()
        xs, ys = _random_batches(hyper["input_shape"], hyper["batch"])
        variables = model.init(jax.random.PRNGKey(0), jnp.asarray(xs[0]), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        has_bn = "batch_stats" in variables

        # Same layers: every kernel keras-sparse masks exists here with its shape.
        flat = flax.traverse_util.flatten_dict(params)
        paths = {flax_key(path): path for path in flat}
        wrong = [f"{key}: {entry['shape']} vs {list(flat[paths[key]].shape) if key in paths else 'missing'}"
                 for key, entry in layout.items() if key not in paths or list(flat[paths[key]].shape) != entry["shape"]]
        if wrong:
            raise RuntimeError(f"{case}: flax parameters differ from keras-sparse's masked kernels: {wrong}; "
                               f"flax has {sorted(paths)}")
        self.paths = {paths[key]: key for key in layout}
        self.unmasked_2d = sorted(key for key, path in paths.items() if flat[path].ndim > 1 and key not in layout)
        target = {paths[key]: 1.0 - entry["target_active"] / entry["size"] for key, entry in layout.items()}

        def distribution(tree):  # keras-sparse's per-layer targets; None: not pruned
            return flax.traverse_util.unflatten_dict(
                {path: target.get(path) for path in flax.traverse_util.flatten_dict(tree)})

        # jaxpruner's own ERK over the same kernels, for the record.
        erk = jaxpruner.sparsity_distributions.erk(params, SPARSITY, filter_fn=lambda path, _: path in target)
        self.jaxpruner_erk_active = {
            self.paths[path]: int(round(flat[path].size * (1.0 - value)))
            for path, value in flax.traverse_util.flatten_dict(erk).items() if value is not None}

        if hyper["optimizer"] == "SGD":
            inner = optax.sgd(hyper["learning_rate"], momentum=hyper["momentum"] or None)
        elif hyper["optimizer"] == "AdamW":
            inner = optax.adamw(hyper["learning_rate"], b1=hyper["beta_1"], b2=hyper["beta_2"], eps=hyper["epsilon"],
                                weight_decay=hyper["weight_decay"])
        else:
            raise RuntimeError(f"no optax counterpart set up for {hyper['optimizer']}")
        seed = jax.random.PRNGKey(0)
        every, end = s["every"], s["end"]
        if self.algorithm == "dense":
            updater = None
        elif self.algorithm == "static":
            updater = jaxpruner.StaticRandomSparse(sparsity_distribution_fn=distribution, rng_seed=seed)
        elif self.algorithm in ("set", "rigl"):
            kind = jaxpruner.RigL if self.algorithm == "rigl" else jaxpruner.SET
            updater = kind(scheduler=jaxpruner.PeriodicSchedule(update_freq=every, update_start_step=0,
                                                                update_end_step=end - 1),
                           drop_fraction_fn=optax.cosine_decay_schedule(hyper["drop_fraction"], end),
                           sparsity_distribution_fn=distribution, rng_seed=seed)
        elif self.algorithm == "magnitude":
            updater = jaxpruner.MagnitudePruning(
                scheduler=jaxpruner.PolynomialSchedule(update_freq=every, update_start_step=0, update_end_step=end),
                sparsity_distribution_fn=distribution, rng_seed=seed)
        else:
            raise ValueError(self.algorithm)
        self.updater = updater
        tx = inner if updater is None else updater.wrap_optax(inner)
        opt_state = tx.init(params)
        if updater is not None:  # start from masked weights, as keras-sparse does
            params = updater.post_gradient_update(params, opt_state)

        def loss_fn(params, batch_stats, x, y):
            if has_bn:
                logits, mutated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                              mutable=["batch_stats"])
                batch_stats = mutated["batch_stats"]
            else:
                logits = model.apply({"params": params}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), batch_stats

        def step(state, x, y):
            params, batch_stats, opt_state = state
            if updater is not None:
                params = updater.pre_forward_update(params, opt_state)
            (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if updater is not None:
                params = updater.post_gradient_update(params, opt_state)
            return (params, batch_stats, opt_state), loss

        if self.k == 1:
            self.batches = [(jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32)) for x, y in zip(xs, ys)]
            program = step
        else:
            if DISTINCT_BATCHES % self.k:
                raise ValueError(f"K={self.k} must divide the {DISTINCT_BATCHES} distinct batches")
            self.batches = [(jnp.asarray(xs[i:i + self.k]), jnp.asarray(ys[i:i + self.k], dtype=jnp.int32))
                            for i in range(0, DISTINCT_BATCHES, self.k)]

            def program(state, xs, ys):
                return jax.lax.scan(lambda carry, batch: step(carry, *batch), state, (xs, ys))

        # As arrays (the sparsity targets in jaxpruner's state are Python floats), so that the
        # program takes back the state it returns without a new trace.
        self.state_ = jax.tree_util.tree_map(jnp.asarray, (params, batch_stats, opt_state))
        # Called as a user calls it (jit's dispatch path); its first call (tracing, compilation
        # and one call's steps) is timed on its own, as the compile time.
        self.program = jax.jit(program, donate_argnums=0)
        self.done = 0
        start = time.perf_counter()
        self.calls(1)
        self.compile_seconds = time.perf_counter() - start
        self.calls(WARMUP_ROUNDS * self.steps // self.k - 1)
        self.warmup_seconds = time.perf_counter() - start

    def calls(self, count: int) -> None:
        """``count`` more calls of the program (``count`` × K steps), waiting for the last."""
        first = self.done // self.k
        for i in range(first, first + count):
            self.state_, _ = self.program(self.state_, *self.batches[i % len(self.batches)])
        self.jax.block_until_ready(self.state_)
        self.done += count * self.k

    def run(self) -> None:
        self.calls(self.steps // self.k)

    def active(self) -> dict[str, int]:
        if self.updater is None:
            return {}
        masks = self.flax.traverse_util.flatten_dict(self.state_[2].masks)
        return {self.paths[path]: int(self.np.count_nonzero(self.np.asarray(mask)))
                for path, mask in masks.items() if mask is not None}

    def state(self) -> dict[str, Any]:
        active = self.active()
        size = sum(int(leaf.size) for path, leaf in self.flax.traverse_util.flatten_dict(self.state_[0]).items()
                   if path in self.paths)
        count = int(self.state_[2].count) if self.updater is not None else self.done
        return {"step": self.done, "optimizer_count": count,
                "sparsity": 1.0 - sum(active.values()) / size if active else 0.0, "active": active}


def tree_map_keeping_none(f, tree, *rest, is_leaf=None):
    """``jax.tree_map`` as jaxpruner f133ee5 uses it: a None in ``tree`` (the mask of a parameter
    it does not prune) stays None whatever ``rest`` holds there. Current
    ``jax.tree_util.tree_map`` raises a structure error there instead, which breaks SET and RigL
    (``tree_map(update, masks, drop_scores, grow_scores)``) on any model with unpruned
    parameters. Only tracing goes through here: the compiled steps are the same."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is None or (is_leaf and is_leaf(x)))
    others = [treedef.flatten_up_to(r) for r in rest]
    return treedef.unflatten([None if leaf is None else f(leaf, *xs) for leaf, *xs in zip(leaves, *others)])


def theirs_worker(config: dict[str, Any]) -> None:
    emit = harness.json_lines_out()
    block(TF_MODULES)
    try:
        sys.path.insert(0, config["jaxpruner"])
        import jax

        jax.tree_map = tree_map_keeping_none  # gone from JAX; jaxpruner f133ee5 calls it
        import chex
        import flax
        import jaxpruner
        import optax

        origin = os.path.realpath(jaxpruner.__file__)
        if not origin.startswith(os.path.realpath(config["jaxpruner"]) + os.sep):
            raise RuntimeError(f"jaxpruner was imported from {origin}, not from {config['jaxpruner']}")
        started = time.perf_counter()
        modules = flax_models()
        cases = {case: TheirsCase(case, config, config["ours"][case], modules) for case in config["cases"]}
        if loaded(TF_MODULES):
            raise RuntimeError(f"the JAX worker loaded {loaded(TF_MODULES)}")
    except Exception as error:
        emit(harness.failed_record(error))
        raise
    emit({"status": "ready", "setup_seconds": time.perf_counter() - started,
          "versions": {"jax": jax.__version__, "jaxlib": __import__("jaxlib").__version__, "flax": flax.__version__,
                       "optax": optax.__version__, "chex": chex.__version__, "jaxpruner": origin,
                       "devices": [str(d) for d in jax.devices()]},
          "cases": {name: {"warmup_seconds": c.warmup_seconds, "compile_seconds": c.compile_seconds,
                           "unmasked_2d": c.unmasked_2d, "jaxpruner_erk_active": c.jaxpruner_erk_active, **c.state()}
                    for name, c in cases.items()}})
    serve(cases, emit)


# ----------------------------------------------------------------------------------- main side
def start_worker(side: str, config: dict[str, Any], log_dir: str) -> harness.Worker:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    command = harness.worker_command(__file__, side, config)
    return harness.Worker(command, env, os.path.join(log_dir, f"{side}.log"))


def layout_problems(ours: dict[str, Any], theirs: dict[str, Any], when: str) -> list[str]:
    """Per-layer active counts that differ between the sides (or from the targets)."""
    problems = []
    for case in ours:
        algorithm = parse(case)[1]
        if algorithm == "dense" or (algorithm == "magnitude" and when == "set-up"):
            continue
        targets = {key: entry["target_active"] for key, entry in ours[case]["layout"].items()}
        for side, active in (("keras_sparse", ours[case]["active"]), ("jaxpruner", theirs[case]["active"])):
            if active != targets:
                wrong = {key: (active.get(key), target) for key, target in targets.items() if active.get(key) != target}
                problems.append(f"{case} ({side}, {when}): active weights differ from the targets "
                                f"(layer: (active, target)): {wrong}")
    return problems


def measure(config: dict[str, Any]) -> dict[str, Any]:
    log_dir = tempfile.mkdtemp(prefix="vs_jaxpruner_")
    workers: dict[str, harness.Worker] = {}
    seconds = {case: {side: [] for side in SIDES} for case in config["cases"]}
    cpu = {case: {side: [] for side in SIDES} for case in config["cases"]}
    try:
        workers["keras_sparse"] = start_worker("keras_sparse", config, log_dir)
        ours = workers["keras_sparse"].read()
        if ours["status"] != "ready":
            raise SystemExit(f"the keras-sparse worker failed: {ours['error']} (logs: {log_dir})")
        # The jaxpruner side gets keras-sparse's per-layer targets, batch and optimizer settings.
        workers["jaxpruner"] = start_worker("jaxpruner", {**config, "ours": ours["cases"]}, log_dir)
        theirs = workers["jaxpruner"].read()
        if theirs["status"] != "ready":
            raise SystemExit(f"the jaxpruner worker failed: {theirs['error']} (logs: {log_dir})")
        mismatch = layout_problems(ours["cases"], theirs["cases"], "set-up")
        if mismatch:
            raise SystemExit("per-layer densities differ: " + "; ".join(mismatch))
        for r in range(config["alternations"]):
            for c, case in enumerate(config["cases"]):
                for side in (SIDES if (r + c) % 2 == 0 else SIDES[::-1]):
                    record = workers[side].request(f"run {case}")
                    if "status" in record:
                        raise SystemExit(f"{side} failed in round {r + 1} ({case}): {record['error']}")
                    seconds[case][side].append(record["seconds"])
                    cpu[case][side].append(record["cpu_seconds"])
        final = {side: {case: workers[side].request(f"state {case}") for case in config["cases"]} for side in SIDES}
    finally:
        for w in workers.values():
            w.close()
    return {"log_dir": log_dir, "ready": {"keras_sparse": ours, "jaxpruner": theirs}, "seconds": seconds,
            "cpu_seconds": cpu, "final_state": final}


def problems_of(run: dict[str, Any]) -> list[str]:
    config = run["config"]
    ours = {case: {**run["ready"]["keras_sparse"]["cases"][case], **state}
            for case, state in run["final_state"]["keras_sparse"].items()}
    problems = layout_problems(ours, run["final_state"]["jaxpruner"], "end")
    for side in SIDES:
        for case, state in run["final_state"][side].items():
            expected = schedule(case, config)["total"]
            if state["step"] != expected or state.get("optimizer_count", expected) != expected:
                problems.append(f"{case} ({side}): at step {state['step']} "
                                f"(optimizer count {state.get('optimizer_count')}), expected {expected}")
    return problems


def summarize(run: dict[str, Any]) -> None:
    config = run["config"]
    run["cases"] = {}
    for case in config["cases"]:
        s = schedule(case, config)
        rates = {side: [s["steps"] / t for t in run["seconds"][case][side]] for side in SIDES}
        medians = {side: statistics.median(values) for side, values in rates.items()}
        overall = {side: s["steps"] * len(values) / sum(values) for side, values in run["seconds"][case].items()}
        ours, theirs = run["ready"]["keras_sparse"]["cases"][case], run["ready"]["jaxpruner"]["cases"][case]
        timed_start = s["steps"] * WARMUP_ROUNDS
        erk_diff = None if parse(case)[1] == "dense" else max(
            (abs(theirs["jaxpruner_erk_active"][key] - entry["target_active"])
             for key, entry in ours["layout"].items() if key in theirs["jaxpruner_erk_active"]), default=0)
        run["cases"][case] = {
            "steps_per_round": s["steps"], "steps_per_second": rates, "median": medians,
            "all_steps_rate": overall, "ours_over_jaxpruner": harness.round_ratios(rates, *SIDES),
            "all_steps_ratio": overall["keras_sparse"] / overall["jaxpruner"],
            "timed_mask_updates": update_steps(case, config, timed_start, s["total"]),
            "warmup_seconds": {"keras_sparse": ours["warmup_seconds"], "jaxpruner": theirs["warmup_seconds"]},
            "compile_seconds": {
                "keras_sparse": ours["warmup_seconds"] - WARMUP_ROUNDS * s["steps"] / medians["keras_sparse"],
                "jaxpruner": theirs["compile_seconds"],
                "jaxpruner_first_round_extra": theirs["warmup_seconds"] - WARMUP_ROUNDS * s["steps"]
                / medians["jaxpruner"]},
            "jaxpruner_erk_max_layer_difference": erk_diff,
            "masked_kernels": len(ours["layout"]), "unmasked_2d_parameters": theirs["unmasked_2d"]}


def report(runs: list[dict[str, Any]]) -> str:
    """The table of one run, or of several (cells "A / B / …"; cases that every run has)."""
    cases = harness.common_cases(runs)
    rows = []
    for case in cases:
        points = [run["cases"][case] for run in runs]
        q = [p["ours_over_jaxpruner"] for p in points]
        rows.append([case, harness.cells(points, lambda p: p["steps_per_round"]),
                     harness.cells(points, lambda p: p["timed_mask_updates"]),
                     harness.cells(points, lambda p: p["median"]["keras_sparse"], 1),
                     harness.cells(points, lambda p: p["median"]["jaxpruner"], 1),
                     harness.ratio_cells(q), harness.ratio_cells(q, "iqr only"), harness.ratio_cells(q, "range only"),
                     harness.cells(points, lambda p: p["all_steps_ratio"], 2),
                     harness.cells(points, lambda p: f"{p['compile_seconds']['keras_sparse']:.1f}, "
                                                     f"{p['compile_seconds']['jaxpruner']:.1f}")])
    head = harness.cells(runs, lambda run: (
        f"{run['config']['alternations']} alternations; ΔT = {run['config']['update_every']}; ERK 90% with "
        f"keras-sparse's per-layer targets on both sides; {run.get('cpu_model', '?')} ({run['cpus']} CPUs); "
        f"TensorFlow {run['ready']['keras_sparse']['versions']['tensorflow']}, "
        f"JAX {run['ready']['jaxpruner']['versions']['jax']}, flax {run['ready']['jaxpruner']['versions']['flax']}"))
    lines = [head, "", harness.table(
        ["case", "steps a round", "mask updates timed", "keras-sparse steps/s", "jaxpruner steps/s",
         "ours ÷ jaxpruner (median of round ratios)", "IQR", "min–max", "ours ÷ jaxpruner (all timed steps)",
         "compile s (ours est., jaxpruner)"], rows)]
    lines += [f"warning: {problem}" for run in runs for problem in run["problems"]]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "?"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alternations", type=int, default=None, help="timed rounds of each case, at least 3 "
                                                                       "(default 5; --quick 3)")
    parser.add_argument("--lenet-steps", type=int, default=None, help="steps a LeNet round, a multiple of 20 "
                                                                      "(default 300; --quick 100)")
    parser.add_argument("--resnet-steps", type=int, default=None, help="steps a ResNet-20 round (default 20; "
                                                                       "--quick 10)")
    parser.add_argument("--transformer-steps", type=int, default=None, help="steps a transformer round "
                                                                            "(default 100; --quick 40)")
    parser.add_argument("--update-every", type=int, default=100, help="ΔT of SET, RigL and magnitude pruning")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--jaxpruner", default=DEFAULT_JAXPRUNER,
                        help="folder holding the jaxpruner package (google-research/jaxpruner at f133ee5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short rounds, 3 alternations")
    parser.add_argument("--out", default="vs_jaxpruner.json")
    harness.add_worker_flags(parser, SIDES)
    args = parser.parse_args()
    def run_worker(side: str, config: dict[str, Any]) -> None:
        (ours_worker if side == "keras_sparse" else theirs_worker)(config)

    if harness.ran_combine_or_worker(args, report, run_worker):
        return
    alternations = args.alternations or (3 if args.quick else 5)
    steps = {"lenet_300_100": args.lenet_steps or (100 if args.quick else 300),
             "resnet20": args.resnet_steps or (10 if args.quick else 20),
             "mnist1d_transformer": args.transformer_steps or (40 if args.quick else 100)}
    if alternations < 3:
        parser.error("--alternations must be at least 3")
    if steps["lenet_300_100"] % 20:
        parser.error("--lenet-steps must be a multiple of 20 (the K=20 cases)")
    if not os.path.isfile(os.path.join(args.jaxpruner, "jaxpruner", "__init__.py")):
        parser.error(f"no jaxpruner package under {args.jaxpruner}: get google-research/jaxpruner at commit f133ee5 "
                     "(BENCHMARKS.md) and pass its folder as --jaxpruner")
    config = {"cases": args.cases, "steps": steps, "alternations": alternations, "update_every": args.update_every,
              "distinct_batches": DISTINCT_BATCHES, "jaxpruner": os.path.realpath(args.jaxpruner),
              "quick": args.quick}
    for case in args.cases:
        if parse(case)[1] == "magnitude" and schedule(case, config)["end"] < args.update_every:
            parser.error(f"{case}: the run is too short for two magnitude-pruning updates at ΔT {args.update_every}")
    started = time.perf_counter()
    run = {"config": config, "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                                      text=True).stdout.strip(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **measure(config)}
    harness.finish_run(run, args.out, started, problems_of, summarize, report, cpu_model=cpu_model())


if __name__ == "__main__":
    main()
