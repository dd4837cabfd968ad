"""Size of the TFLite file of a 90%-sparse network against the dense one, raw and compressed.

    python benchmarks/tflite_size.py [--models lenet_300_100,lenet5] [--sparsity 0.9]
                                     [--mnist1d-epochs 20] [--out tflite_size.json]

For each model of ``keras_sparse.models`` (on 28×28×1 inputs, 10 classes, as for MNIST):

- dense: the model as initialized (seeded);
- sparse: the same weights wrapped with ``ks.wrap``, each masked kernel pruned to ``--sparsity``
  by magnitude (uniform per layer, ``ks.set_masks``), then ``ks.export_saved_model`` (the model
  as it is, pruned weights exactly zero; the masks take no part in the export).

Both go through ``tf.lite.TFLiteConverter.from_saved_model`` in four variants: plain float32
(the default converter), float32 with ``Optimize.EXPERIMENTAL_SPARSITY`` (the flatbuffer stores
sparse tensors in a compressed format), dynamic-range int8 (``Optimize.DEFAULT``) and int8 with
sparsity. Each ``.tflite`` is measured raw, gzip'd (``gzip -9``) and in a zip archive (deflate,
level 9), and run through ``tf.lite.Interpreter`` on random inputs against the Keras model.

Weights here are the initialization: the nonzero float32 values are close to incompressible
either way, so the compressed size is set by how many zeros there are, not by training.
``--mnist1d-epochs N`` checks that on trained weights: it trains LeNet-300-100 on MNIST-1D
(offline; 40 inputs) densely and with RigL at ``--sparsity`` for N epochs, and adds those rows,
with the Keras and the TFLite test accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tempfile
import time
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import common  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import models  # noqa: E402

VARIANTS = {
    "float32": [],
    "float32 + sparse encoding": [tf.lite.Optimize.EXPERIMENTAL_SPARSITY],
    "int8 dynamic range": [tf.lite.Optimize.DEFAULT],
    "int8 + sparse encoding": [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY],
}


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def zip_size(data: bytes) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model.tflite", data)
    return len(buffer.getvalue())


def convert(saved_model_dir: str, optimizations) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.optimizations = list(optimizations)
    return converter.convert()


def tflite_predict(model_content: bytes, x: np.ndarray, xnnpack: bool = True) -> np.ndarray:
    """Runs the model on ``x`` (any batch size) with ``tf.lite.Interpreter``; ``xnnpack=False``
    turns off the default XNNPACK delegate."""
    resolver = tf.lite.experimental.OpResolverType
    interpreter = tf.lite.Interpreter(
        model_content=model_content,
        experimental_op_resolver_type=resolver.AUTO if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def magnitude_masks(model: keras.Model, sparsity: float) -> dict[str, np.ndarray]:
    """Per masked weight, keep the largest-|w| (1 - sparsity) fraction (ties broken by index)."""
    masks = {}
    for weight in ks.masked_weights(model):
        w = np.abs(weight.variable.numpy()).ravel()
        keep = round((1.0 - sparsity) * w.size)
        mask = np.zeros(w.size, bool)
        mask[np.argsort(-w, kind="stable")[:keep]] = True
        masks[weight.key] = mask.reshape(weight.variable.shape)
    return masks


def measure(group: str, label: str, wrapped: keras.Model, x: np.ndarray, workdir: str, labels=None) -> list[dict]:
    """Exports ``wrapped`` (``ks.export_saved_model``) and measures every converter variant.
    ``label`` "dense" marks the reference of its ``group``."""
    export = ks.export_saved_model(wrapped, os.path.join(workdir, f"{group} {label}".replace(" ", "_")))
    reference = np.asarray(ks.strip(wrapped)(x))
    rows = []
    for variant, optimizations in VARIANTS.items():
        content = convert(export, optimizations)
        try:
            predictions, xnnpack = tflite_predict(content, x), True
        except RuntimeError:
            # TF 2.21: XNNPACK fails to prepare a FULLY_CONNECTED with sparse int8 weights
            # ("failed to delegate FULLY_CONNECTED node"); the built-in kernels run it.
            predictions, xnnpack = tflite_predict(content, x, xnnpack=False), False
        row = {"group": group, "label": label, "variant": variant, "xnnpack": xnnpack,
               "sparsity": ks.sparsity(wrapped), "raw": len(content), "gzip": gzip_size(content),
               "zip": zip_size(content), "max_abs_diff": float(np.max(np.abs(predictions - reference)))}
        if labels is not None:
            row["tflite_accuracy"] = float(np.mean(np.argmax(predictions, -1) == labels))
            row["keras_accuracy"] = float(np.mean(np.argmax(reference, -1) == labels))
        rows.append(row)
    return rows


def init_rows(model_name: str, sparsity: float, seed: int, workdir: str) -> list[dict]:
    keras.utils.set_random_seed(seed)
    dense = ks.wrap(models.build((28, 28, 1), 10, name=model_name))  # all-ones masks: strip() is the plain model
    keras.utils.set_random_seed(seed)
    sparse = ks.wrap(models.build((28, 28, 1), 10, name=model_name))
    ks.set_masks(sparse, magnitude_masks(sparse, sparsity))
    x = np.random.default_rng(seed).normal(size=(32, 28, 28, 1)).astype("float32")
    return (measure(model_name, "dense", dense, x, workdir)
            + measure(model_name, f"{100 * sparsity:.0f}% magnitude", sparse, x, workdir))


def mnist1d_rows(epochs: int, sparsity: float, seed: int, workdir: str) -> list[dict]:
    data = common.load_data("mnist1d", 64, seed)
    x_test, y_test = (np.concatenate(parts) for parts in zip(*[(x.numpy(), y.numpy()) for x, y in data.test]))
    rows = []
    for label, algorithm in (("dense", ks.algorithms.Dense()),
                             (f"RigL {100 * sparsity:.0f}%", ks.algorithms.RigL(sparsity=sparsity, seed=seed))):
        keras.utils.set_random_seed(seed)
        model = ks.wrap(models.build(data.input_shape, data.num_classes, name="lenet_300_100"))
        trainer = ks.Trainer(model, algorithm, keras.optimizers.SGD(0.05, momentum=0.9), common.loss_fn(),
                             progress=False)
        trainer.fit(data.train_epoch, epochs=epochs, steps_per_epoch=data.steps_per_epoch)  # reshuffled per epoch
        rows += measure(f"lenet_300_100 on MNIST-1D, {epochs} epochs", label, model, x_test, workdir, labels=y_test)
    return rows


def kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def markdown(rows: list[dict]) -> str:
    """One line per (model, variant); "gzip vs dense" compares with the dense model's same variant."""
    dense = {(r["group"], r["variant"]): r for r in rows if r["label"] == "dense"}
    lines = [("| model | variant | sparsity | .tflite KiB | gzip KiB | zip KiB | gzip: dense / this | "
              "max abs diff vs Keras | TFLite test acc. |"), "|" + "---|" * 9]
    for r in rows:
        reference = dense.get((r["group"], r["variant"]))
        relative = f"{reference['gzip'] / r['gzip']:.2f}×" if reference else "—"
        accuracy = f"{100 * r['tflite_accuracy']:.1f}%" if "tflite_accuracy" in r else ""
        variant = r["variant"] + ("" if r["xnnpack"] else " (†)")
        lines.append(f"| {r['group']} {r['label']} | {variant} | {100 * r['sparsity']:.1f}% | {kib(r['raw'])} | "
                     f"{kib(r['gzip'])} | {kib(r['zip'])} | {relative} | {r['max_abs_diff']:.1e} | {accuracy} |")
    if not all(r["xnnpack"] for r in rows):
        lines.append("\n(†) XNNPACK (the interpreter's default delegate) failed on this file; run with "
                     "OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet_300_100,lenet5", help="comma-separated keras_sparse.models names")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist1d-epochs", type=int, default=0,
                        help="also train LeNet-300-100 on MNIST-1D for this many epochs (0: skip)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in [m for m in args.models.split(",") if m]:
            rows += init_rows(name, args.sparsity, args.seed, workdir)
        if args.mnist1d_epochs:
            rows += mnist1d_rows(args.mnist1d_epochs, args.sparsity, args.seed, workdir)
    print(markdown(rows))
    print(f"\n(TF {tf.__version__}, Keras {keras.__version__}; {time.perf_counter() - started:.0f} s)")
    if args.out:
        harness.write_json(args.out, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
