"""``SparseModel``: plain model.compile / model.fit gives what ks.Trainer gives, for every algorithm."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import algorithms

ALGORITHMS = {
    "dense": lambda: algorithms.Dense(),
    "static": lambda: algorithms.StaticSparse(sparsity=0.8),
    "magnitude": lambda: algorithms.MagnitudePruning(sparsity=0.8, begin_step=2, end_step=10, frequency=2),
    "snip": lambda: algorithms.SNIP(sparsity=0.8),
    "set": lambda: algorithms.SET(sparsity=0.8, update_frequency=2),
    "rigl": lambda: algorithms.RigL(sparsity=0.8, update_frequency=2),
    "rigl_frozen": lambda: algorithms.RigL(sparsity=0.8, update_frequency=2, freeze_step=5),
}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 4, size=96)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 6 steps an epoch, same order each epoch


def model():
    keras.utils.set_random_seed(0)
    return ks.wrap(keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                                     keras.layers.Flatten(), keras.layers.Dense(16, activation="relu", name="fc"),
                                     keras.layers.Dense(4, name="out")]))


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# XLA for the algorithms whose masks change inside the compiled step (compiling is the slow part).
XLA = {"magnitude", "rigl", "set"}


@pytest.mark.parametrize("name, steps_per_execution", [(name, 1) for name in sorted(ALGORITHMS)] + [("rigl", 4)])
def test_fit_matches_trainer(name, steps_per_execution):
    """Also with Keras's steps_per_execution: mask updates are picked inside the compiled step."""
    jit = name in XLA
    reference = model()
    trainer = ks.Trainer(reference, ALGORITHMS[name](), keras.optimizers.SGD(0.05, momentum=0.9), loss(),
                         jit_compile=jit, progress=False)
    trainer.fit(data(), epochs=2)

    sparse = ks.SparseModel(model(), ALGORITHMS[name]())
    sparse.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=loss(), metrics=["accuracy"],
                   jit_compile=jit, steps_per_execution=steps_per_execution)
    history = sparse.fit(data(), epochs=2, verbose=0)

    masks, expected = ks.get_masks(sparse.wrapped), ks.get_masks(reference)
    for key in expected:
        np.testing.assert_array_equal(masks[key], expected[key], err_msg=key)
    for a, b in zip(sparse.wrapped.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    for k in ks.masked_kernels(sparse.wrapped):  # pruned weights exactly zero after fit
        assert np.all(k.kernel.numpy()[~k.mask.numpy()] == 0)
    assert sparse.dense_gradient_steps == trainer.dense_gradient_steps
    evaluation = sparse.evaluate(data(), verbose=0, return_dict=True)
    assert evaluation["accuracy"] == pytest.approx(trainer.evaluate(data())["accuracy"], abs=1e-6)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_fit_needs_a_dataset_of_known_length():
    sparse = ks.SparseModel(model(), algorithms.RigL(sparsity=0.8))
    sparse.compile(optimizer="sgd", loss=loss())
    with pytest.raises(ks.errors.ConfigError, match="unknown or infinite length"):
        sparse.fit(data().repeat(), epochs=1, verbose=0)
