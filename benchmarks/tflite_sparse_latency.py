"""Latency of a 90%-sparse MobileNetV2 in TensorFlow Lite against the dense one, and whether
XNNPACK's sparse inference ran.

    python benchmarks/tflite_sparse_latency.py [--models mobilenet_v2,mobilenet_v2_explicit,pointwise_stack]
                                               [--size 224] [--sparsity 0.9] [--batches 1,32] [--threads 1,2]
                                               [--rounds 11] [--seconds 0.3] [--out JSON]
                                               [--save DIR] [--no-timing]

The model is ``keras.applications.MobileNetV2(weights=None, alpha=1.0)`` on ``--size``² RGB
inputs (seed 0). The sparse model is the same network wrapped with ``ks.wrap(include=<the 1x1
convolutions>)``, each 1x1 kernel pruned to ``--sparsity`` by magnitude (uniform per layer,
``ks.set_masks``; on initialized weights, so the masks are as good as random: latency does not
depend on training). Those are the layers XNNPACK's sparse inference runs sparse; its first
convolution, the depthwise ones and the classifier stay dense. Three TFLite files, each converted
from ``ks.strip(model)`` by ``TFLiteConverter.from_keras_model``:

- ``dense``: the dense model, float32;
- ``sparse``: the pruned model, float32 (the zeros stored as dense tensors);
- ``sparse + EXPERIMENTAL_SPARSITY``: the pruned model with ``Optimize.EXPERIMENTAL_SPARSITY``,
  which stores the sparse kernels in TFLite's sparse format behind ``DENSIFY`` ops. That is what
  the XNNPACK delegate checks: it densifies such a weight when it prepares the graph and passes
  ``XNN_FLAG_HINT_SPARSE_INFERENCE`` to XNNPACK for a graph that has one.

``--models`` (all three by default) also measures ``mobilenet_v2_explicit``, MobileNetV2 laid
out for XNNPACK's sparse path (symmetric explicit padding, no 1000-class classifier;
``explicit_same_padding`` restores in the file the stride-1 padding the converter folds into
"SAME"), and ``pointwise_stack``, a control
built to meet every condition XNNPACK's source states for its sparse path (explicit symmetric
padding, a 3x3 stride-2 convolution on 3 channels, 1x1 convolutions, global average pooling),
both sparsified and converted the same way.

Each runs in ``tf.lite.Interpreter`` with its default XNNPACK delegate (``num_threads`` 1 and 2)
at batch 1 and 32. The variants alternate in rounds (the order rotated each round) on a machine
other jobs share; the table gives the median milliseconds per call and the median over rounds of
the per-round speed-up against the dense file.

"Sparse inference ran?" compares the outputs of the two sparse files on the same input. Both hold
the same weights; only the encoded one carries XNNPACK's sparse hint. If XNNPACK switched that
file to its NCHW sparse kernels, the sums would run in another order and the outputs would differ
in their last bits; bitwise-equal outputs mean both ran the same dense kernels. XNNPACK does not
take the sparse path on x86 CPUs with AVX (``xnn_is_chw_compatible_config``: its sparse kernels
are SSE-only there); the run records whether this CPU has AVX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flatbuffers  # noqa: E402
import harness  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.lite.python import schema_py_generated as tflite_schema  # noqa: E402

import keras_sparse as ks  # noqa: E402

VARIANTS = ("dense", "sparse", "sparse + EXPERIMENTAL_SPARSITY")


def mobilenet_v2(size: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(weights=None, alpha=1.0, input_shape=(size, size, 3))


#: MobileNetV2's bottleneck stages (Sandler et al. 2018, table 2): expansion t, channels c, repeats n, stride s.
BOTTLENECKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


def mobilenet_v2_explicit(size: int, seed: int) -> keras.Model:
    """MobileNetV2 (alpha 1.0) laid out for XNNPACK's sparse path: every 3x3 layer gets a symmetric
    ``ZeroPadding2D(1)`` and "valid" padding (Keras's model pads stride-2 layers asymmetrically,
    which XNNPACK's NCHW kernels refuse), and the model ends at global average pooling, without the
    1000-class classifier (with it, XNNPACK kept the dense path on an emulated ARM64 CPU; cause not
    found). The stride-1 paddings the converter folds back into "SAME" are restored in the file by
    ``explicit_same_padding``."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def conv_bn(x, filters: int, kernel: int = 1, strides: int = 1, relu: bool = True, name: str = ""):
        if kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=strides, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((size, size, 3))
    x = conv_bn(inputs, 32, 3, 2, name="stem")
    channels, block = 32, 0
    for expansion, out_channels, repeats, stride in BOTTLENECKS:
        for i in range(repeats):
            y = conv_bn(x, channels * expansion, name=f"block{block}_expand") if expansion != 1 else x
            y = layers.ZeroPadding2D(1, name=f"block{block}_pad")(y)
            y = layers.DepthwiseConv2D(3, strides=stride if i == 0 else 1, use_bias=False, name=f"block{block}_dw")(y)
            y = layers.ReLU(6.0, name=f"block{block}_dw_relu")(layers.BatchNormalization(name=f"block{block}_dw_bn")(y))
            y = conv_bn(y, out_channels, relu=False, name=f"block{block}_project")
            x = layers.Add(name=f"block{block}_add")([x, y]) if i > 0 else y
            channels, block = out_channels, block + 1
    x = conv_bn(x, 1280, name="head")
    return keras.Model(inputs, layers.GlobalAveragePooling2D(name="pool")(x), name="mobilenet_v2_explicit")


def explicit_same_padding(content: bytes) -> bytes:
    """The TFLite file with each stride-1, undilated, odd-sized (not 1x1) CONV_2D or
    DEPTHWISE_CONV_2D of "SAME" padding replaced by a PAD of its symmetric padding and the same
    layer with "VALID" padding: the same outputs. XNNPACK fuses such a PAD into the layer, while it
    refuses a depthwise layer flagged "SAME" for its sparse path; the converter folds Keras's
    explicit padding into "SAME", so this has to happen in the file."""
    schema = tflite_schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))

    def builtin(code) -> int:
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    pad_code = next((i for i, c in enumerate(model.operatorCodes) if builtin(c) == schema.BuiltinOperator.PAD), None)
    if pad_code is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.PAD
        code.version = 1
        model.operatorCodes.append(code)
        pad_code = len(model.operatorCodes) - 1
    convolutions = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
    for graph in model.subgraphs:
        operators = []
        for op in graph.operators:
            options = op.builtinOptions
            if (builtin(model.operatorCodes[op.opcodeIndex]) in convolutions and options.padding == schema.Padding.SAME
                    and (options.strideH, options.strideW, options.dilationHFactor, options.dilationWFactor)
                    == (1, 1, 1, 1)):
                kh, kw = (int(d) for d in graph.tensors[op.inputs[1]].shape[1:3])
                if kh % 2 and kw % 2 and (kh, kw) != (1, 1):
                    x = graph.tensors[op.inputs[0]]
                    buffer = schema.BufferT()
                    paddings = np.array([[0, 0], [kh // 2] * 2, [kw // 2] * 2, [0, 0]], np.int32)
                    buffer.data = np.frombuffer(paddings.tobytes(), np.uint8)
                    model.buffers.append(buffer)
                    paddings_tensor = schema.TensorT()
                    paddings_tensor.shape, paddings_tensor.type = [4, 2], schema.TensorType.INT32
                    paddings_tensor.buffer = len(model.buffers) - 1
                    paddings_tensor.name = f"explicit_padding_{len(graph.tensors)}".encode()
                    padded = schema.TensorT()
                    padded.type, padded.buffer = x.type, 0
                    padded.name = f"explicit_padded_{len(graph.tensors)}".encode()
                    grow = [0, 2 * (kh // 2), 2 * (kw // 2), 0]
                    padded.shape = [int(d) + g for d, g in zip(x.shape, grow)]
                    if x.shapeSignature is not None and len(x.shapeSignature):
                        padded.shapeSignature = [int(d) + g if d > 0 else -1 for d, g in zip(x.shapeSignature, grow)]
                    graph.tensors += [paddings_tensor, padded]
                    pad = schema.OperatorT()
                    pad.opcodeIndex = pad_code
                    pad.inputs, pad.outputs = [int(op.inputs[0]), len(graph.tensors) - 2], [len(graph.tensors) - 1]
                    pad.builtinOptionsType, pad.builtinOptions = schema.BuiltinOptions.PadOptions, schema.PadOptionsT()
                    op.inputs = [len(graph.tensors) - 1] + [int(i) for i in op.inputs[1:]]
                    options.padding = schema.Padding.VALID
                    operators.append(pad)
            operators.append(op)
        graph.operators = operators
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def pointwise_stack(size: int, seed: int) -> keras.Model:
    """A control built to meet every condition of XNNPACK's sparse path as its source states them:
    explicit symmetric zero padding and a 3x3 stride-2 convolution on the 3 input channels (the
    NHWC-to-NCHW entry), four 1x1 convolutions, global average pooling (the exit), a classifier."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu6", name="stem")(x)
    for i in range(4):
        x = keras.layers.Conv2D(64, 1, activation="relu6", name=f"pointwise{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="pointwise_stack")


def pointwise_layers(model: keras.Model) -> list[str]:
    """Names of the 1x1 convolutions (not depthwise): the layers XNNPACK's sparse inference runs sparse."""
    return [layer.name for layer in model.layers
            if type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)]


def magnitude_masks(model: keras.Model, sparsity: float) -> dict[str, np.ndarray]:
    """Per masked weight, keep the largest-|w| (1 - sparsity) fraction (ties broken by index)."""
    masks = {}
    for weight in ks.masked_weights(model):
        w = np.abs(weight.variable.numpy()).ravel()
        mask = np.zeros(w.size, bool)
        mask[np.argsort(-w, kind="stable")[:round((1.0 - sparsity) * w.size)]] = True
        masks[weight.key] = mask.reshape(weight.variable.shape)
    return masks


def convert(model: keras.Model, optimizations) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = list(optimizations)
    return converter.convert()


def op_counts(content: bytes) -> dict[str, int]:
    """How many operators of each builtin type the file's main graph has, and its sparse tensors."""
    model = tflite_schema.Model.GetRootAsModel(content, 0)
    names = {v: k for k, v in vars(tflite_schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    counts: dict[str, int] = {}
    for i in range(graph.OperatorsLength()):
        name = names.get(codes[graph.Operators(i).OpcodeIndex()], "?")
        counts[name] = counts.get(name, 0) + 1
    counts["sparse tensors"] = sum(graph.Tensors(i).Sparsity() is not None for i in range(graph.TensorsLength()))
    return counts


def interpreter(content: bytes, x: np.ndarray, threads: int) -> tf.lite.Interpreter:
    """A ready interpreter (default XNNPACK delegate) fed ``x``, run twice to warm up."""
    runner = tf.lite.Interpreter(model_content=content, num_threads=threads)
    index = runner.get_input_details()[0]["index"]
    runner.resize_tensor_input(index, x.shape)
    runner.allocate_tensors()
    runner.set_tensor(index, x)
    runner.invoke()
    runner.invoke()
    return runner


def output(runner: tf.lite.Interpreter) -> np.ndarray:
    return runner.get_tensor(runner.get_output_details()[0]["index"]).copy()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def measure(files: dict[str, bytes], batch: int, threads: int, rounds: int, seconds: float, seed: int) -> dict:
    """Milliseconds per call of each file over ``rounds`` alternating rounds (about ``seconds`` of
    calls per variant and round), the per-round speed-ups against ``dense``, and the outputs' check."""
    x = np.random.default_rng(seed).normal(size=(batch, *tf.lite.Interpreter(
        model_content=files["dense"]).get_input_details()[0]["shape"][1:])).astype("float32")
    runners = {name: interpreter(content, x, threads) for name, content in files.items()}
    start = time.perf_counter()
    runners["dense"].invoke()
    calls = max(1, round(seconds / (time.perf_counter() - start)))
    ms: dict[str, list[float]] = {name: [] for name in files}
    names = list(files)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls):
                runners[name].invoke()
            ms[name].append(1000 * (time.perf_counter() - start) / calls)
    sparse_a, sparse_b = output(runners["sparse"]), output(runners["sparse + EXPERIMENTAL_SPARSITY"])
    rates = {name: [1.0 / v for v in values] for name, values in ms.items()}
    return {"batch": batch, "threads": threads, "calls_per_round": calls, "ms": ms,
            "median_ms": {name: statistics.median(values) for name, values in ms.items()},
            "speedup": {name: harness.round_ratios(rates, name, "dense") for name in files},
            "encoded_vs_plain_sparse_max_abs_diff": float(np.max(np.abs(sparse_a - sparse_b))),
            "encoded_vs_plain_sparse_bitwise_equal": bool(np.array_equal(sparse_a, sparse_b)),
            "dense_vs_sparse_max_abs_diff": float(np.max(np.abs(output(runners["dense"]) - sparse_a)))}


def report(run: dict) -> str:
    parts = []
    for model in run["models"]:
        rows = []
        for m in model["measurements"]:
            for name in VARIANTS:
                q = m["speedup"][name]
                ran = ("" if name != "sparse + EXPERIMENTAL_SPARSITY" else
                       "no (outputs bitwise equal to `sparse`)" if m["encoded_vs_plain_sparse_bitwise_equal"] else
                       f"outputs differ from `sparse` by {m['encoded_vs_plain_sparse_max_abs_diff']:.1e}")
                rows.append([model["model"], str(m["batch"]), str(m["threads"]), name, f"{m['median_ms'][name]:.1f}",
                             f"{q['median']:.2f}× ({q['min']:.2f}–{q['max']:.2f})", ran])
        table = harness.table(["model", "batch", "threads", "file", "median ms / call",
                               "speed-up vs dense (range over rounds)", "XNNPACK sparse inference ran?"], rows)
        files = "\n".join(f"- {name}: {model['files'][name]['kib']:.0f} KiB, ops {model['files'][name]['ops']}"
                          for name in VARIANTS)
        parts.append(f"{table}\n\n{files}\n\n{model['model']}: {model['pointwise_layers']} 1x1 convolutions at "
                     f"{100 * model['pointwise_sparsity']:.1f}% sparsity ({100 * model['model_sparsity']:.1f}% of all "
                     "conv/dense kernel weights)"
                     + ("" if model["explicit_padding_rewrite_max_abs_diff"] is None else
                        "; explicit_same_padding changed the dense file's outputs by at most "
                        f"{model['explicit_padding_rewrite_max_abs_diff']:.1e}"))
    return ("\n\n".join(parts) + f"\n\n{run['args']['size']}×{run['args']['size']} inputs; CPU has AVX: "
            f"{run['cpu_avx']}; load average {run['load_before']} before, {run['load_after']} after; "
            f"TF {run['tensorflow']}, Keras {run['keras']}; {run['wall_seconds']:.0f} s")


MODELS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v2_explicit": mobilenet_v2_explicit,
          "pointwise_stack": pointwise_stack}


def measure_model(name: str, build, args: argparse.Namespace) -> dict:
    """The three files of model ``name`` (``build(size, seed)``) and their measurements."""
    dense = build(args.size, args.seed)
    sparse = build(args.size, args.seed)
    pointwise = pointwise_layers(sparse)
    ks.wrap(sparse, include=pointwise)
    ks.set_masks(sparse, magnitude_masks(sparse, args.sparsity))
    plain = ks.strip(sparse)
    kernels = [w for w in plain.weights if "kernel" in w.path]
    files = {"dense": convert(dense, []), "sparse": convert(plain, []),
             "sparse + EXPERIMENTAL_SPARSITY": convert(plain, [tf.lite.Optimize.EXPERIMENTAL_SPARSITY])}
    rewrite_max_abs_diff = None
    if name == "mobilenet_v2_explicit":
        rewritten = {variant: explicit_same_padding(content) for variant, content in files.items()}
        x = np.random.default_rng(args.seed).normal(size=(1, args.size, args.size, 3)).astype("float32")
        rewrite_max_abs_diff = float(np.max(np.abs(output(interpreter(files["dense"], x, 1))
                                                   - output(interpreter(rewritten["dense"], x, 1)))))
        files = rewritten
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        for variant, content in files.items():
            file_name = f"{name}_{args.size}_{variant.replace(' + ', '_').replace(' ', '_')}.tflite".lower()
            with open(os.path.join(args.save, file_name), "wb") as f:
                f.write(content)
    return {"model": name, "pointwise_layers": len(pointwise), "pointwise_sparsity": ks.sparsity(sparse),
            "explicit_padding_rewrite_max_abs_diff": rewrite_max_abs_diff,
            "model_sparsity": (sum(int(np.sum(w.numpy() == 0)) for w in kernels)
                               / sum(int(np.prod(w.shape)) for w in kernels)),
            "files": {n: {"kib": len(content) / 1024, "ops": op_counts(content)} for n, content in files.items()},
            "measurements": [] if args.no_timing else [
                measure(files, batch, threads, args.rounds, args.seconds, args.seed)
                for batch in (int(b) for b in args.batches.split(","))
                for threads in (int(t) for t in args.threads.split(","))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,mobilenet_v2_explicit,pointwise_stack",
                        help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--sparsity", type=float, default=0.9, help="sparsity of every 1x1 convolution")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,2", help="comma-separated num_threads values")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per variant and round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the run as JSON here")
    parser.add_argument("--save", default=None, metavar="DIR",
                        help="also write the .tflite files here (e.g. to run them on an ARM device)")
    parser.add_argument("--no-timing", action="store_true", help="convert (and --save) only")
    args = parser.parse_args()
    started = time.perf_counter()
    run = {"args": vars(args), "load_before": [round(v, 2) for v in os.getloadavg()],
           "tensorflow": tf.__version__, "keras": keras.__version__, "cpu_avx": "avx" in cpu_flags()}

    run["models"] = [measure_model(name, build, args) for name, build in MODELS.items()
                     if name in args.models.split(",")]
    run["load_after"] = [round(v, 2) for v in os.getloadavg()]
    run["wall_seconds"] = time.perf_counter() - started
    print(report(run))
    if args.out:
        harness.write_json(args.out, run)


if __name__ == "__main__":
    main()
