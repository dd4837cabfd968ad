"""``MaskedWrapper``: a Keras layer wrapper that gives a layer's kernels boolean masks.

Design: the wrapped layer computes exactly as before, on its own kernel. The invariant that
every code path keeps is *kernel == 0 wherever mask is False*: ``set_masks``, every mask
update and every optimizer step (see ``Trainer``) re-apply the mask. The forward pass therefore
needs no multiplication, and the gradient with respect to the stored kernel *is* the dense
gradient with respect to the effective weights, at inactive positions too, which is what
RigL's grow criterion needs (Evci et al. 2020).
"""

from __future__ import annotations

from typing import Any

import keras

from keras_sparse.errors import ConfigError

# Layer class -> names of the kernels to mask. Order matters for subclasses: the first
# isinstance match wins, so more specific classes come first.
PRUNABLE_KERNELS: dict[type, tuple[str, ...]] = {
    keras.layers.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.DepthwiseConv1D: ("kernel",),
    keras.layers.DepthwiseConv2D: ("kernel",),
    keras.layers.Conv1DTranspose: ("kernel",),
    keras.layers.Conv2DTranspose: ("kernel",),
    keras.layers.Conv3DTranspose: ("kernel",),
    keras.layers.Conv1D: ("kernel",),
    keras.layers.Conv2D: ("kernel",),
    keras.layers.Conv3D: ("kernel",),
    keras.layers.Dense: ("kernel",),
    keras.layers.EinsumDense: ("kernel",),
}

# Weights that are not kernels: these layers are dense by design, never "unsupported".
_NON_KERNEL_WEIGHT_NAMES = {"bias", "gamma", "beta", "moving_mean", "moving_variance", "scale"}


def prunable_kernel_names(layer: keras.layers.Layer) -> tuple[str, ...] | None:
    """Names of ``layer``'s kernels that keras-sparse masks, or None if the type is not supported."""
    for cls, kernel_names in PRUNABLE_KERNELS.items():
        if isinstance(layer, cls):
            return kernel_names
    return None


def holds_unsupported_kernel(layer: keras.layers.Layer) -> bool:
    """True for a layer type we cannot mask that owns weights other than biases/normalisation.

    Such a layer (Embedding, LSTM, MultiHeadAttention, …) must be reported to the user rather
    than silently left dense.
    """
    if (prunable_kernel_names(layer) is not None or isinstance(layer, keras.Model)
            or isinstance(layer, MaskedWrapper)):  # already wrapped: wrap() keeps it as it is
        return False
    own = [w for w in layer.weights if w.trainable]
    return any(w.name.split("/")[-1] not in _NON_KERNEL_WEIGHT_NAMES for w in own)


@keras.saving.register_keras_serializable(package="keras_sparse")
class MaskedWrapper(keras.layers.Wrapper):
    """Wraps a Dense/Conv/EinsumDense/… layer and keeps one boolean mask per kernel.

    Args:
        layer: the layer to wrap; its type must be in ``PRUNABLE_KERNELS``.
        **kwargs: passed to ``keras.layers.Wrapper`` (``name`` defaults to ``masked_<name>``).

    Masks are non-trainable ``bool`` weights named ``<kernel>_mask`` (1 byte a weight, a
    quarter of a float32 kernel). ``mask_key`` maps each to ``"<layer name>/<kernel>"``, the
    key used by ``get_masks``/``set_masks`` and the sparsity distributions.

    Saving: the class is registered as ``keras_sparse>MaskedWrapper``, so after
    ``import keras_sparse`` a wrapped model round-trips through ``model.save("m.keras")`` and
    ``keras.models.load_model("m.keras")`` with no ``custom_objects``. The config is the wrapped
    layer's (``keras.layers.Wrapper.get_config``); which kernels get masks follows from its type,
    so it is not stored. The masks are the wrapper's own variables, saved (as ``bool``) in the
    archive's ``model.weights.h5`` and recreated by ``build`` on load, in ``kernel_names``
    order, before the weights are read back.
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any):
        kernel_names = prunable_kernel_names(layer)
        if kernel_names is None:
            raise ConfigError(
                f"Layer {layer.name!r} of type {type(layer).__name__} has no maskable kernel: "
                f"keras-sparse masks {sorted(c.__name__ for c in PRUNABLE_KERNELS)}."
            )
        kwargs.setdefault("name", f"masked_{layer.name}")
        super().__init__(layer, **kwargs)
        self.kernel_names = kernel_names
        self.masks: dict[str, keras.Variable] = {}
        self.input_shape_for_flops: tuple | None = None

    def build(self, input_shape=None):
        if self.masks:  # already built (e.g. an explicit build() before the first call)
            return
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        self.input_shape_for_flops = tuple(input_shape) if input_shape is not None else None
        for kernel_name in self.kernel_names:
            kernel = self.kernel(kernel_name)
            mask = self.add_weight(
                name=f"{kernel_name}_mask", shape=kernel.shape, dtype="bool",
                initializer="ones", trainable=False,
            )
            self.masks[kernel_name] = mask
            # Also an attribute: TensorFlow's checkpoint tracking does not see into the Keras
            # ``TrackedDict`` above, and tf.train.Checkpoint (Trainer's resume) must save masks.
            setattr(self, f"{kernel_name}_mask", mask)
        self.built = True

    def kernel(self, kernel_name: str) -> keras.Variable:
        """The wrapped layer's kernel variable called ``kernel_name``."""
        for weight in self.layer.weights:
            if weight.name == kernel_name:
                return weight
        raise KeyError(f"{self.layer.name} has no weight named {kernel_name!r}")

    def mask_key(self, kernel_name: str) -> str:
        """The user-facing key of one kernel's mask: ``"<layer name>/<kernel name>"``."""
        return f"{self.layer.name}/{kernel_name}"

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)
