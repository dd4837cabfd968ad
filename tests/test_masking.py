"""wrap (in place) / selection / get_masks / set_masks / sparsity / sparsity_report."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import masking
from keras_sparse.errors import ConfigError

L = keras.layers


# ------------------------------------------------------------------ models
def build_mlp(seed: int = 0, name: str = "mlp") -> keras.Model:
    """Sequential 8 -> hidden_0 (16) -> hidden_1 (12) -> logits (4): kernels 128 + 192 + 48 = 368,
    biases 32, 400 parameters. A Sequential's variable paths start with its name."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), L.Dense(16, activation="tanh", name="hidden_0"),
                             L.Dense(12, activation="tanh", name="hidden_1"), L.Dense(4, name="logits")], name=name)


MLP_KEYS = ["hidden_0/kernel", "hidden_1/kernel", "logits/kernel"]


def build_functional(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(5, activation="relu", name="fc")(x)
    x = L.Dropout(0.5, seed=1, name="drop")(x)
    outputs = L.Dense(2, name="out")(x)
    return keras.Model(inputs, outputs, name="func")


def build_nested(seed: int = 0, inner_layers=None) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inner_layers = inner_layers or [L.Dense(6, activation="tanh", name="inner_fc"),
                                    L.LayerNormalization(name="inner_ln")]
    inner = keras.Sequential([keras.Input((4,)), *inner_layers], name="inner")
    inputs = keras.Input((4,))
    x = L.Dense(4, name="pre")(inputs)
    x = inner(x)
    outputs = L.Dense(3, name="post")(x)
    return keras.Model(inputs, outputs, name="outer")


class Block(L.Layer):
    """A custom layer holding a MultiHeadAttention ``mha`` (2 heads of 4) and a Dense ``ffn``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mha = L.MultiHeadAttention(2, 4, name="mha")
        self.ffn = L.Dense(8, name="ffn")

    def call(self, x):
        return self.ffn(x + self.mha(x, x))


def build_deep(seed: int = 0) -> keras.Model:
    """Functional: (5, 8) -> Block "block" -> Dense "head" (2)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5, 8))
    return keras.Model(inputs, L.Dense(2, name="head")(Block(name="block")(inputs)), name="deep")


MHA_KERNELS = {f"block/mha/{n}/kernel" for n in ("query", "key", "value", "attention_output")}
DEEP_KEYS = MHA_KERNELS | {"block/ffn/kernel", "head/kernel"}


def build_embedding_model(seed: int = 0, vocabulary: int = 1000) -> keras.Model:
    """Embedding 1000 x 8 (8,000 parameters) then Dense 8 -> 2 (16 + 2): mostly an embedding table."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(vocabulary, 8, name="emb"),
                             L.GlobalAveragePooling1D(name="pool"), L.Dense(2, name="head")], name="embm")


def one_layer(make_layer, input_shape, name="m") -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(input_shape), make_layer()], name=name)


def x_for(shape, n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def keys(model) -> list[str]:
    return [w.key for w in ks.masked_weights(model)]


def every_other(model) -> dict[str, np.ndarray]:
    return {key: np.arange(m.size).reshape(m.shape) % 2 == 0 for key, m in ks.get_masks(model).items()}


# ------------------------------------------------------------------- wrap
def test_wrap_masks_in_place_and_returns_the_same_model():
    model = build_mlp()
    x = x_for((8,))
    before = model(x).numpy()
    variables, layers = list(model.weights), list(model.layers)
    assert ks.wrap(model) is model
    assert keys(model) == MLP_KEYS
    # No layer replaced, no variable added to the model: the masks live in a MaskState attribute.
    assert list(model.layers) == layers
    assert [id(v) for v in model.weights] == [id(v) for v in variables]
    assert not any(v.dtype == "bool" for v in model.weights)
    state = masking.mask_state(model)
    assert isinstance(state, masking.MaskState) and getattr(model, masking.STATE_ATTRIBUTE) is state
    assert state not in model.layers
    for w in ks.masked_weights(model):
        assert w.mask.dtype == "bool" and tuple(w.mask.shape) == tuple(w.variable.shape)
        assert w.mask.numpy().all()
    assert ks.sparsity(model) == 0.0
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_masked_weight_fields():
    model = ks.wrap(build_mlp())
    first = ks.masked_weights(model)[0]
    layer = model.get_layer("hidden_0")
    assert first.key == "hidden_0/kernel" and first.name == "kernel"
    assert first.layer is layer
    assert first.variable is layer.kernel and first.kernel is layer.kernel  # .kernel: alias of .variable
    assert ks.masked_kernels is ks.masked_weights
    assert masking.mask_of(layer.kernel) is first and masking.mask_of(layer.bias) is None


def test_wrap_functional_leaves_biases_and_batchnorm_dense():
    model = build_functional()
    x = x_for((6, 6, 2))
    before = model(x, training=False).numpy()
    ks.wrap(model)
    assert keys(model) == ["conv/kernel", "fc/kernel", "out/kernel"]
    masked = {id(w.variable) for w in ks.masked_weights(model)}
    unmasked = sorted(v.path for v in model.weights if id(v) not in masked)
    assert unmasked == sorted(["conv/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance",
                               "fc/bias", "out/bias"])
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Conv2D", "BatchNormalization", "Flatten", "Dense", "Dropout", "Dense"]
    np.testing.assert_array_equal(model(x, training=False).numpy(), before)


def test_wrap_nested_model():
    model = build_nested()
    x = x_for((4,))
    before = model(x).numpy()
    ks.wrap(model)
    assert keys(model) == ["pre/kernel", "inner/inner_fc/kernel", "post/kernel"]
    assert ks.masked_weights(model)[1].layer is model.get_layer("inner").get_layer("inner_fc")
    assert masking.mask_state(model.get_layer("inner")) is None  # one MaskState, on the model wrapped
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_wrap_nested_model_with_nothing_to_mask_inside():
    model = ks.wrap(build_nested(inner_layers=[L.BatchNormalization(name="inner_bn")]))
    assert keys(model) == ["pre/kernel", "post/kernel"]


def test_wrap_nested_model_whose_only_dense_is_excluded():
    assert keys(ks.wrap(build_nested(), exclude=["inner_fc"])) == ["pre/kernel", "post/kernel"]


@keras.saving.register_keras_serializable(package="tests_masking")
class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = L.Dense(5, activation="tanh", name="fc")
        self.norm = L.LayerNormalization(name="norm")
        self.out = L.Dense(2, name="out")

    def call(self, x):
        return self.out(self.norm(self.fc(x)))


def test_wrap_subclassed_model():
    keras.utils.set_random_seed(0)
    model = Subclassed(name="sub")
    x = x_for((3,))
    before = model(x).numpy()
    assert ks.wrap(model) is model
    assert keys(model) == ["fc/kernel", "out/kernel"]
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_wrap_is_idempotent():
    model = ks.wrap(build_mlp())
    state = masking.mask_state(model)
    masks = every_other(model)
    ks.set_masks(model, masks)
    assert ks.wrap(model) is model
    assert ks.wrap(model, exclude="logits", embeddings=True) is model  # a second wrap changes nothing
    assert masking.mask_state(model) is state
    assert keys(model) == MLP_KEYS
    for key, value in ks.get_masks(model).items():
        np.testing.assert_array_equal(value, masks[key])


# --------------------------------------------------------- per layer type
@pytest.mark.parametrize("make_layer, input_shape, expected", [
    (lambda: L.Dense(4, name="l"), (6,), ["l/kernel"]),
    (lambda: L.Dense(4, name="l"), (5, 6), ["l/kernel"]),
    (lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 4), bias_axes="d", name="l"), (5, 6), ["l/kernel"]),
    (lambda: L.Conv1D(3, 2, name="l"), (8, 2), ["l/kernel"]),
    (lambda: L.Conv2D(3, 2, name="l"), (6, 6, 2), ["l/kernel"]),
    (lambda: L.Conv3D(3, 2, name="l"), (4, 4, 4, 2), ["l/kernel"]),
    (lambda: L.DepthwiseConv1D(2, name="l"), (8, 2), ["l/kernel"]),
    (lambda: L.DepthwiseConv2D(2, name="l"), (6, 6, 2), ["l/kernel"]),
    (lambda: L.SeparableConv1D(3, 2, name="l"), (8, 2), ["l/depthwise_kernel", "l/pointwise_kernel"]),
    (lambda: L.SeparableConv2D(3, 2, name="l"), (6, 6, 2), ["l/depthwise_kernel", "l/pointwise_kernel"]),
    (lambda: L.Conv1DTranspose(3, 2, name="l"), (4, 2), ["l/kernel"]),
    (lambda: L.Conv2DTranspose(3, 2, name="l"), (4, 4, 2), ["l/kernel"]),
    (lambda: L.Conv3DTranspose(3, 2, name="l"), (3, 3, 3, 2), ["l/kernel"]),
    (lambda: L.SimpleRNN(4, name="l"), (7, 3), ["l/simple_rnn_cell/kernel", "l/simple_rnn_cell/recurrent_kernel"]),
    (lambda: L.GRU(4, name="l"), (7, 3), ["l/gru_cell/kernel", "l/gru_cell/recurrent_kernel"]),
    (lambda: L.LSTM(4, name="l"), (7, 3), ["l/lstm_cell/kernel", "l/lstm_cell/recurrent_kernel"]),
    (lambda: L.Bidirectional(L.LSTM(4, name="lstm"), name="l"), (7, 3),
     ["l/forward_lstm/lstm_cell/kernel", "l/forward_lstm/lstm_cell/recurrent_kernel",
      "l/backward_lstm/lstm_cell/kernel", "l/backward_lstm/lstm_cell/recurrent_kernel"]),
    (lambda: L.Bidirectional(L.GRU(4, return_sequences=True, name="gru"), name="l"), (7, 3),
     ["l/forward_gru/gru_cell/kernel", "l/forward_gru/gru_cell/recurrent_kernel",
      "l/backward_gru/gru_cell/kernel", "l/backward_gru/gru_cell/recurrent_kernel"]),
    (lambda: L.TimeDistributed(L.Dense(4, name="d"), name="l"), (7, 3), ["l/d/kernel"]),
    (lambda: L.TimeDistributed(L.Conv2D(2, 2, name="c"), name="l"), (3, 4, 4, 1), ["l/c/kernel"]),
    (lambda: L.TimeDistributed(L.SimpleRNN(2, name="r"), name="l"), (3, 4, 2),
     ["l/r/simple_rnn_cell/kernel", "l/r/simple_rnn_cell/recurrent_kernel"]),
])
def test_masked_weights_per_layer_type(make_layer, input_shape, expected):
    model = ks.wrap(one_layer(make_layer, input_shape), quiet=True)
    weights = ks.masked_weights(model)
    assert sorted(w.key for w in weights) == sorted(expected)
    for w in weights:
        assert getattr(w.layer, w.name) is w.variable  # the owning layer (an RNN's cell) holds the variable
        assert w.name in masking.MASKED_BY_DEFAULT[next(c for c in masking.MASKED_BY_DEFAULT if isinstance(w.layer, c))]
    # Biases (every weight of under two dimensions) are never masked.
    masked = {id(w.variable) for w in weights}
    assert all(len(v.shape) >= 2 for v in model.weights if id(v) in masked)
    assert all(id(v) not in masked for v in model.weights if v.path.endswith("bias"))


@pytest.mark.parametrize("make_rnn, cell", [(lambda: L.LSTM(4, name="r"), L.LSTMCell),
                                            (lambda: L.GRU(4, name="r"), L.GRUCell),
                                            (lambda: L.SimpleRNN(4, name="r"), L.SimpleRNNCell)])
def test_rnn_cells_kernel_and_recurrent_kernel_are_masked(make_rnn, cell):
    model = ks.wrap(one_layer(make_rnn, (7, 3)), quiet=True)
    rnn = model.get_layer("r")
    by_name = {w.name: w for w in ks.masked_weights(model)}
    assert sorted(by_name) == ["kernel", "recurrent_kernel"]
    assert all(isinstance(w.layer, cell) and w.layer is rnn.cell for w in by_name.values())
    assert by_name["kernel"].variable is rnn.cell.kernel
    assert by_name["recurrent_kernel"].variable is rnn.cell.recurrent_kernel
    # Set masks reach the forward pass: all masks off gives the output of a zero kernel.
    x = x_for((7, 3))
    ks.set_masks(model, {w.key: np.zeros(w.mask.shape, bool) for w in by_name.values()})
    assert np.all(rnn.cell.kernel.numpy() == 0.0) and np.all(rnn.cell.recurrent_kernel.numpy() == 0.0)
    biased = model(x).numpy()
    np.testing.assert_allclose(biased, np.broadcast_to(biased[0], biased.shape), rtol=0, atol=1e-6)


def test_bidirectional_and_time_distributed_in_one_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)),
                              L.Bidirectional(L.LSTM(4, return_sequences=True, name="lstm"), name="bi"),
                              L.TimeDistributed(L.Dense(2, name="td_dense"), name="td"),
                              L.SimpleRNN(2, name="srnn")], name="rnns")
    ks.wrap(model)
    assert sorted(keys(model)) == sorted([
        "bi/forward_lstm/lstm_cell/kernel", "bi/forward_lstm/lstm_cell/recurrent_kernel",
        "bi/backward_lstm/lstm_cell/kernel", "bi/backward_lstm/lstm_cell/recurrent_kernel",
        "td/td_dense/kernel", "srnn/simple_rnn_cell/kernel", "srnn/simple_rnn_cell/recurrent_kernel"])
    bi = model.get_layer("bi")
    by_key = {w.key: w for w in ks.masked_weights(model)}
    assert by_key["bi/forward_lstm/lstm_cell/kernel"].variable is bi.forward_layer.cell.kernel
    assert by_key["bi/backward_lstm/lstm_cell/recurrent_kernel"].variable is bi.backward_layer.cell.recurrent_kernel
    assert by_key["td/td_dense/kernel"].variable is model.get_layer("td").layer.kernel


def test_masked_weights_come_in_model_weight_order():
    model = ks.wrap(build_deep())
    masked = {id(w.variable) for w in ks.masked_weights(model)}
    assert keys(model) == [v.path for v in model.weights if id(v) in masked]


# --------------------------------------------------------------- embeddings
def test_embeddings_are_not_masked_by_default():
    model = ks.wrap(build_embedding_model(), quiet=True)
    assert keys(model) == ["head/kernel"]


def test_embeddings_true_masks_embedding_tables():
    model = ks.wrap(build_embedding_model(), embeddings=True)
    assert keys(model) == ["emb/embeddings", "head/kernel"]
    assert ks.masked_weights(model)[0].variable is model.get_layer("emb").embeddings


def test_embeddings_selected_by_include():
    model = ks.wrap(build_embedding_model(), include=["emb"], quiet=True)
    assert keys(model) == ["emb/embeddings"]


def test_keras_hub_bert_embeddings_off_and_on():
    keras_hub = pytest.importorskip("keras_hub")

    def bert():
        keras.utils.set_random_seed(0)
        return keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=10)

    block = "transformer_layer_0"
    default = {f"{block}/self_attention_layer/{n}/kernel" for n in ("query", "key", "value", "attention_output")}
    default |= {f"{block}/feedforward_intermediate_dense/kernel", f"{block}/feedforward_output_dense/kernel",
                "pooled_dense/kernel"}
    assert set(keys(ks.wrap(bert(), quiet=True))) == default
    tables = {"token_embedding/embeddings", "position_embedding/embeddings", "segment_embedding/embeddings"}
    assert set(keys(ks.wrap(bert(), embeddings=True, quiet=True))) == default | tables


# ---------------------------------------------------------------- selection
@pytest.mark.parametrize("exclude", [["hidden_0", "logits"], ("hidden_0", "logits"),
                                     lambda layer: layer.name != "hidden_1",
                                     lambda layer, variable: "hidden_1" not in variable.path,
                                     ["hidden_0", "logits/kernel"], ["*/h*_0/*", "logits"],
                                     ["*hidden_0*", "*logits*"]])
def test_wrap_exclude(exclude):
    model = ks.wrap(build_mlp(), exclude=exclude)
    assert keys(model) == ["hidden_1/kernel"]
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Dense", "Dense"]  # none replaced


def test_wrap_exclude_single_name():
    assert keys(ks.wrap(build_mlp(), exclude="logits")) == ["hidden_0/kernel", "hidden_1/kernel"]


def test_default_selection_at_depth():
    model = ks.wrap(build_deep())
    assert set(keys(model)) == DEEP_KEYS
    mha = model.get_layer("block").mha
    by_key = {w.key: w for w in ks.masked_weights(model)}
    assert by_key["block/mha/query/kernel"].layer is mha.query_dense
    assert by_key["block/mha/query/kernel"].variable is mha.query_dense.kernel
    assert by_key["block/ffn/kernel"].layer is model.get_layer("block").ffn


@pytest.mark.parametrize("include, expected", [
    ("block/mha/query/kernel", {"block/mha/query/kernel"}),  # a variable path
    ("/block/ffn/kernel/", {"block/ffn/kernel"}),  # slashes around it are ignored
    ("block/ffn", {"block/ffn/kernel"}),  # a layer path (the ffn's bias has one dimension)
    ("ffn", {"block/ffn/kernel"}),  # a layer name in the path
    ("*/query/kernel", {"block/mha/query/kernel"}),  # a glob
    ("*/kernel", DEEP_KEYS),
    (["head", "block/mha/key/kernel"], {"head/kernel", "block/mha/key/kernel"}),
    (lambda layer: isinstance(layer, L.Dense), {"block/ffn/kernel", "head/kernel"}),  # a 1-argument predicate
    (lambda layer, variable: isinstance(layer, L.EinsumDense) and variable.path.endswith("/kernel"), MHA_KERNELS),
])
def test_include_at_depth(include, expected):
    assert set(keys(ks.wrap(build_deep(), include=include, quiet=True))) == expected


@pytest.mark.parametrize("exclude, expected", [
    ("block", {"head/kernel"}),  # a layer path: everything under it
    ("mha", {"block/ffn/kernel", "head/kernel"}),  # a layer name at depth
    ("block/mha/value/kernel", DEEP_KEYS - {"block/mha/value/kernel"}),
    ("*/mha/[qk]*", DEEP_KEYS - {"block/mha/query/kernel", "block/mha/key/kernel"}),
    (lambda layer, variable: layer.name == "query" or variable.path.startswith("head/"),
     DEEP_KEYS - {"block/mha/query/kernel", "head/kernel"}),
])
def test_exclude_at_depth(exclude, expected):
    assert set(keys(ks.wrap(build_deep(), exclude=exclude, quiet=True))) == expected


def test_include_and_exclude_together():
    model = ks.wrap(build_deep(), include="*/kernel", exclude="mha", quiet=True)
    assert set(keys(model)) == {"block/ffn/kernel", "head/kernel"}


def test_include_selects_weights_outside_the_defaults():
    """include= reaches any trainable weight of two or more dimensions (a custom layer's too)."""

    class Scale(L.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")
            self.s = self.add_weight(shape=(3,), name="s")

        def call(self, x):
            return keras.ops.matmul(x, self.w) * self.s

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        return keras.Model(inputs, L.Dense(2, name="head")(Scale(name="scale")(inputs)))

    assert keys(ks.wrap(build())) == ["head/kernel"]  # not a default
    assert keys(ks.wrap(build(), include="scale/w")) == ["scale/w"]
    assert keys(ks.wrap(build(), include=lambda layer, variable: variable.path == "scale/w")) == ["scale/w"]
    with pytest.raises(ConfigError, match=r"include=\['scale/s'\] matches no weight"):  # 1-D: never a candidate
        ks.wrap(build(), include="scale/s")


def test_include_by_layer_name_masks_kernels_not_biases():
    assert set(keys(ks.wrap(build_deep(), include="mha", quiet=True))) == MHA_KERNELS


@pytest.mark.parametrize("pattern, key, expected", [
    ("enc/block1/att/query/kernel", "enc/block1/att/query/kernel", True),
    ("enc/block1", "enc/block1/att/query/kernel", True),
    ("enc/block", "enc/block1/att/query/kernel", False),  # a prefix must end at a "/"
    ("att", "enc/block1/att/query/kernel", True),
    ("kernel", "enc/block1/att/query/kernel", False),  # the weight's own name is not a layer name
    ("block1/att", "enc/block1/att/query/kernel", False),  # a layer path starts at the top
    ("*/att/*", "enc/block1/att/query/kernel", True),
    ("*/Att/*", "enc/block1/att/query/kernel", False),  # case-sensitive
    ("enc/*/kernel", "enc/block1/att/query/kernel", True),
])
def test_matches(pattern, key, expected):
    assert masking.matches(pattern, key) is expected


@pytest.mark.parametrize("argument", ["include", "exclude"])
def test_selector_that_matches_nothing_raises(argument):
    with pytest.raises(ConfigError, match=rf"^{argument}=\['nope'\] matches no weight of the model: use layer names, "
                                          r"layer paths or variable paths such as \['hidden_0/kernel'"):
        ks.wrap(build_mlp(), **{argument: ["logits", "nope"]})
    with pytest.raises(ValueError, match="matches no weight"):  # ConfigError is a ValueError
        ks.wrap(build_mlp(), **{argument: "hidden_00"})


def test_failed_wrap_leaves_the_model_unwrapped():
    model = build_mlp()
    with pytest.raises(ConfigError):
        ks.wrap(model, exclude="nope")
    assert masking.mask_state(model) is None
    assert keys(ks.wrap(model, exclude="logits")) == ["hidden_0/kernel", "hidden_1/kernel"]


# -------------------------------------------------------------------- errors
def assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value)


def test_wrap_rejects_an_unbuilt_model():
    with pytest.raises(ConfigError, match=r"^Model 'unbuilt' is not built: give it an Input, call it on a batch or "
                                          r"call model.build\(shape\) before wrap\(\)\.$") as error:
        ks.wrap(keras.Sequential([L.Dense(3)], name="unbuilt"))
    assert_one_line(error)
    with pytest.raises(ConfigError, match="is not built"):
        ks.wrap(Subclassed(name="sub"))


def test_wrap_rejects_a_tf_keras_model():
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(2,))], name="old")
    with pytest.raises(ConfigError, match=r"^Sequential 'old' is a tf_keras \(Keras 2\) model: keras-sparse works on "
                                          r"Keras 3 models") as error:
        ks.wrap(model)
    assert_one_line(error)


def test_wrap_rejects_what_is_not_a_model():
    with pytest.raises(ConfigError, match=r"^wrap\(\) needs a Keras 3 model, got str\.$"):
        ks.wrap("mlp")


@pytest.mark.parametrize("model, options", [
    (lambda: keras.Sequential([keras.Input((4,)), L.BatchNormalization(), L.Activation("relu")], name="nothing"), {}),
    (lambda: build_mlp(name="nothing"), {"exclude": lambda layer: True}),
    (lambda: build_mlp(name="nothing"), {"exclude": "*"}),
    (lambda: keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(10, 4)], name="nothing"), {}),
])
def test_wrap_rejects_a_model_with_nothing_to_mask(model, options):
    model = model()
    with pytest.raises(ConfigError, match=r"^Model 'nothing' has no weight to mask: it needs a Dense, EinsumDense, "
                                          r"Conv or RNN kernel that is not excluded") as error:
        ks.wrap(model, **options)
    assert_one_line(error)
    assert masking.mask_state(model) is None


def test_wrap_rejects_weights_that_share_a_path():
    class Twins(keras.Model):
        def __init__(self):
            super().__init__(name="twins")
            self.a = L.Dense(2, name="fc")
            self.b = L.Dense(2, name="fc")

        def call(self, x):
            return self.b(self.a(x))

    model = Twins()
    model(np.zeros((1, 2), "float32"))
    with pytest.raises(ConfigError, match=r"^Weights share the paths \['fc/kernel'\]: give the layers that hold "
                                          r"them unique names\.$"):
        ks.wrap(model)


def test_functions_of_an_unwrapped_model_raise():
    model = build_mlp(name="plain")
    for function in (ks.masked_weights, ks.get_masks, ks.sparsity, ks.sparsity_report, masking.dense_majority_warning):
        with pytest.raises(ConfigError, match=r"^Model 'plain' has no masks: call keras_sparse.wrap\(model\) first"):
            function(model)
    with pytest.raises(ConfigError, match="has no masks"):
        ks.set_masks(model, {})


# ---------------------------------------------------------- get/set masks
def test_get_set_masks_round_trip():
    model = ks.wrap(build_mlp())
    rng = np.random.default_rng(0)
    masks = {key: rng.random(value.shape) < 0.3 for key, value in ks.get_masks(model).items()}
    ks.set_masks(model, masks)
    got = ks.get_masks(model)
    assert list(got) == MLP_KEYS
    for key in masks:
        assert got[key].dtype == bool
        np.testing.assert_array_equal(got[key], masks[key])


def test_set_masks_zeroes_pruned_weights_only():
    model = ks.wrap(build_mlp())
    before = {w.key: w.variable.numpy().copy() for w in ks.masked_weights(model)}
    bias = model.get_layer("hidden_0").bias.numpy().copy()
    mask = np.zeros((8, 16), bool)
    mask[::2, 1::3] = True
    ks.set_masks(model, {"hidden_0/kernel": mask})
    after = {w.key: w.variable.numpy() for w in ks.masked_weights(model)}
    np.testing.assert_array_equal(after["hidden_0/kernel"][mask], before["hidden_0/kernel"][mask])
    assert np.all(before["hidden_0/kernel"] != 0.0)
    assert np.all(after["hidden_0/kernel"][~mask] == 0.0)
    assert not np.any(np.signbit(after["hidden_0/kernel"][~mask]))  # +0.0, not -0.0
    np.testing.assert_array_equal(model.get_layer("hidden_0").bias.numpy(), bias)
    # Weights not named keep their mask and values.
    np.testing.assert_array_equal(after["logits/kernel"], before["logits/kernel"])
    assert ks.get_masks(model)["logits/kernel"].all()
    # The forward pass is the plain model's with those zeros: no multiply by the mask anywhere.
    x = x_for((8,))
    expected = np.tanh(np.tanh(x @ after["hidden_0/kernel"] + bias) @ after["hidden_1/kernel"]
                       + model.get_layer("hidden_1").bias.numpy()) @ after["logits/kernel"]
    np.testing.assert_allclose(model(x).numpy(), expected + model.get_layer("logits").bias.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_set_masks_marks_the_masks_set():
    model = ks.wrap(build_mlp())
    state = masking.mask_state(model)
    assert not bool(state.initialized.numpy())
    ks.set_masks(model, {"logits/kernel": np.ones((12, 4), bool)})
    assert bool(state.initialized.numpy())


def test_set_masks_accepts_integer_arrays():
    model = ks.wrap(build_mlp())
    ks.set_masks(model, {"logits/kernel": np.eye(12, 4, dtype=np.int32)})
    np.testing.assert_array_equal(ks.get_masks(model)["logits/kernel"], np.eye(12, 4, dtype=bool))


def test_set_masks_unknown_key_raises():
    model = ks.wrap(build_mlp())
    with pytest.raises(ConfigError, match=r"^set_masks: \['hidden_9/kernel'\] are not masked weights of this model; "
                                          r"known keys: \['hidden_0/kernel', 'hidden_1/kernel', "
                                          r"'logits/kernel'\]\.$"):
        ks.set_masks(model, {"hidden_9/kernel": np.ones((8, 16), bool)})
    with pytest.raises(ConfigError, match="hidden_0/bias"):  # a weight of the model that is not masked
        ks.set_masks(model, {"hidden_0/bias": np.ones((16,), bool), "logits/kernel": np.zeros((12, 4))})
    assert all(m.all() for m in ks.get_masks(model).values())  # nothing set


def test_set_masks_wrong_shape_raises_naming_the_weight():
    model = ks.wrap(build_mlp())
    kernel = model.get_layer("hidden_1").kernel.numpy().copy()
    with pytest.raises(ConfigError, match=r"^set_masks: mask for 'hidden_1/kernel' has shape \(16, 11\) but the "
                                          r"weight has shape \(16, 12\)\.$"):
        ks.set_masks(model, {"hidden_1/kernel": np.ones((16, 11), bool)})
    with pytest.raises(ConfigError, match=r"shape \(12, 16\)"):  # the transpose is no match either
        ks.set_masks(model, {"hidden_1/kernel": np.zeros((12, 16), bool)})
    # Nothing was changed by the failed calls.
    assert all(m.all() for m in ks.get_masks(model).values())
    np.testing.assert_array_equal(model.get_layer("hidden_1").kernel.numpy(), kernel)


# ---------------------------------------------------------------- sparsity
def hand_made_masks() -> dict[str, np.ndarray]:
    m0 = np.zeros((8, 16), bool)
    m0.flat[:32] = True  # 32 active of 128
    m1 = np.ones((16, 12), bool)  # 192 of 192
    m2 = np.zeros((12, 4), bool)
    m2[0, 0] = True  # 1 of 48
    return dict(zip(MLP_KEYS, (m0, m1, m2)))


def test_sparsity_of_a_fresh_wrap_is_zero():
    assert ks.sparsity(ks.wrap(build_mlp())) == 0.0


def test_sparsity_and_report_exact():
    model = ks.wrap(build_mlp())  # kernels 128 + 192 + 48 = 368 weights; 400 parameters with the biases
    ks.set_masks(model, hand_made_masks())
    pruned = 96 + 0 + 47
    assert ks.sparsity(model) == pytest.approx(pruned / 368, abs=1e-12)
    report = ks.sparsity_report(model)
    assert list(report) == [*MLP_KEYS, "total"]
    assert report == {
        "hidden_0/kernel": {"shape": [8, 16], "size": 128, "active": 32, "sparsity": pytest.approx(0.75),
                            "type": "unstructured", "pattern_holds": True},
        "hidden_1/kernel": {"shape": [16, 12], "size": 192, "active": 192, "sparsity": 0.0,
                            "type": "unstructured", "pattern_holds": True},
        "logits/kernel": {"shape": [12, 4], "size": 48, "active": 1, "sparsity": pytest.approx(47 / 48),
                          "type": "unstructured", "pattern_holds": True},
        "total": {"masked_size": 368, "parameters": 400,
                  "masked_sparsity": pytest.approx(143 / 368),
                  "sparsity_of_all_parameters": pytest.approx(143 / 400),
                  "masked_share_of_parameters": pytest.approx(368 / 400)},
    }
    assert report["total"]["masked_sparsity"] == pytest.approx(ks.sparsity(model))


def test_sparsity_report_total_counts_unmasked_parameters():
    model = ks.wrap(build_functional())
    # conv 3x3x2x3 = 54 (+3 bias), bn 4 x 3, fc 48x5 = 240 (+5), out 5x2 = 10 (+2): 326 parameters
    masks = {"conv/kernel": np.zeros((3, 3, 2, 3), bool), "fc/kernel": np.ones((48, 5), bool),
             "out/kernel": np.eye(5, 2, dtype=bool)}
    ks.set_masks(model, masks)
    total = ks.sparsity_report(model)["total"]
    assert total == {"masked_size": 304, "parameters": 326, "masked_sparsity": pytest.approx((54 + 8) / 304),
                     "sparsity_of_all_parameters": pytest.approx((54 + 8) / 326),
                     "masked_share_of_parameters": pytest.approx(304 / 326)}


# ----------------------------------------------------- dense-majority line
def test_dense_majority_line_for_an_embedding_heavy_model(capsys):
    model = ks.wrap(build_embedding_model())
    err = capsys.readouterr().err
    line = ("keras-sparse: only 16 of 8,018 parameters (0.2%) of 'embm' are masked; the largest dense ones: "
            "emb/embeddings (8,000), head/bias (2). Select more with wrap(include=...) or embeddings=True.")
    assert err == line + "\n"
    assert masking.dense_majority_warning(model) == line


def test_dense_majority_line_not_printed_when_quiet_or_mostly_masked(capsys):
    ks.wrap(build_embedding_model(), quiet=True)
    mlp = ks.wrap(build_mlp())
    embeddings = ks.wrap(build_embedding_model(), embeddings=True)
    assert capsys.readouterr().err == ""
    assert masking.dense_majority_warning(mlp) is None
    assert masking.dense_majority_warning(embeddings) is None


def test_dense_majority_line_at_the_half():
    """Exactly half of the parameters masked is no dense majority."""
    keras.utils.set_random_seed(0)
    # Dense 3 -> 3 (9 + 3 bias) then a custom layer with a 1-D weight of 6: masked 9 of 18.
    class Offset(L.Layer):
        def build(self, input_shape):
            self.offset = self.add_weight(shape=(6,), name="offset")

        def call(self, x):
            return x + keras.ops.sum(self.offset)

    model = keras.Sequential([keras.Input((3,)), L.Dense(3, name="d"), Offset(name="o")], name="half")
    assert sum(int(np.prod(v.shape)) for v in model.weights) == 18
    assert masking.dense_majority_warning(ks.wrap(model)) is None
