"""Sparse training with plain ``model.fit`` on every kind of Keras model ``wrap`` supports.

Each kind is wrapped in place, compiled with ``ks.SparseOptimizer(Adam, RigL(sparsity=0.8,
update_frequency=2), total_steps=4)`` and fitted 4 steps (batch 8) on tiny random data: RigL
updates the masks at steps 0 and 2 (its schedule ends at 75% of training) and keeps every masked
weight at its ERK target count; plain steps keep the masks; weights are exactly zero wherever
masks are off; ``ks.load_model`` brings the masks back. Models are tiny: the file runs in well
under a minute on two CPU cores.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_sparse as ks

L = keras.layers
STEPS = 4
BATCH = 8
N = STEPS * BATCH
VOCABULARY = 20
LENGTH = 6


# ------------------------------------------------- the keras.io text transformer
@keras.saving.register_keras_serializable(package="tests_model_kinds")
class TransformerBlock(L.Layer):
    """keras.io "Text classification with Transformer": attention and a Dense FFN, each with a
    residual connection, dropout and LayerNorm."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim, self.rate = embed_dim, num_heads, ff_dim, rate
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim, name="att")
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu", name="ffn_1"),
                                     L.Dense(embed_dim, name="ffn_2")], name="ffn")
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6, name="layernorm1")
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6, name="layernorm2")
        self.dropout1 = L.Dropout(rate, name="dropout1")
        self.dropout2 = L.Dropout(rate, name="dropout2")

    def call(self, inputs, training=False):
        attn_output = self.dropout1(self.att(inputs, inputs), training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.dropout2(self.ffn(out1), training=training)
        return self.layernorm2(out1 + ffn_output)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "rate": self.rate}


@keras.saving.register_keras_serializable(package="tests_model_kinds")
class TokenAndPositionEmbedding(L.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim, name="token_emb")
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim, name="pos_emb")

    def call(self, x):
        positions = self.pos_emb(keras.ops.arange(0, keras.ops.shape(x)[-1], 1))
        return self.token_emb(x) + positions

    def get_config(self):
        return {**super().get_config(), "maxlen": self.maxlen, "vocab_size": self.vocab_size,
                "embed_dim": self.embed_dim}


def transformer() -> keras.Model:
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = TokenAndPositionEmbedding(LENGTH, VOCABULARY, 8, name="embedding")(inputs)
    x = TransformerBlock(8, 2, 16, name="transformer_block")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    x = L.Dropout(0.1, name="dropout")(x)
    x = L.Dense(20, activation="relu", name="dense")(x)
    x = L.Dropout(0.1, name="dropout_2")(x)
    return keras.Model(inputs, L.Dense(2, activation="softmax", name="classifier")(x), name="transformer")


# ---------------------------------------------------------------- other kinds
def mlp() -> keras.Model:
    return keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="hidden"),
                             L.Dense(3, name="logits")], name="mlp")


def convnet() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv2D(2, activation="relu", name="depthwise")(x)
    x = L.SeparableConv2D(6, 2, strides=2, activation="relu", name="separable")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="convnet")


def bilstm() -> keras.Model:
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = L.Embedding(VOCABULARY, 8, name="embedding")(inputs)
    x = L.Bidirectional(L.LSTM(6, name="lstm"), name="bidirectional")(x)
    return keras.Model(inputs, L.Dense(2, name="logits")(x), name="bilstm")


def gru() -> keras.Model:
    inputs = keras.Input((LENGTH, 3))
    x = L.GRU(8, name="gru")(inputs)
    return keras.Model(inputs, L.Dense(2, name="logits")(x), name="gru_model")


def simple_rnn_time_distributed() -> keras.Model:
    """Sequence labelling: a label per time step."""
    return keras.Sequential([keras.Input((LENGTH, 3)), L.SimpleRNN(8, return_sequences=True, name="rnn"),
                             L.TimeDistributed(L.Dense(4, name="tagger"), name="time_distributed")], name="tagger")


@keras.saving.register_keras_serializable(package="tests_model_kinds")
class SubclassedClassifier(keras.Model):
    def __init__(self, units: int = 12, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = L.Dense(units, activation="relu", name="hidden")
        self.norm = L.LayerNormalization(name="norm")
        self.logits = L.Dense(3, name="logits")

    def call(self, x):
        return self.logits(self.norm(self.hidden(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def subclassed() -> keras.Model:
    model = SubclassedClassifier(name="subclassed")
    model(np.zeros((1, 8), "float32"))
    return model


def bert_classifier() -> keras.Model:
    """A functional model around a tiny keras-hub BertBackbone: pooled output -> Dense(2)."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(vocabulary_size=VOCABULARY, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=LENGTH)
    inputs = {name: keras.Input((LENGTH,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    outputs = L.Dense(2, name="head")(backbone(inputs)["pooled_output"])
    return keras.Model(inputs, outputs, name="bert_classifier")


def gpt2() -> keras.Model:
    """A tiny keras-hub GPT2Backbone (a Functional subclass), trained as it is on its sequence output."""
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.GPT2Backbone(vocabulary_size=VOCABULARY, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=LENGTH)


# ------------------------------------------------------------------- data
def tokens(rng) -> np.ndarray:
    return rng.integers(0, VOCABULARY, (N, LENGTH)).astype("int32")


def classes(rng, n_classes, shape=()) -> np.ndarray:
    return rng.integers(0, n_classes, (N, *shape)).astype("int32")


SCCE = "sparse_categorical_crossentropy"
SCCE_LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# kind -> (builder, data(rng) -> (x, y), loss, masked-weight keys (sorted))
KINDS = {
    "mlp": (mlp, lambda rng: (rng.normal(size=(N, 8)).astype("float32"), classes(rng, 3)), SCCE_LOGITS,
            ["hidden/kernel", "logits/kernel"]),
    "convnet": (convnet, lambda rng: (rng.normal(size=(N, 8, 8, 1)).astype("float32"), classes(rng, 3)), SCCE_LOGITS,
                ["conv/kernel", "depthwise/kernel", "logits/kernel", "separable/depthwise_kernel",
                 "separable/pointwise_kernel"]),
    "transformer": (transformer, lambda rng: (tokens(rng), classes(rng, 2)), SCCE,
                    ["classifier/kernel", "dense/kernel"]
                    + [f"transformer_block/att/{n}/kernel" for n in ("attention_output", "key", "query", "value")]
                    + ["transformer_block/ffn/ffn_1/kernel", "transformer_block/ffn/ffn_2/kernel"]),
    "bilstm": (bilstm, lambda rng: (tokens(rng), classes(rng, 2)), SCCE_LOGITS,
               sorted(f"bidirectional/{d}_lstm/lstm_cell/{k}" for d in ("forward", "backward")
                      for k in ("kernel", "recurrent_kernel")) + ["logits/kernel"]),
    "gru": (gru, lambda rng: (rng.normal(size=(N, LENGTH, 3)).astype("float32"), classes(rng, 2)), SCCE_LOGITS,
            ["gru/gru_cell/kernel", "gru/gru_cell/recurrent_kernel", "logits/kernel"]),
    "simple_rnn_time_distributed": (
        simple_rnn_time_distributed,
        lambda rng: (rng.normal(size=(N, LENGTH, 3)).astype("float32"), classes(rng, 4, (LENGTH,))), SCCE_LOGITS,
        ["rnn/simple_rnn_cell/kernel", "rnn/simple_rnn_cell/recurrent_kernel",
         "time_distributed/tagger/kernel"]),
    "subclassed": (subclassed, lambda rng: (rng.normal(size=(N, 8)).astype("float32"), classes(rng, 3)), SCCE_LOGITS,
                   ["hidden/kernel", "logits/kernel"]),
    "bert": (bert_classifier, lambda rng: ({"token_ids": tokens(rng), "segment_ids": np.zeros((N, LENGTH), "int32"),
                                            "padding_mask": np.ones((N, LENGTH), "int32")}, classes(rng, 2)),
             SCCE_LOGITS,
             sorted([f"transformer_layer_0/self_attention_layer/{n}/kernel"
                     for n in ("query", "key", "value", "attention_output")]
                    + ["transformer_layer_0/feedforward_intermediate_dense/kernel",
                       "transformer_layer_0/feedforward_output_dense/kernel", "pooled_dense/kernel", "head/kernel"])),
    "gpt2": (gpt2, lambda rng: ({"token_ids": tokens(rng), "padding_mask": np.ones((N, LENGTH), "int32")},
                                rng.normal(size=(N, LENGTH, 8)).astype("float32")), "mse",
             sorted([f"transformer_layer_0/self_attention/{n}/kernel"
                     for n in ("query", "key", "value", "attention_output")]
                    + ["transformer_layer_0/feedforward_intermediate_dense/kernel",
                       "transformer_layer_0/feedforward_output_dense/kernel"])),
}



class MaskRecorder(keras.callbacks.Callback):
    """The masks after every training step."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.wrapped = model
        self.masks: list[dict[str, np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append(ks.get_masks(self.wrapped))


class Run:
    def __init__(self, kind: str):
        build, data, loss, self.expected_keys = KINDS[kind]
        keras.utils.set_random_seed(0)
        self.model = build()
        self.x, self.y = data(np.random.default_rng(0))
        assert ks.wrap(self.model, quiet=True) is self.model
        self.algorithm = ks.algorithms.RigL(sparsity=0.8, update_frequency=2)
        self.model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.Adam(1e-2), self.algorithm,
                                                        total_steps=STEPS), loss=loss)
        self.recorder = MaskRecorder(self.model)
        self.history = self.model.fit(self.x, self.y, batch_size=BATCH, epochs=1, verbose=0,
                                      callbacks=[self.recorder]).history


@pytest.fixture(scope="module")
def runs():
    cache: dict[str, Run] = {}

    def get(kind: str) -> Run:
        if kind not in cache:
            cache[kind] = Run(kind)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", list(KINDS))
def test_fit_keeps_each_weight_at_its_target_count(kind, runs):
    run = runs(kind)
    weights = ks.masked_weights(run.model)
    assert sorted(w.key for w in weights) == run.expected_keys
    assert np.isfinite(run.history["loss"]).all()
    assert int(run.model.optimizer.iterations.numpy()) == STEPS
    assert sorted(run.algorithm.targets) == run.expected_keys
    assert len(run.recorder.masks) == STEPS
    targets = {w.key: run.algorithm.target_active(w.key) for w in weights}
    assert all(0 < t <= int(np.prod(w.variable.shape)) for w, t in zip(weights, targets.values()))
    assert sum(targets.values()) < sum(int(np.prod(w.variable.shape)) for w in weights)  # sparse overall
    for step, masks in enumerate(run.recorder.masks):  # after every step, updates included
        assert {k: int(m.sum()) for k, m in masks.items()} == targets, step
    # RigL's updates are at steps 0 and 2 only: the plain steps 1 and 3 leave the masks alone.
    for plain in (1, 3):
        for key, mask in run.recorder.masks[plain].items():
            np.testing.assert_array_equal(mask, run.recorder.masks[plain - 1][key], err_msg=f"{key} at step {plain}")
    # The update at step 2 moved some weights (drop fraction 0.3 x (1 + cos(2pi/3)) / 2 = 0.075 of the active).
    assert sum(int(np.count_nonzero(run.recorder.masks[2][k] != m)) for k, m in run.recorder.masks[1].items()) > 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_are_exactly_zero_where_masks_are_off(kind, runs):
    run = runs(kind)
    for w in ks.masked_weights(run.model):
        value, mask = w.variable.numpy(), w.mask.numpy()
        assert np.all(value[~mask] == 0.0), w.key
        assert np.count_nonzero(value) <= np.count_nonzero(mask), w.key


# The keras.io layers create their sublayers in __init__ and have no build(): Keras warns when loading them.
@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer:UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_ks_load_model_round_trip_keeps_masks(kind, runs, tmp_path):
    run = runs(kind)
    path = str(tmp_path / "m.keras")
    run.model.save(path)
    loaded = ks.load_model(path, compile=False)
    position = {id(v): i for i, v in enumerate(run.model.weights)}
    loaded_position = {id(v): i for i, v in enumerate(loaded.weights)}
    saved = {position[id(w.variable)]: w.mask.numpy() for w in ks.masked_weights(run.model)}
    restored = {loaded_position[id(w.variable)]: w.mask.numpy() for w in ks.masked_weights(loaded)}
    assert sorted(restored) == sorted(saved)
    for i, mask in saved.items():
        np.testing.assert_array_equal(restored[i], mask, err_msg=run.model.weights[i].path)
        np.testing.assert_array_equal(loaded.weights[i].numpy(), run.model.weights[i].numpy())
    x = keras.tree.map_structure(lambda a: a[:BATCH], run.x)
    for a, b in zip(keras.tree.flatten(run.model(x, training=False)), keras.tree.flatten(loaded(x, training=False))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["transformer", "bilstm"])
def test_trainer_runs_the_same_kinds(kind):
    """ks.Trainer (the binaries' loop) on the same models: exact counts, exact zeros, and a FLOPs
    count read off the layers' build shapes."""
    build, data, loss, _ = KINDS[kind]
    keras.utils.set_random_seed(0)
    model = ks.wrap(build(), quiet=True)
    x, y = data(np.random.default_rng(0))
    algorithm = ks.algorithms.RigL(sparsity=0.8, update_frequency=2)
    trainer = ks.Trainer(model, algorithm, keras.optimizers.Adam(1e-2), loss, progress=False, jit_compile=False)
    trainer.fit((x, y), epochs=1, batch_size=BATCH)
    assert trainer.step == STEPS and trainer.cost.dense_gradient_steps == 2  # RigL's updates at steps 0 and 2
    for w in ks.masked_weights(model):
        assert int(w.mask.numpy().sum()) == algorithm.target_active(w.key), w.key
        assert np.all(w.variable.numpy()[~w.mask.numpy()] == 0), w.key
    assert 0.0 < trainer.summary()["training_flops_relative_to_dense"] < 1.0
