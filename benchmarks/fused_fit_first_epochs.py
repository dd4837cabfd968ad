"""What fusing ``model.fit``'s steps costs in compilation: epoch times of a short ``fit``, fused or not.

    python benchmarks/fused_fit_first_epochs.py [--fuse on off] [--epochs 4]

The model is keras.io's "Timeseries classification with a Transformer model" (two encoder
blocks of LayerNormalization, MultiHeadAttention and a Conv1D feed-forward, with keras.io's
dropout of 0.25 in the blocks and 0.4 in the head; head size 32, 2 heads, ff_dim 4, a Dense 64
head), on 512 random sequences of 100 steps with a learnable label,
trained with ``ks.SparseOptimizer(Adam(1e-3), RigL(0.9))``, keras.io's accuracy metric, ``jit_compile=True``,
``steps_per_execution=8``, batch 32, a 10% validation split (15 steps an epoch: a chunk of 8 and a
short one of 7), and ``ks.SparsityCallback(fuse_steps=...)``. Each setting runs in a fresh
process (compilation caches start empty); printed: seconds per epoch and for the whole ``fit``.
The first epochs hold the compilations: Keras's own loop compiles one step program; the fused
loop a K-step program without the mask-update decision, and one-step programs with it (for each
update step, and a short chunk that holds one) and without it (a short chunk that holds none).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def encoder(x, keras, layers):
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.MultiHeadAttention(key_dim=32, num_heads=2, dropout=0.25)(y, y)
    x = x + layers.Dropout(0.25)(y)
    y = layers.LayerNormalization(epsilon=1e-6)(x)
    y = layers.Dropout(0.25)(layers.Conv1D(filters=4, kernel_size=1, activation="relu")(y))
    y = layers.Conv1D(filters=x.shape[-1], kernel_size=1)(y)
    return x + y


def worker(fuse: bool, epochs: int) -> None:
    import keras
    import numpy as np
    from keras import layers

    import keras_sparse as ks

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 100, 1)).astype("float32")
    y = (x[:, :50, 0].mean(1) > 0).astype("int64")
    inputs = keras.Input((100, 1))
    h = encoder(encoder(inputs, keras, layers), keras, layers)
    h = layers.Dropout(0.4)(layers.Dense(64, activation="relu")(layers.GlobalAveragePooling1D()(h)))
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(h))
    optimizer = ks.SparseOptimizer(keras.optimizers.Adam(1e-3), ks.algorithms.RigL(sparsity=0.9),
                                   total_steps=epochs * 15, model=model)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"], jit_compile=True, steps_per_execution=8)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, validation_split=0.1, verbose=0,
              callbacks=[ks.SparsityCallback(fuse_steps=fuse), Timer()])
    print(json.dumps({"fuse": fuse, "epochs": times, "fit": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuse", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker == "on", args.epochs)
        return
    for setting in args.fuse:
        out = subprocess.run([sys.executable, __file__, "--worker", setting, "--epochs", str(args.epochs)],
                             capture_output=True, text=True, check=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        epochs = ", ".join(f"{t:.1f}" for t in run["epochs"])
        print(f"fuse {setting}: epochs {epochs} s; fit {run['fit']:.1f} s")


if __name__ == "__main__":
    main()
