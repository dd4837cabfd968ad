"""Latency of Dense-heavy models exported dense against exported with sparse matmuls (SavedModel).

    python benchmarks/sparse_matmul_export.py [--models lenet_300_100 wide_mlp] [--sparsities 0.9 0.95 0.98 0.99]
                                              [--matmuls coo csr auto] [--batches 1 32] [--rounds 15]
                                              [--seconds 0.15] [--out sparse_matmul_export.json]

Models, with seed 0's initial weights, on 784 inputs and 10 classes (``keras_sparse.models.mlp``):

- ``lenet_300_100``: 784-300-100-10, ReLU;
- ``wide_mlp``: 784-4096-4096-10, ReLU.

The masks are set directly, not trained: at each sparsity S every Dense kernel (the classifier's
too) gets a uniformly random mask with exactly round(S × size) weights off. Latency depends on the
number and layout of non-zeros, not on which weights training keeps; trained masks are not uniform
(magnitude and RigL masks concentrate on some inputs and outputs), which can move the sparse
product's speed either way.

Variants, each exported and loaded back with ``tf.saved_model.load``:

- ``dense``: the wrapped model, ``ks.export_saved_model`` (zeros in full-size kernels; the same
  latency at every sparsity, so one export serves as every sparsity's baseline);
- ``<matmul> S``: ``ks.export_sparse_matmul(model, path, min_sparsity=0.0, matmul=<matmul>)`` of
  the model at sparsity S: every Dense layer replaced, product by ``"coo"``, ``"csr"`` or ``"auto"``
  (``keras_sparse/sparse_matmul.py``).

Timing: the loaded SavedModel's ``serving_default`` signature called with its input by keyword
(a positional call costs several ms more at batch 1 in TF 2.21) on a fixed random batch (TF's
default threads), in one process; ``--rounds`` alternating rounds, each round every variant of a model and
batch size timed for about ``--seconds``, the order rotated by one variant each round. Reported:
median and quartiles of milliseconds per call over rounds, and of each round's dense ÷ variant time
(speed-up; > 1 is faster than dense). Every export is checked against the masked Keras model's
outputs (max |Δ|).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import models  # noqa: E402

HIDDEN = {"lenet_300_100": (300, 100), "wide_mlp": (4096, 4096)}
INPUTS = 784


def build(name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    return ks.wrap(models.mlp((INPUTS,), common.CLASSES, hidden=HIDDEN[name]), quiet=True)


def random_masks(model: keras.Model, sparsity: float, seed: int = 0) -> None:
    """Each masked kernel: exactly round(sparsity × size) weights off, chosen uniformly at random."""
    rng = np.random.default_rng(seed)
    masks = ks.get_masks(model)
    for key, mask in masks.items():
        off = rng.permutation(mask.size)[:round(sparsity * mask.size)]
        flat = np.ones(mask.size, bool)
        flat[off] = False
        masks[key] = flat.reshape(mask.shape)
    ks.set_masks(model, masks)


def measure(model_name: str, sparsities, matmuls, batches, rounds: int, seconds: float) -> dict:
    rng = np.random.default_rng(1)
    x = {b: rng.normal(size=(b, INPUTS)).astype("float32") for b in batches}
    signatures, info = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in [0.0, *sparsities]:
            model = build(model_name)
            if sparsity:
                random_masks(model, sparsity)
            reference = {b: np.asarray(model(x[b])) for b in batches}
            for matmul in ["dense"] if not sparsity else matmuls:
                name = "dense" if not sparsity else f"{matmul} {sparsity:.0%}"
                path = os.path.join(folder, name.replace(" ", "_").replace("%", ""))
                if not sparsity:
                    ks.export_saved_model(model, path)
                else:
                    ks.export_sparse_matmul(model, path, min_sparsity=0.0, matmul=matmul)
                signature = tf.saved_model.load(path).signatures["serving_default"]
                diff = max(float(np.abs(common.serving_call(signature, tf.constant(x[b]))().numpy()
                                        - reference[b]).max()) for b in batches)
                size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
                signatures[name] = signature
                info[name] = {"sparsity": sparsity, "matmul": matmul, "max_abs_diff": diff,
                              "saved_model_kib": size / 1024}
        inputs = {b: tf.constant(v) for b, v in x.items()}
        calls = {}
        for batch in batches:
            for name, signature in signatures.items():
                call = common.serving_call(signature, inputs[batch])
                calls[(batch, name)] = (call, harness.calls_for(call, seconds))
        times = {key: [] for key in calls}
        names = list(signatures)
        for r in range(rounds):
            for batch in batches:
                for name in names[r % len(names):] + names[:r % len(names)]:
                    call, n = calls[(batch, name)]
                    times[(batch, name)].append(common.seconds_per_call(call, n) * 1000)
    results = []
    for (batch, name), ms in times.items():
        dense = times[(batch, "dense")]
        results.append({"batch": batch, "variant": name, "ms": harness.spread(ms),
                        "speedup": harness.spread([d / t for d, t in zip(dense, ms)])})
    return {"model": model_name, "hidden": list(HIDDEN[model_name]), "variants": info, "results": results}


def report(runs) -> str:
    out = []
    for run in runs:
        for entry in run["models"]:
            batches = sorted({r["batch"] for r in entry["results"]})
            header = ["variant", "SavedModel KiB", "max abs diff"] + [
                f"batch {b}: ms (IQR)" for b in batches] + [f"batch {b}: dense ÷ this (IQR)" for b in batches]
            rows = []
            for name, v in entry["variants"].items():
                row = [name, f"{v['saved_model_kib']:.0f}", f"{v['max_abs_diff']:.1e}"]
                found = {b: next(r for r in entry["results"] if (r["batch"], r["variant"]) == (b, name))
                         for b in batches}
                row += [f"{found[b]['ms']['median']:.3f} ({found[b]['ms']['q1']:.3f}–{found[b]['ms']['q3']:.3f})"
                        for b in batches]
                row += ["—" if name == "dense" else harness.ratio_cells([found[b]["speedup"]], "iqr")
                        for b in batches]
                rows.append(row)
            out.append(f"\n{entry['model']} ({INPUTS}-{'-'.join(map(str, entry['hidden']))}-{common.CLASSES}): "
                       "SavedModel serving_default, median over rounds\n")
            out.append(harness.table(header, rows))
        out.append(f"\n{run['command']}\nload average before / after: {run['load_before']} / {run['load_after']}\n"
                   f"{run['rounds']} rounds, {run['wall_seconds']:.0f} s; TF {run['tensorflow']}, "
                   f"Keras {run['keras']}, {run['cpus']} CPUs")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(HIDDEN), choices=sorted(HIDDEN))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--matmuls", nargs="+", default=["coo", "csr", "auto"], choices=["coo", "csr", "auto"])
    harness.add_latency_flags(parser, rounds=15, seconds=0.15, out="sparse_matmul_export.json")
    args = parser.parse_args()
    harness.run_in_process(__file__, args, lambda: {
        "models": [measure(m, args.sparsities, args.matmuls, args.batches, args.rounds, args.seconds)
                   for m in args.models]}, report, rounds=args.rounds)


if __name__ == "__main__":
    main()
