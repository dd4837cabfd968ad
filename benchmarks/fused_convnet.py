"""keras.io's "Simple MNIST convnet", sparsified with RigL in its own ``model.compile`` / ``fit``:
epoch times with ``ks.SparsityCallback()`` (fusing on) and ``SparsityCallback(fuse_steps=False)``.

    python benchmarks/fused_convnet.py

The model as keras.io builds it (two Conv2D + MaxPooling, Dropout 0.5, Dense softmax), on 6,000
random 28×28×1 inputs with random labels (offline: only the speed is read), Adam, RigL 80%
updating every 15 steps, ``jit_compile=True``, ``steps_per_execution=10``, batch 128, a 10%
validation split, 4 epochs; fused, then not. Printed per setting: each epoch's seconds (the
first holds the compilation), the last loss and sparsity, and whether the train function is the
fused one (at K > 1 it hands a step with convolutions to Keras's own function).
"""
import time

import keras
import numpy as np
from keras import layers

import keras_sparse as ks


class EpochTimes(keras.callbacks.Callback):
    """Seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def convnet() -> keras.Model:
    """keras.io's "Simple MNIST convnet", seed 0."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6000, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, 6000), 10)
    for fuse in (True, False):
        model = convnet()
        optimizer = ks.SparseOptimizer(keras.optimizers.Adam(), ks.algorithms.RigL(sparsity=0.8, update_frequency=15),
                                       model=model)
        model.compile(loss="categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"], jit_compile=True,
                      steps_per_execution=10)
        times = EpochTimes()
        history = model.fit(x, y, batch_size=128, epochs=4, validation_split=0.1, verbose=0,
                            callbacks=[ks.SparsityCallback(fuse_steps=fuse), times])
        print(f"fuse={fuse}: epochs {[round(t, 2) for t in times.seconds]} s; loss {history.history['loss'][-1]:.4f} "
              f"sparsity {history.history['sparsity'][-1]:.3f} fused={hasattr(model.train_function, 'fused')}",
              flush=True)


if __name__ == "__main__":
    main()
