"""An opt-in export for Dense-heavy models at very high sparsity: very sparse Dense kernels stored as
their non-zeros and multiplied with a sparse matmul inside the SavedModel.

A masked model exported as it is (``export_saved_model``) keeps its zeros in full-size kernels,
so it runs exactly as fast as the dense model. A Dense layer with a 95–99% sparse kernel does
20–100× fewer multiply-adds if only its non-zeros are stored; whether that is faster depends on
the runtime's sparse kernels, the batch size and the layer's size, so this export is a separate
function, never what ``export_saved_model`` does (docs/sparse_matmul.md has the measurements and
when to use it).

``sparse_matmul_model(model)`` rebuilds a Sequential or functional model (``keras.models.clone_model``,
nested Sequential and functional models included) with every plain ``keras.layers.Dense`` whose
kernel is at least ``min_sparsity`` zeros replaced by a ``SparseMatMulDense``; every other layer is
the original layer object, shared, so its weights (pruned ones exactly 0) are what the masked
model has. ``export_sparse_matmul(model, path)`` writes that model with ``export_saved_model``.

Two sparse products exist in TensorFlow's CPU kernels, and neither wins everywhere:

- ``"coo"``: ``tf.sparse.sparse_dense_matmul`` on the COO indices. Fast for one or a few rows,
  slow for a batch.
- ``"csr"``: the kernel converted to CSR (``SparseTensorToCSRSparseMatrix``, on every call: a CSR
  matrix is a variant tensor and cannot be stored in a SavedModel) and ``SparseMatrixMatMul``.
  Fast for a batch, slow for one row.
- ``"auto"`` (the default): COO for inputs of fewer than ``AUTO_CSR_ROWS`` rows, CSR from there,
  chosen at run time (``tf.cond`` on the batch size), so one SavedModel serves both.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError
from keras_sparse.masking import export_saved_model, mask_of

Matmul = Literal["auto", "coo", "csr"]
MATMULS = ("auto", "coo", "csr")

#: ``"auto"`` uses CSR from this many rows (examples × positions) on: about where the COO product
#: stops being the faster one for the wide MLP of benchmarks/sparse_matmul_export.py (its
#: crossover run, BENCHMARKS.md section 11).
AUTO_CSR_ROWS = 8

FIX = "export it with ks.export_saved_model(model, path) (a dense SavedModel, pruned weights exactly 0)"


@keras.saving.register_keras_serializable(package="keras_sparse")
class SparseMatMulDense(keras.layers.Layer):
    """A Dense layer whose kernel is stored as its non-zeros and multiplied with a sparse matmul.

    ``indices`` (int64, ``(nnz, 2)``: input row, output column, in row-major order) and ``values``
    (``(nnz,)``) are non-trainable weights: this layer is for serving, not for training. It computes
    ``activation(inputs @ kernel + bias)`` as the Dense it replaces does, for inputs of any rank
    (the last axis is the features'). The product runs in the weights' dtype (TensorFlow's CSR
    kernels have no float16), cast to the layer's compute dtype after; under mixed precision the
    values are read as float16 first, as a mixed-precision Dense reads its kernel.
    """

    def __init__(self, units: int, input_dim: int, nnz: int, activation=None, use_bias: bool = True,
                 matmul: Matmul = "auto", **kwargs):
        super().__init__(**kwargs)
        if matmul not in MATMULS:
            raise ConfigError(f"matmul={matmul!r} is not one of {MATMULS}.")
        self.units, self.input_dim, self.nnz = int(units), int(input_dim), int(nnz)
        self.activation = keras.activations.get(activation)
        self.use_bias, self.matmul = bool(use_bias), matmul

    def build(self, input_shape=None) -> None:
        self.indices = self.add_weight(shape=(self.nnz, 2), dtype="int64", initializer="zeros", trainable=False,
                                       name="indices")
        self.values = self.add_weight(shape=(self.nnz,), initializer="zeros", trainable=False, name="values")
        self.bias = (self.add_weight(shape=(self.units,), initializer="zeros", trainable=False, name="bias")
                     if self.use_bias else None)
        self.built = True

    def set_kernel(self, kernel: np.ndarray, bias: np.ndarray | None) -> None:
        """Stores ``kernel``'s non-zeros (row-major, as the CSR conversion needs them) and ``bias``."""
        indices = np.argwhere(kernel != 0)
        self.indices.assign(indices.astype("int64"))
        self.values.assign(kernel[kernel != 0].astype(self.values.dtype))
        if self.use_bias:
            self.bias.assign(np.asarray(bias, dtype=self.bias.dtype))

    def _product(self, x: tf.Tensor, matmul: str) -> tf.Tensor:
        indices = tf.convert_to_tensor(self.indices)
        # Under mixed precision Keras reads the values in the compute dtype (float16): back to the
        # weights' dtype, which the CSR kernels take (they have no float16).
        values = tf.cast(tf.convert_to_tensor(self.values), self.variable_dtype)
        shape = tf.constant([self.input_dim, self.units], dtype=tf.int64)
        if matmul == "coo":
            return tf.sparse.sparse_dense_matmul(x, tf.SparseTensor(indices, values, shape))
        csr = tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=indices, values=values, dense_shape=shape)
        # (kernelᵀ · xᵀ)ᵀ = x · kernel, with the transposes done by the kernel itself.
        return tf.raw_ops.SparseMatrixMatMul(a=csr, b=x, transpose_a=True, transpose_b=True, transpose_output=True)

    def call(self, inputs):
        x = tf.reshape(tf.cast(inputs, self.variable_dtype), [-1, self.input_dim])
        if self.matmul == "auto":
            y = tf.cond(tf.shape(x)[0] < AUTO_CSR_ROWS, lambda: self._product(x, "coo"),
                        lambda: self._product(x, "csr"))
        else:
            y = self._product(x, self.matmul)
        y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
        if self.use_bias:
            y = y + tf.cast(tf.convert_to_tensor(self.bias), self.variable_dtype)
        return tf.cast(self.activation(y), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "input_dim": self.input_dim, "nnz": self.nnz,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                "matmul": self.matmul}


def kernel_sparsity(kernel: np.ndarray) -> float:
    """The fraction of ``kernel``'s entries that are exactly zero."""
    return 1.0 - np.count_nonzero(kernel) / kernel.size if kernel.size else 0.0


def sparse_matmul_model(model: keras.Model, min_sparsity: float = 0.95, matmul: Matmul = "auto") -> keras.Model:
    """``model`` rebuilt with each Dense whose kernel is at least ``min_sparsity`` zeros replaced by a
    ``SparseMatMulDense`` holding its non-zeros (the mask applied, on a wrapped model).

    Only layers of exactly ``keras.layers.Dense`` (not subclasses, whose call may differ; not
    quantized ones) are replaced; all other layers are shared with ``model``, not copied. The new
    model computes what ``model`` computes, up to float32 rounding, and has no masks.

    Raises:
        ConfigError: ``model`` is not a built Sequential or functional model (one line, with the
            fix), or ``min_sparsity`` / ``matmul`` is out of range.
    """
    if not isinstance(model, keras.Model) or not (isinstance(model, keras.Sequential)
                                                   or type(model).__name__ == "Functional"):
        raise ConfigError(f"export_sparse_matmul needs a Sequential or functional model; {type(model).__name__} "
                          f"{getattr(model, 'name', '')!r} is neither (its call is Python code): build it as a "
                          f"functional model, or {FIX}.")
    if not model.built or not model.inputs:
        raise ConfigError(f"Model {model.name!r} is not built with an Input: give it keras.Input(shape) first.")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ConfigError(f"min_sparsity={min_sparsity} is not a fraction between 0 and 1.")
    if matmul not in MATMULS:
        raise ConfigError(f"matmul={matmul!r} is not one of {MATMULS}.")
    def replace(layer: keras.layers.Layer) -> keras.layers.Layer:
        if type(layer) is not keras.layers.Dense or getattr(layer, "quantization_mode", None):
            return layer
        kernel = keras.ops.convert_to_numpy(layer.kernel)  # with a LoRA update merged in, if any
        weight = mask_of(getattr(layer, "_kernel", None))  # the variable wrap() masks
        if weight is not None:
            kernel = np.where(weight.mask.numpy(), kernel, 0).astype(kernel.dtype)
        if kernel_sparsity(kernel) < min_sparsity:
            return layer
        new = SparseMatMulDense(layer.units, kernel.shape[0], int(np.count_nonzero(kernel)),
                                activation=layer.activation, use_bias=layer.use_bias, matmul=matmul,
                                dtype=layer.dtype_policy, name=layer.name)
        new.build()
        new.set_kernel(kernel, keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None)
        return new

    return keras.models.clone_model(model, clone_function=replace, recursive=True)


def export_sparse_matmul(model: keras.Model, path: str, min_sparsity: float = 0.95, matmul: Matmul = "auto") -> str:
    """Exports ``model`` as a SavedModel (``serving_default`` signature) whose Dense layers at least
    ``min_sparsity`` sparse compute with a sparse matmul (``sparse_matmul_model``); returns ``path``.

    Opt-in: it is faster than the dense export only for large, very sparse Dense layers, and
    slower for small ones or moderate sparsity (docs/sparse_matmul.md). The SavedModel is written
    by ``export_saved_model``: next to ``path``, then moved into place. Loading it needs only
    TensorFlow (``tf.saved_model.load``), not keras-sparse.

    Raises:
        ConfigError: as ``sparse_matmul_model``.
    """
    return export_saved_model(sparse_matmul_model(model, min_sparsity, matmul), path)
