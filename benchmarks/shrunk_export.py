"""Latency of channel-pruned models exported masked against exported shrunk, SavedModel and TFLite.

    python benchmarks/shrunk_export.py [--models mnist1d_cnn vgg resnet] [--sparsities 0.5 0.75]
                                       [--batches 1 32] [--rounds 9] [--seconds 0.2] [--out shrunk_export.json]

For each model, with seed 0's initial weights:

- ``mnist1d_cnn``: ``keras_sparse.models.mnist1d_cnn`` (4 Conv1D of 128 filters with
  BatchNorm and ReLU, Flatten, Dense 10) on (40, 1) inputs;
- ``vgg``: a VGG-style net on 32×32×3 inputs defined here: two 3×3 Conv2D + BatchNorm + ReLU of
  32, then 64, then 128 filters, a 2×2 max pool after each pair, Flatten, Dense 256 ReLU,
  Dense 10;
- ``resnet``: ``keras_sparse.models.resnet`` (ResNet-20, 16/32/64 filters) on 32×32×3: residual
  Adds, where a channel goes only if it is dead in every branch feeding the Add.

The masks are set directly, not trained (latency does not depend on the weights' values): at
each sparsity, every masked kernel but the classifier's loses that fraction of its output
channels, those of smallest L1 norm (``ks.set_masks`` with all-off columns, the pattern of
sparsity type ``"channel"``). BatchNorm's statistics and affine parameters are set to random
values as after training, so the dead channels carry nonzero constants that ``shrink_channels``
folds into biases or ``ConstantOffset`` layers, as it must for a trained model.

Variants, each exported to a SavedModel (``ks.export_saved_model``) and converted to float32
TFLite (``tf.lite.TFLiteConverter.from_saved_model``, default options):

- ``dense``: no channel pruned (the baseline);
- ``masked S``: the wrapped model with S of its channels pruned, exported as it is (zeros in
  full-size kernels);
- ``shrunk S``: ``ks.shrink_channels`` of the same model.

Timing: the SavedModel's ``serving_default`` signature called by keyword on a fixed random batch (TF's
default threads), and ``tf.lite.Interpreter`` (``num_threads=2``, XNNPACK on, as by default)
invoked on it; ``--rounds`` alternating rounds, the order of the variants rotated each round, each
variant timed for about ``--seconds`` per round. Reported: the median milliseconds per call over
rounds and the median of each round's dense ÷ variant time (speed-up). Every export is checked
against the masked Keras model's outputs (max |Δ|).
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

L = keras.layers
SHAPES = {"mnist1d_cnn": (40, 1), "vgg": (32, 32, 3), "resnet": (32, 32, 3)}


def vgg(input_shape, num_classes: int = 10, widths=(32, 64, 128)) -> keras.Model:
    """Two 3×3 Conv2D + BatchNorm + ReLU per width, 2×2 max pool after each pair, Dense 256, Dense."""
    inputs = keras.Input(input_shape)
    x = inputs
    for stage, width in enumerate(widths):
        for i in range(2):
            x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{stage + 1}_{i + 1}")(x)
            x = L.ReLU()(L.BatchNormalization(name=f"bn{stage + 1}_{i + 1}")(x))
        x = L.MaxPooling2D()(x)
    x = L.Dense(256, activation="relu", name="fc")(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(x), name="vgg")


def build(name: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = vgg(SHAPES[name]) if name == "vgg" else models.build(SHAPES[name], common.CLASSES, name=name)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    return ks.wrap(model, quiet=True)


def prune_channels(model: keras.Model, fraction: float) -> None:
    """Turns off ``fraction`` of each hidden layer's output channels, smallest L1 norm first."""
    masks = ks.get_masks(model)
    for weight in ks.masked_weights(model):
        if weight.layer.name == "logits":
            continue
        kernel = weight.variable.numpy()
        norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        dead = np.argsort(norms, kind="stable")[:round(fraction * kernel.shape[-1])]
        masks[weight.key][..., dead] = False
    ks.set_masks(model, masks)


def channels(model: keras.Model) -> str:
    """Each conv/Dense layer's output channels, e.g. "128-128-128-128-10"."""
    return "-".join(str(int(layer.kernel.shape[-1])) for layer in model.layers if hasattr(layer, "kernel"))


class Exported:
    """One variant's SavedModel signature and TFLite interpreters (one per batch size)."""

    def __init__(self, model: keras.Model, folder: str, batches, x: dict[int, np.ndarray]):
        path = ks.export_saved_model(model, os.path.join(folder, "saved_model"))
        self.signature = tf.saved_model.load(path).signatures["serving_default"]
        self.tflite = tf.lite.TFLiteConverter.from_saved_model(path).convert()
        self.tflite_kib = len(self.tflite) / 1024
        self.interpreters = {}
        for batch in batches:
            interpreter = tf.lite.Interpreter(model_content=self.tflite, num_threads=2)
            detail = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(detail["index"], x[batch].shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], x[batch])
            self.interpreters[batch] = interpreter
        self.inputs = {batch: tf.constant(value) for batch, value in x.items()}

    def saved_model_call(self, batch: int):
        return common.serving_call(self.signature, self.inputs[batch])

    def tflite_call(self, batch: int):
        interpreter = self.interpreters[batch]
        index = interpreter.get_output_details()[0]["index"]

        def call():
            interpreter.invoke()
            return interpreter.get_tensor(index)

        return call


def measure(model_name: str, sparsities, batches, rounds: int, seconds: float) -> dict:
    rng = np.random.default_rng(1)
    x = {b: rng.normal(size=(b, *SHAPES[model_name])).astype("float32") for b in batches}
    variants, info = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for sparsity in [0.0, *sparsities]:
            masked = build(model_name)
            if sparsity:
                prune_channels(masked, sparsity)
            pairs = [("dense", masked)] if not sparsity else [
                (f"masked {sparsity:.0%}", masked), (f"shrunk {sparsity:.0%}", ks.shrink_channels(masked))]
            for name, model in pairs:
                exported = Exported(model, os.path.join(folder, name.replace(" ", "_").replace("%", "")), batches, x)
                reference = {b: np.asarray(masked(x[b])) for b in batches}
                diff = max(max(float(np.abs(np.asarray(exported.saved_model_call(b)()) - reference[b]).max()),
                               float(np.abs(exported.tflite_call(b)() - reference[b]).max())) for b in batches)
                variants[name] = exported
                info[name] = {"channels": channels(model), "parameters": int(model.count_params()),
                              "tflite_kib": exported.tflite_kib, "max_abs_diff": diff,
                              "offsets": sum(type(layer).__name__ == "ConstantOffset" for layer in model.layers)}
        calls = {}
        for fmt in ("saved_model", "tflite"):
            for batch in batches:
                for name, exported in variants.items():
                    call = getattr(exported, f"{fmt}_call")(batch)
                    calls[(fmt, batch, name)] = (call, harness.calls_for(call, seconds))
        times = {key: [] for key in calls}
        names = list(variants)
        for r in range(rounds):
            for fmt in ("saved_model", "tflite"):
                for batch in batches:
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        call, n = calls[(fmt, batch, name)]
                        times[(fmt, batch, name)].append(common.seconds_per_call(call, n) * 1000)
    results = []
    for (fmt, batch, name), ms in times.items():
        dense = times[(fmt, batch, "dense")]
        results.append({"format": fmt, "batch": batch, "variant": name, "ms": harness.spread(ms),
                        "speedup": harness.spread([d / t for d, t in zip(dense, ms)])})
    return {"model": model_name, "variants": info, "results": results}


def report(runs) -> str:
    out = []
    for run in runs:
        for entry in run["models"]:
            out.append(f"\n{entry['model']}: channels, parameters, TFLite size, max |Δ| against the masked Keras "
                       "model (SavedModel and TFLite)\n")
            out.append(harness.table(["variant", "conv/Dense channels", "parameters", ".tflite KiB", "ConstantOffset",
                                      "max abs diff"],
                                     [[n, v["channels"], f"{v['parameters']:,}", f"{v['tflite_kib']:.1f}",
                                       str(v["offsets"]), f"{v['max_abs_diff']:.1e}"]
                                      for n, v in entry["variants"].items()]))
            batches = sorted({r["batch"] for r in entry["results"]})
            header = ["variant"] + [f"{fmt} batch {b}" for fmt in ("SavedModel", "TFLite") for b in batches]
            rows = []
            for name in entry["variants"]:
                row = [name]
                for fmt in ("saved_model", "tflite"):
                    for b in batches:
                        r = next(r for r in entry["results"]
                                 if (r["format"], r["batch"], r["variant"]) == (fmt, b, name))
                        row.append(f"{r['ms']['median']:.3f} ms" + ("" if name == "dense" else
                                                                   f" ({r['speedup']['median']:.2f}×)"))
                rows.append(row)
            out.append(f"\n{entry['model']}: median ms per call over rounds (dense ÷ this: median of per-round "
                       "ratios)\n")
            out.append(harness.table(header, rows))
        out.append(f"\nload average before / after: {run['load_before']} / {run['load_after']}; "
                   f"{run['wall_seconds']:.0f} s")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist1d_cnn", "vgg", "resnet"], choices=sorted(SHAPES))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75])
    harness.add_latency_flags(parser, rounds=9, seconds=0.2, out="shrunk_export.json")
    args = parser.parse_args()
    harness.run_in_process(__file__, args, lambda: {
        "models": [measure(m, args.sparsities, args.batches, args.rounds, args.seconds) for m in args.models]},
        report)


if __name__ == "__main__":
    main()
