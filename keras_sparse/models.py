"""The models of the papers, by name: ``model.name = "lenet5"`` in gin.

- ``mnist1d_cnn``: 4 Conv1D + BatchNorm layers and a linear classifier, for MNIST-1D.
- ``mlp`` / ``lenet_300_100``: fully connected nets (LeCun et al. 1998; Frankle & Carbin 2019).
- ``lenet5``: two conv + pool layers and three dense layers (LeCun et al. 1998).
- ``resnet``: the CIFAR ResNet of He et al. 2016 (depth 6n+2, ``resnet20`` by default) with a
  width multiplier, giving WideResNets (Zagoruyko & Komodakis 2016) for ``width`` > 1.
- ``mnist1d_transformer``: a small pre-norm transformer encoder over patches of the sequence
  (Vaswani et al. 2017; patches as in Dosovitskiy et al. 2021), for MNIST-1D.
"""

from __future__ import annotations

from typing import Callable, Sequence

import gin
import keras

from keras_sparse.errors import ConfigError
from keras_sparse.registry import Registry

layers = keras.layers
MODELS: Registry[Callable[..., keras.Model]] = Registry("model")


@MODELS.register("mnist1d_cnn")
def mnist1d_cnn(input_shape: Sequence[int], num_classes: int, width: int = 128) -> keras.Model:
    """Conv1D(5) + 3 × Conv1D(3, stride 2), each with BatchNorm and ReLU, then a Dense classifier."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i, (size, stride) in enumerate([(5, 1), (3, 2), (3, 2), (3, 2)]):
        x = layers.Conv1D(width, size, strides=stride, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="mnist1d_cnn")


@MODELS.register("mlp")
def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (300, 100)) -> keras.Model:
    """Flatten, ReLU Dense layers of sizes ``hidden``, then a Dense classifier."""
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    for i, units in enumerate(hidden):
        x = layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="mlp")


@MODELS.register("lenet_300_100")
def lenet_300_100(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """LeNet-300-100: the MLP with hidden layers of 300 and 100 units."""
    return mlp(input_shape, num_classes, hidden=(300, 100))


@MODELS.register("lenet5")
def lenet5(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """LeNet-5: conv 6@5×5, pool, conv 16@5×5, pool, dense 120, 84, classifier."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="lenet5")


@MODELS.register("resnet")
def resnet(input_shape: Sequence[int], num_classes: int, depth: int = 20, width: int = 1) -> keras.Model:
    """CIFAR ResNet-(6n+2) with basic blocks of 16·width, 32·width, 64·width filters."""
    if (depth - 2) % 6:
        raise ConfigError(f"model.depth={depth} must be 6n+2 (20, 32, 44, 56, …).")
    blocks = (depth - 2) // 6

    def conv(filters, stride, name):
        return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)

    inputs = keras.Input(input_shape)
    x = conv(16 * width, 1, "conv0")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for stage, filters in enumerate([16 * width, 32 * width, 64 * width]):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            y = conv(filters, stride, f"{name}_conv1")(x)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = layers.BatchNormalization()(conv(filters, 1, f"{name}_conv2")(y))
            if stride != 1 or x.shape[-1] != filters:
                x = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_shortcut")(x)
                x = layers.BatchNormalization()(x)
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name=f"resnet{depth}_{width}")


@keras.saving.register_keras_serializable(package="keras_sparse")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of shape ``(tokens, dim)`` to inputs of shape ``(batch, tokens, dim)``.

    Its one weight is named ``embeddings``, as in ``keras.layers.Embedding``.
    """

    def __init__(self, initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(shape=tuple(input_shape[-2:]), initializer=self.initializer,
                                          name="embeddings")

    def call(self, inputs):
        return inputs + keras.ops.cast(self.embeddings, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "initializer": keras.initializers.serialize(self.initializer)}


@MODELS.register("mnist1d_transformer")
def mnist1d_transformer(input_shape: Sequence[int], num_classes: int, patch_size: int = 4, dim: int = 64,
                        heads: int = 4, depth: int = 2, mlp_dim: int = 128, dropout: float = 0.0) -> keras.Model:
    """A small pre-norm transformer encoder (Vaswani et al. 2017) over patches (Dosovitskiy et al. 2021).

    The sequence of shape ``(length, channels)`` is cut into ``length // patch_size``
    non-overlapping patches (10 patches of 4 values for MNIST-1D), each projected to ``dim``
    by a Dense layer (``patch_embedding``), plus a learned position embedding
    (``position_embedding``). Then ``depth`` pre-norm blocks ``blockN``:
    ``x += MultiHeadAttention(LayerNorm(x))`` (``blockN_attention``, ``heads`` heads of size
    ``dim // heads``) and ``x += Dense(GELU Dense(LayerNorm(x)))`` (``blockN_ffn1`` of
    ``mlp_dim`` units, ``blockN_ffn2``). Mean-pooled tokens, LayerNorm, Dense ``logits``.
    ``dropout`` applies to the attention weights and after each residual branch.
    """
    length, channels = input_shape[0], (input_shape[1] if len(input_shape) > 1 else 1)
    if len(input_shape) > 2 or length % patch_size:
        raise ConfigError(f"model.patch_size={patch_size} must divide the length of inputs of shape "
                          f"{tuple(input_shape)} (length, channels).")
    if dim % heads:
        raise ConfigError(f"model.dim={dim} must be a multiple of model.heads={heads}.")
    inputs = keras.Input(input_shape)
    x = layers.Reshape((length // patch_size, patch_size * channels), name="patches")(inputs)
    x = layers.Dense(dim, name="patch_embedding")(x)
    x = PositionEmbedding(keras.initializers.RandomNormal(stddev=0.02), name="position_embedding")(x)
    for block in range(1, depth + 1):
        name = f"block{block}"
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm1")(x)
        y = layers.MultiHeadAttention(heads, dim // heads, dropout=dropout, name=f"{name}_attention")(y, y)
        y = layers.Dropout(dropout, name=f"{name}_dropout1")(y)
        x = layers.Add(name=f"{name}_add1")([x, y])
        y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_norm2")(x)
        y = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_ffn1")(y)
        y = layers.Dense(dim, name=f"{name}_ffn2")(y)
        y = layers.Dropout(dropout, name=f"{name}_dropout2")(y)
        x = layers.Add(name=f"{name}_add2")([x, y])
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="mnist1d_transformer")


@gin.configurable("model", denylist=["input_shape", "num_classes"])
def build(input_shape: Sequence[int], num_classes: int, name: str = "mnist1d_cnn", **options) -> keras.Model:
    """Builds model ``name`` for inputs of ``input_shape``; ``options`` go to its builder
    (e.g. ``model.width = 64``)."""
    return MODELS.get(name)(tuple(input_shape), num_classes, **options)
