"""Steps/s of the masked train step against a plain dense Keras 3 step, same model, same loop.

    python benchmarks/mask_overhead.py [--steps 200] [--rounds 7] [--no-xla]

Both steps are ``tf.function(jit_compile=True)``: forward, gradients, optimizer update. The
masked one is ``keras_sparse.Trainer``'s (gradients masked, kernels re-masked after the update)
on the same architecture wrapped at 90% static sparsity. The variants alternate, and the median
over rounds is reported, because the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_sparse as ks  # noqa: E402
from keras_sparse import models  # noqa: E402


def plain_step(model, optimizer, loss_fn, jit_compile):
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def steps_per_second(step, x, y, steps):
    step(x, y).numpy()  # make sure nothing is pending
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
    loss.numpy()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--out", default="mask_overhead.json")
    args = parser.parse_args()
    jit = not args.no_xla
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, 28, 28, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=args.batch))

    keras.utils.set_random_seed(0)
    dense = models.build((28, 28, 1), 10, name="lenet_300_100")
    dense_step = plain_step(dense, keras.optimizers.SGD(0.01, momentum=0.9), loss_fn, jit)

    keras.utils.set_random_seed(0)
    masked = ks.wrap(models.build((28, 28, 1), 10, name="lenet_300_100"))
    trainer = ks.Trainer(masked, ks.algorithms.StaticSparse(sparsity=0.9), keras.optimizers.SGD(0.01, momentum=0.9),
                         loss_fn, jit_compile=jit, progress=False)
    trainer.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1)  # initial masks + one compiled step
    masked_step = trainer._train_step

    rates = {"dense": [], "masked": []}
    for _ in range(args.rounds):
        for name, step in (("dense", dense_step), ("masked", masked_step)):
            rates[name].append(steps_per_second(step, x, y, args.steps))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {"model": "lenet_300_100", "batch": args.batch, "xla": jit, "steps": args.steps, "rounds": args.rounds,
              "steps_per_second": rates, "median": medians, "masked_over_dense": medians["masked"] / medians["dense"],
              "sparsity": ks.sparsity(masked)}
    print(f"LeNet-300-100, batch {args.batch}, XLA {'on' if jit else 'off'}, median of {args.rounds} rounds x {args.steps} steps")
    print(f"  dense  (plain Keras 3 step): {medians['dense']:8.1f} steps/s")
    print(f"  masked (keras-sparse, 90%) : {medians['masked']:8.1f} steps/s")
    print(f"  masked / dense             : {result['masked_over_dense']:.3f}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
