"""Steps/s of the masked train step against a plain dense Keras 3 step, same model, same loop.

    python benchmarks/mask_overhead.py [--models lenet_300_100 lenet5 resnet] [--rounds 7] [--no-xla]

Models: LeNet-300-100 and LeNet-5 on 28×28×1 inputs, ResNet-20 on 32×32×3, batch 128.

Every step is one ``tf.function(jit_compile=True)``: forward, gradients, SGD-momentum update.

- ``masked``: ``keras_sparse.Trainer``'s step on the model wrapped at 90% static sparsity
  (gradients masked, kernels re-masked after the update, a step counter, a NaN watch).
- ``dense``: a plain Keras 3 step on the unwrapped model with the same step counter and NaN
  watch, i.e. the same loop without masking: the baseline of the ratio.
- ``plain``: the bare plain Keras 3 step (no counter, no watch). On LeNet-300-100 on CPU it is
  slower than ``dense`` although it does less; see BENCHMARKS.md.

The variants alternate, and the median over rounds is reported, because the machines here are
shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import keras_sparse as ks  # noqa: E402
from keras_sparse import models  # noqa: E402


MODELS = {  # name: (input shape, steps a round) — fewer steps for the bigger model
    "lenet_300_100": ((28, 28, 1), 200),
    "lenet5": ((28, 28, 1), 100),
    "resnet": ((32, 32, 3), 10),
}


def measure(name: str, batch: int, rounds: int, jit: bool) -> dict:
    """Alternates the dense and masked steps of model ``name``; returns medians and their ratio."""
    shape, steps = MODELS[name]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=batch))

    def plain(watch_loss: bool):
        keras.utils.set_random_seed(0)
        return common.plain_step(models.build(shape, 10, name=name), keras.optimizers.SGD(0.01, momentum=0.9),
                                 loss_fn, jit, watch_loss=watch_loss)

    keras.utils.set_random_seed(0)
    masked = ks.wrap(models.build(shape, 10, name=name))
    trainer = ks.Trainer(masked, ks.algorithms.StaticSparse(sparsity=0.9), keras.optimizers.SGD(0.01, momentum=0.9),
                         loss_fn, jit_compile=jit, progress=False)
    trainer.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1)  # initial masks + one compiled step
    # The step's tf.function, dispatched like the dense one (the Trainer's own faster dispatch aside).
    masked_step = trainer._train_step.function

    variants = {"plain": plain(False), "dense": plain(True), "masked": masked_step}
    rates, medians = common.alternate(variants, x, y, steps, rounds)
    return {"model": name, "batch": batch, "xla": jit, "steps": steps, "rounds": rounds, "steps_per_second": rates,
            "median": medians, "masked_over_dense": medians["masked"] / medians["dense"],
            "masked_over_plain": medians["masked"] / medians["plain"], "sparsity": ks.sparsity(masked)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--out", default="mask_overhead.json")
    args = parser.parse_args()
    results = [measure(name, args.batch, args.rounds, not args.no_xla) for name in args.models]
    print(f"batch {args.batch}, XLA {'on' if not args.no_xla else 'off'}, static 90% masks, "
          f"median of {args.rounds} alternating rounds")
    print("| model | steps a round | plain steps/s | dense steps/s | masked steps/s | masked / dense | masked / plain |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        print(f"| {r['model']} | {r['steps']} | {m['plain']:.1f} | {m['dense']:.1f} | {m['masked']:.1f} "
              f"| {r['masked_over_dense']:.3f} | {r['masked_over_plain']:.3f} |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
