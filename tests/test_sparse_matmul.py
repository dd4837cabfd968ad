"""export_sparse_matmul / sparse_matmul_model: very sparse Dense kernels stored as their non-zeros and
multiplied with a sparse matmul, same outputs as the masked model.

Hand-made kernels with known non-zeros (the exact indices and values stored), outputs equal to the
masked model's for each product (COO, CSR, and "auto" on both sides of its switch), inputs of rank
3, layers below ``min_sparsity`` left as they are (the same objects), the refusals, and the
SavedModel loaded back with ``tf.saved_model.load`` and served.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse.errors import ConfigError
from keras_sparse.sparse_matmul import AUTO_CSR_ROWS, SparseMatMulDense

L = keras.layers


def two_layers() -> keras.Model:
    """Input 4 → Dense "a" (4×5, ReLU; 2 non-zeros: 90% sparse) → Dense "b" (5×2, dense)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), L.Dense(5, activation="relu", name="a"), L.Dense(2, name="b")])
    kernel = np.zeros((4, 5), "float32")
    kernel[1, 2], kernel[3, 0] = 2.0, -1.5
    model.get_layer("a").kernel.assign(kernel)
    model.get_layer("a").bias.assign(np.arange(5, dtype="float32") / 10)
    return model


def masked_mlp(sparsity: float = 0.95, seed: int = 0) -> keras.Model:
    """A wrapped functional MLP 12-40-30-3 (rank-3 input: 5 positions) with random masks."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5, 12))
    x = L.Dense(40, activation="relu", name="fc1")(inputs)
    x = L.Dense(30, activation="tanh", name="fc2")(x)
    model = ks.wrap(keras.Model(inputs, L.Dense(3, name="logits")(x)), quiet=True)
    rng = np.random.default_rng(seed)
    masks = {key: rng.random(mask.shape) >= sparsity for key, mask in ks.get_masks(model).items()}
    masks["logits/kernel"][:] = True  # dense: stays a Dense
    ks.set_masks(model, masks)
    for layer in model.layers[1:]:
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype("float32"))
    return model


def test_stores_exactly_the_kernels_nonzeros():
    model = two_layers()
    sparse = ks.sparse_matmul_model(model, min_sparsity=0.9)
    a = sparse.get_layer("a")
    assert isinstance(a, SparseMatMulDense) and (a.input_dim, a.units, a.nnz) == (4, 5, 2)
    np.testing.assert_array_equal(a.indices.numpy(), [[1, 2], [3, 0]])
    np.testing.assert_array_equal(a.values.numpy(), [2.0, -1.5])
    np.testing.assert_array_equal(a.bias.numpy(), np.arange(5, dtype="float32") / 10)
    assert sparse.get_layer("b") is model.get_layer("b")  # below min_sparsity: the same layer, shared
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    assert isinstance(ks.sparse_matmul_model(model, min_sparsity=0.91).get_layer("a"), L.Dense)


@pytest.mark.parametrize("matmul", ["coo", "csr", "auto"])
def test_same_outputs_as_the_masked_model(matmul):
    model = masked_mlp()
    sparse = ks.sparse_matmul_model(model, min_sparsity=0.9, matmul=matmul)
    assert [type(layer).__name__ for layer in sparse.layers[1:]] == ["SparseMatMulDense"] * 2 + ["Dense"]
    assert ks.get_masks(model)["fc1/kernel"].sum() == sparse.get_layer("fc1").nnz  # the mask applied
    rng = np.random.default_rng(1)
    for batch in (1, AUTO_CSR_ROWS // 5 + 1, 4):  # 5 positions per example: "auto" runs COO, then CSR
        x = rng.normal(size=(batch, 5, 12)).astype("float32")
        np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("matmul", ["coo", "csr"])
def test_an_all_zero_kernel_gives_the_activation_of_the_bias(matmul):
    model = two_layers()
    model.get_layer("a").kernel.assign(np.zeros((4, 5), "float32"))
    sparse = ks.sparse_matmul_model(model, min_sparsity=1.0, matmul=matmul)
    assert sparse.get_layer("a").nnz == 0
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)


def test_mixed_precision_computes_in_the_weights_dtype():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16,)), L.Dense(8, dtype="mixed_float16", name="a")])
    kernel = model.get_layer("a").kernel.numpy()
    kernel[np.random.default_rng(0).random(kernel.shape) < 0.9] = 0
    model.get_layer("a").kernel.assign(kernel)
    sparse = ks.sparse_matmul_model(model, min_sparsity=0.5)
    x = np.random.default_rng(1).normal(size=(AUTO_CSR_ROWS, 16)).astype("float32")  # CSR: float32 only
    out = sparse(x)
    assert out.dtype == "float16" and sparse.get_layer("a").values.dtype == "float32"
    np.testing.assert_allclose(np.asarray(out, "float32"), np.asarray(model(x), "float32"), rtol=1e-2, atol=1e-2)


def test_dense_layers_of_nested_models_are_replaced():
    inner = two_layers()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3, name="head")(inner(inputs)))
    sparse = ks.sparse_matmul_model(model, min_sparsity=0.9)
    assert isinstance(sparse.layers[1].get_layer("a"), SparseMatMulDense)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(sparse(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_refusals_are_one_line():
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ConfigError, match="Sequential or functional.*ks.export_saved_model") as error:
        ks.export_sparse_matmul(model, "/nonexistent/never_written")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="min_sparsity"):
        ks.sparse_matmul_model(two_layers(), min_sparsity=1.5)
    with pytest.raises(ConfigError, match="matmul"):
        ks.sparse_matmul_model(two_layers(), matmul="blocked")


def test_the_saved_model_loads_and_serves(tmp_path):
    model = masked_mlp(sparsity=0.9)
    path = ks.export_sparse_matmul(model, str(tmp_path / "exported"), min_sparsity=0.85)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # nothing left beside it
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for batch in (1, 4):  # both sides of "auto"'s switch
        x = np.random.default_rng(batch).normal(size=(batch, 5, 12)).astype("float32")
        (out,) = serve(tf.constant(x)).values()
        np.testing.assert_allclose(out.numpy(), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
