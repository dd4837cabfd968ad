"""Saving and deployment of wrapped models: ``.keras`` files through ``ks.load_model`` (masks kept)
and ``keras.models.load_model`` (plain model, pruned weights exactly 0), ``save_weights`` /
``load_weights``, ``strip``, ``export_saved_model`` and TFLite conversion."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import masking
from keras_sparse.errors import ConfigError

L = keras.layers
# TF 2.21 warns that tf.lite.Interpreter moves to ai_edge_litert; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated:UserWarning")


# ------------------------------------------------------------------ models
def build_sequential(seed: int = 0) -> keras.Model:
    """Sequential MLP 8 -> 16 -> 12 -> 4."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), L.Dense(16, activation="tanh", name="hidden_0"),
                             L.Dense(12, activation="tanh", name="hidden_1"), L.Dense(4, name="logits")], name="mlp")


def build_functional(seed: int = 0) -> keras.Model:
    """Functional convnet on 6x6x1: Conv2D, BatchNorm, DepthwiseConv2D, Dense, Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = L.Conv2D(4, 3, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("tanh")(x)
    x = L.DepthwiseConv2D(2, activation="tanh", name="depthwise")(x)
    x = L.Flatten()(x)
    x = L.Dense(8, activation="tanh", name="fc")(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="convnet")


def build_separable(seed: int = 0) -> keras.Model:
    """SeparableConv2D and SeparableConv1D (two masks each), then Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((7, 7, 3))
    x = L.SeparableConv2D(4, 3, depth_multiplier=2, name="sep2d")(inputs)
    x = L.Reshape((25, 4))(x)
    x = L.SeparableConv1D(6, 3, name="sep1d")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="logits")(x), name="separable")


def build_nested(seed: int = 0) -> keras.Model:
    """A functional model whose first layer is a functional MLP, then Dense(5)."""
    keras.utils.set_random_seed(seed)
    inner_inputs = keras.Input((8,))
    inner = keras.Model(inner_inputs, L.Dense(6, activation="tanh", name="inner_fc")(inner_inputs), name="inner")
    inputs = keras.Input((8,))
    return keras.Model(inputs, L.Dense(5, name="head")(inner(inputs)), name="outer")


@keras.saving.register_keras_serializable(package="tests")
class SubclassedMLP(keras.Model):
    """A subclassed model (Dense, LayerNorm, Dense) that Keras can rebuild from its config."""

    def __init__(self, units: int = 6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc = L.Dense(units, activation="tanh", name="fc")
        self.norm = L.LayerNormalization(name="norm")
        self.out = L.Dense(3, name="out")

    def call(self, x):
        return self.out(self.norm(self.fc(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def build_subclassed(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = SubclassedMLP(name="sub")
    model(np.zeros((1, 8), "float32"))
    return model


def build_time_distributed(seed: int = 0) -> keras.Model:
    """Functional: (4 steps, 3) -> TimeDistributed(Dense 5) -> SimpleRNN(6) -> Dense(2)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 3))
    x = L.TimeDistributed(L.Dense(5, name="inner"), name="td")(inputs)
    x = L.SimpleRNN(6, name="rnn")(x)
    return keras.Model(inputs, L.Dense(2, name="head")(x), name="tdm")


def build_bert(seed: int = 0) -> keras.Model:
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=10)


def bert_inputs(n: int, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    padding = np.ones((n, 10), "int32")
    padding[:, 7:] = 0
    return {"token_ids": rng.integers(0, 30, (n, 10)).astype("int32"),
            "segment_ids": (np.arange(10) >= 5).astype("int32")[None].repeat(n, 0), "padding_mask": padding}


MODELS = {
    "sequential": (build_sequential, (8,)),
    "functional": (build_functional, (6, 6, 1)),
    "separable": (build_separable, (7, 7, 3)),
    "nested": (build_nested, (8,)),
    "subclassed": (build_subclassed, (8,)),
    "time_distributed": (build_time_distributed, (4, 3)),
    "bert": (build_bert, None),
}

def model_kinds():
    return list(MODELS)


def every_other(model: keras.Model) -> dict[str, np.ndarray]:
    """Masks keeping every other weight (by flat index) of each masked weight: 50% sparsity."""
    return {key: np.arange(m.size).reshape(m.shape) % 2 == 0 for key, m in ks.get_masks(model).items()}


def sparse_model(kind: str, seed: int = 0) -> keras.Model:
    """The wrapped model ``kind`` with every weight random (BatchNorm statistics included, so that
    nothing on disk is a default value) and every-other-weight masks set."""
    build, _ = MODELS[kind]
    model = ks.wrap(build(seed=seed), quiet=True)
    rng = np.random.default_rng(seed + 100)
    for variable in model.weights:
        value = rng.normal(size=variable.shape).astype(variable.dtype)
        variable.assign(np.abs(value) + 0.5 if "variance" in variable.path else value)
    ks.set_masks(model, every_other(model))
    return model


def inputs_for(kind: str, n: int = 5) -> np.ndarray | dict[str, np.ndarray]:
    if kind == "bert":
        return bert_inputs(n)
    return np.random.default_rng(7).normal(size=(n, *MODELS[kind][1])).astype("float32")


def predict(model, x) -> list[np.ndarray]:
    """The model's outputs on ``x`` (inference mode) as a list of arrays, sorted by name for dicts."""
    y = model(x, training=False)
    if isinstance(y, dict):
        return [np.asarray(y[k]) for k in sorted(y)]
    return [np.asarray(y)]


def masks_by_position(model: keras.Model) -> dict[int, np.ndarray]:
    """``{position of the masked variable in model.weights: mask}``: comparable across a load,
    where the variables' paths may change."""
    position = {id(v): i for i, v in enumerate(model.weights)}
    return {position[id(w.variable)]: np.asarray(w.mask.numpy()) for w in ks.masked_weights(model)}


def assert_same_weights(original: keras.Model, loaded: keras.Model) -> None:
    """Every weight, bit for bit, in the same order."""
    assert len(loaded.weights) == len(original.weights)
    for a, b in zip(original.weights, loaded.weights):
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (a.path, b.path)
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=b.path)


def assert_exact_zeros(model: keras.Model, masks: dict[int, np.ndarray]) -> None:
    """The weights at ``masks``' positions are +0.0 where the mask is off and nonzero (random) where on."""
    for position, mask in masks.items():
        value = model.weights[position].numpy()
        assert np.all(value[~mask] == 0.0) and not np.any(np.signbit(value[~mask])), model.weights[position].path
        assert np.all(value[mask] != 0.0), model.weights[position].path


def assert_same_sparse_model(original: keras.Model, loaded: keras.Model, x) -> None:
    masks, loaded_masks = masks_by_position(original), masks_by_position(loaded)
    assert list(loaded_masks) == list(masks)
    for position, mask in masks.items():
        assert loaded_masks[position].dtype == bool
        np.testing.assert_array_equal(loaded_masks[position], mask, err_msg=original.weights[position].path)
    assert ks.sparsity(loaded) == ks.sparsity(original)
    assert ks.sparsity_report(loaded)["total"] == ks.sparsity_report(original)["total"]
    assert_same_weights(original, loaded)
    assert_exact_zeros(loaded, loaded_masks)
    for a, b in zip(predict(original, x), predict(loaded, x)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_sparse_model_fixture_is_half_sparse():
    for kind in ("sequential", "functional"):
        model = sparse_model(kind)
        report = ks.sparsity_report(model)
        assert all(r["active"] == (r["size"] + 1) // 2 for key, r in report.items() if key != "total")


# -------------------------------------------------------------- .keras files
@pytest.mark.parametrize("kind", model_kinds())
def test_keras_file_round_trip_through_ks_load_model(kind, tmp_path):
    model = sparse_model(kind)
    x = inputs_for(kind)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = ks.load_model(path)
    assert type(loaded) is type(model)
    assert_same_sparse_model(model, loaded, x)
    assert bool(masking.mask_state(loaded).initialized.numpy())
    # Saved again from the loaded model: the same model comes back.
    again = str(tmp_path / "again.keras")
    loaded.save(again)
    assert_same_sparse_model(model, ks.load_model(again), x)


@pytest.mark.parametrize("kind", ["functional", "separable", "nested", "bert"])
def test_keras_file_round_trip_keeps_the_keys_of_functional_models(kind, tmp_path):
    model = sparse_model(kind)
    model.save(str(tmp_path / "m.keras"))
    assert list(ks.get_masks(ks.load_model(str(tmp_path / "m.keras")))) == list(ks.get_masks(model))
    if kind == "separable":
        assert sorted(ks.get_masks(model)) == ["logits/kernel", "sep1d/depthwise_kernel", "sep1d/pointwise_kernel",
                                               "sep2d/depthwise_kernel", "sep2d/pointwise_kernel"]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_keras_file_stores_masks_outside_the_model_config(kind, tmp_path):
    model = sparse_model(kind)
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
        config = archive.read("config.json").decode()
    assert "keras_sparse" not in config and "MaskState" not in config  # a plain model's config
    datasets = {}
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        weights.visititems(lambda name, item: datasets.update({name: item.dtype})
                           if isinstance(item, h5py.Dataset) and item.dtype == bool else None)
    # One bool array per mask, under keras_sparse_masks/vars/<position>|<path with | for />, and the flag.
    position = {id(v): i for i, v in enumerate(model.weights)}
    expected = {f"keras_sparse_masks/vars/{position[id(w.variable)]}|{w.key.replace('/', '|')}"
                for w in ks.masked_weights(model)}
    assert set(datasets) == expected | {"keras_sparse_masks/vars/initialized"}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_plain_keras_load_model_gives_the_model_without_masks(kind, tmp_path):
    model = sparse_model(kind)
    x = inputs_for(kind)
    model.save(str(tmp_path / "m.keras"))
    plain = keras.models.load_model(str(tmp_path / "m.keras"))
    assert masking.mask_state(plain) is None
    with pytest.raises(ConfigError, match="has no masks"):
        ks.masked_weights(plain)
    assert not any(v.dtype == "bool" for v in plain.weights)
    assert_same_weights(model, plain)
    assert_exact_zeros(plain, masks_by_position(model))
    for a, b in zip(predict(model, x), predict(plain, x)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_ks_load_model_of_an_unwrapped_model_has_no_masks(tmp_path):
    build_functional().save(str(tmp_path / "plain.keras"))
    assert masking.mask_state(ks.load_model(str(tmp_path / "plain.keras"))) is None


def test_load_in_a_fresh_process(tmp_path):
    """keras alone loads the file (no keras_sparse import needed); ks.load_model adds the masks."""
    model = sparse_model("functional")
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = inputs_for("functional")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import json, sys, numpy as np, keras\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"plain = keras.models.load_model({path!r})\n"
        "assert 'keras_sparse' not in sys.modules\n"
        "import keras_sparse as ks\n"
        f"m = ks.load_model({path!r})\n"
        "print(json.dumps({'masks': {k: np.flatnonzero(v).tolist() for k, v in ks.get_masks(m).items()},\n"
        "                  'sparsity': ks.sparsity(m), 'plain': np.asarray(plain(x)).tolist(),\n"
        "                  'y': np.asarray(m(x)).tolist()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["masks"] == {k: np.flatnonzero(v).tolist() for k, v in ks.get_masks(model).items()}
    assert out["sparsity"] == ks.sparsity(model)
    for key in ("plain", "y"):
        np.testing.assert_allclose(np.array(out[key]), np.asarray(model(x)), rtol=0, atol=1e-6)


# ------------------------------------------------------ save_weights / load_weights
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_weights_load_weights_restores_masks(kind, tmp_path):
    model = sparse_model(kind)
    x = inputs_for(kind)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    fresh = ks.wrap(MODELS[kind][0](seed=1), quiet=True)  # other weights, all-ones masks
    assert ks.sparsity(fresh) == 0.0
    fresh.load_weights(path)
    assert list(ks.get_masks(fresh)) == list(ks.get_masks(model))
    assert_same_sparse_model(model, fresh, x)
    assert bool(masking.mask_state(fresh).initialized.numpy())


def test_load_weights_into_an_unwrapped_model_loads_the_weights(tmp_path):
    model = sparse_model("functional")
    model.save_weights(str(tmp_path / "m.weights.h5"))
    plain = build_functional(seed=1)
    plain.load_weights(str(tmp_path / "m.weights.h5"))
    assert masking.mask_state(plain) is None
    assert_same_weights(model, plain)


def test_load_weights_into_another_selection_raises(tmp_path):
    model = sparse_model("functional")
    model.save_weights(str(tmp_path / "m.weights.h5"))
    other = ks.wrap(build_functional(seed=1), exclude="logits", quiet=True)
    with pytest.raises(ValueError, match=r"The saved masks do not fit this model \(missing \[\], unexpected "
                                         r"\['\d+\|logits\|kernel'\]\): load the file into a model wrapped with the "
                                         r"same selection"):
        other.load_weights(str(tmp_path / "m.weights.h5"))


# ----------------------------------------------------- training across a save
def rigl_compile(model: keras.Model, total_steps: int) -> ks.algorithms.RigL:
    algorithm = ks.algorithms.RigL(sparsity=0.8, distribution="uniform", update_frequency=2, drop_fraction=0.5, seed=1)
    model.compile(optimizer=ks.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), algorithm,
                                               total_steps=total_steps),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return algorithm


def convnet_data(n: int = 32, seed: int = 2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, n)


def assert_pruned_weights_zero(model: keras.Model) -> None:
    for w in ks.masked_weights(model):
        assert np.all(w.variable.numpy()[~w.mask.numpy()] == 0.0), w.key


def test_loaded_model_trains_on_from_its_saved_masks(tmp_path):
    """ks.load_model, then a new SparseOptimizer: the saved masks are the start (not re-drawn), RigL
    moves them keeping each weight's count, pruned weights stay exactly 0."""
    sparse_model("functional").save(str(tmp_path / "m.keras"))
    loaded = ks.load_model(str(tmp_path / "m.keras"), compile=False)
    saved = ks.get_masks(loaded)
    rigl_compile(loaded, total_steps=8)
    x, y = convnet_data()
    loaded.fit(x, y, batch_size=8, epochs=2, verbose=0)  # 8 steps, mask updates at 0, 2, 4
    assert int(loaded.optimizer.iterations.numpy()) == 8
    final = ks.get_masks(loaded)
    assert {k: int(m.sum()) for k, m in final.items()} == {k: int(m.sum()) for k, m in saved.items()}
    assert any(not np.array_equal(final[k], saved[k]) for k in final)  # RigL moved some
    assert_pruned_weights_zero(loaded)
    # And saved again: the trained masks come back.
    loaded.save(str(tmp_path / "trained.keras"))
    again = ks.load_model(str(tmp_path / "trained.keras"), compile=False)
    assert_same_sparse_model(loaded, again, inputs_for("functional"))


def test_model_checkpoint_files_carry_the_trained_masks(tmp_path):
    model = ks.wrap(build_functional(), quiet=True)
    rigl_compile(model, total_steps=4)
    x, y = convnet_data()
    checkpoints = [keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")),
                   keras.callbacks.ModelCheckpoint(str(tmp_path / "m.weights.h5"), save_weights_only=True)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=checkpoints)
    trained = ks.get_masks(model)
    assert ks.sparsity(model) > 0.7  # RigL's masks, not the all-ones of a fresh wrap
    loaded = ks.load_model(str(tmp_path / "m.keras"), compile=False)
    fresh = ks.wrap(build_functional(seed=1), quiet=True)
    fresh.load_weights(str(tmp_path / "m.weights.h5"))
    for restored in (loaded, fresh):
        assert list(ks.get_masks(restored)) == list(trained)
        for key, mask in ks.get_masks(restored).items():
            np.testing.assert_array_equal(mask, trained[key], err_msg=key)
        assert_same_weights(model, restored)


def test_model_compiled_with_sparse_optimizer_trains_on_after_ks_load_model(tmp_path):
    model = ks.wrap(build_functional(), quiet=True)
    rigl_compile(model, total_steps=8)
    x, y = convnet_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 steps
    model.save(str(tmp_path / "m.keras"))
    loaded = ks.load_model(str(tmp_path / "m.keras"))
    assert isinstance(loaded.optimizer, ks.SparseOptimizer)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    masks = ks.get_masks(loaded)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 more steps (one update, at step 4)
    assert int(loaded.optimizer.iterations.numpy()) == 8
    assert {k: int(m.sum()) for k, m in ks.get_masks(loaded).items()} == {k: int(m.sum()) for k, m in masks.items()}
    assert_pruned_weights_zero(loaded)


# ----------------------------------------------------------- strip / export
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_strip_gives_a_plain_copy_with_exact_zeros(kind):
    model = sparse_model(kind)
    x = inputs_for(kind, n=7)
    masks = masks_by_position(model)
    plain = ks.strip(model)
    assert type(plain) is type(model) and plain is not model
    assert masking.mask_state(plain) is None and masking.mask_state(model) is not None
    assert not any(v.dtype == "bool" for v in plain.weights)
    assert_same_weights(model, plain)
    assert_exact_zeros(plain, masks)
    for a, b in zip(predict(model, x), predict(plain, x)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    # The stripped model owns copies: changing it leaves the wrapped model alone.
    position = next(iter(masks))
    plain.weights[position].assign(np.ones(plain.weights[position].shape, "float32"))
    assert_exact_zeros(model, masks)


def test_strip_of_a_model_without_a_config_raises():
    class NoConfig(keras.Model):
        def __init__(self, units):  # a required argument: not rebuildable from the base config
            super().__init__(name="noconfig")
            self.fc = L.Dense(units, name="fc")

        def call(self, x):
            return self.fc(x)

    model = NoConfig(3)
    model(np.zeros((1, 4), "float32"))
    ks.wrap(model)
    with pytest.raises(ConfigError, match=r"^NoConfig 'noconfig' cannot be rebuilt from its config \(no get_config\): "
                                          r"export it as it is with ks.export_saved_model\(model, path\)"):
        ks.strip(model)


def serve(path: str, x) -> list[np.ndarray]:
    """Outputs of the SavedModel at ``path``'s serving_default signature, sorted by output name."""
    signature = tf.saved_model.load(path).signatures["serving_default"]
    names = sorted(signature.structured_input_signature[1])
    if isinstance(x, dict):
        feeds = {name: tf.constant(x[name]) for name in names}
    else:
        (name,) = names
        feeds = {name: tf.constant(x)}
    outputs = signature(**feeds)
    return [outputs[k].numpy() for k in sorted(outputs)]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_export_saved_model_serves_the_models_outputs(kind, tmp_path):
    model = sparse_model(kind)
    x = inputs_for(kind, n=4)
    path = str(tmp_path / "export")
    assert ks.export_saved_model(model, path) == path
    served = serve(path, x)
    expected = predict(model, x)
    assert len(served) == len(expected)
    for a, b in zip(expected, served):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # The exported variables are the model's (no bool masks), pruned entries exactly 0.0.
    loaded = tf.saved_model.load(path)
    assert not any(v.dtype == tf.bool for v in loaded.variables)
    exported = [v.numpy() for v in loaded.variables]
    for w in ks.masked_weights(model):
        candidates = [value for value in exported
                      if value.shape == tuple(w.variable.shape) and np.array_equal(value, w.variable.numpy())]
        assert candidates, w.key
        assert np.all(candidates[0][~w.mask.numpy()] == 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left


def test_export_replaces_an_existing_export(tmp_path):
    model = sparse_model("functional")
    x = inputs_for("functional", n=4)
    path = str(tmp_path / "export")
    ks.export_saved_model(model, path)
    before = serve(path, x)[0]
    ks.set_masks(model, {"logits/kernel": np.zeros((8, 3), bool)})  # now the logits are the bias alone
    assert ks.export_saved_model(model, path) == path
    after = serve(path, x)[0]
    np.testing.assert_allclose(after, predict(model, x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, np.broadcast_to(model.get_layer("logits").bias.numpy(), after.shape),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    # A leftover temporary from a crashed export does not get in the way.
    os.makedirs(tmp_path / f"export.tmp-{os.getpid()}" / "junk")
    ks.export_saved_model(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    np.testing.assert_allclose(serve(path, x)[0], after, rtol=0, atol=0)


# ------------------------------------------------------------------- TFLite
def tflite_predict(model_content: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_content=model_content)
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def tflite_constants(model_content: bytes) -> dict[tuple, np.ndarray]:
    interpreter = tf.lite.Interpreter(model_content=model_content)
    interpreter.allocate_tensors()
    constants = {}
    for detail in interpreter.get_tensor_details():
        try:
            constants[tuple(detail["shape"])] = interpreter.get_tensor(detail["index"])
        except ValueError:  # activations: no data outside invoke()
            pass
    return constants


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_stripped_and_exported_models_convert_to_tflite(kind, tmp_path):
    model = sparse_model(kind)
    x = inputs_for(kind, n=16)
    expected = predict(model, x)[0]
    stripped = ks.strip(model)
    from_keras = tf.lite.TFLiteConverter.from_keras_model(stripped).convert()
    export = ks.export_saved_model(model, str(tmp_path / "saved_model"))
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model(export).convert()
    for content in (from_keras, from_saved_model):
        np.testing.assert_allclose(tflite_predict(content, x), expected, rtol=1e-5, atol=1e-5)
    if kind == "sequential":
        # The file holds the kernels (transposed, for FULLY_CONNECTED) with the pruned zeros exact.
        constants = tflite_constants(from_saved_model)
        for w in ks.masked_weights(model):
            kernel, mask = w.variable.numpy(), w.mask.numpy()
            stored = constants[tuple(reversed(kernel.shape))].T
            np.testing.assert_array_equal(stored, kernel, err_msg=w.key)
            assert np.count_nonzero(stored == 0.0) == np.count_nonzero(~mask) > 0, w.key


def test_tflite_file_of_a_90_percent_sparse_model_compresses_much_better(tmp_path):
    """The pruned weights are exact zeros in the .tflite file: gzip shrinks it ~1/(1 - sparsity)."""
    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((256,)), L.Dense(256, activation="relu", name="fc"),
                                 L.Dense(10, name="logits")])

    dense, sparse = ks.wrap(build()), ks.wrap(build())
    rng = np.random.default_rng(0)
    ks.set_masks(sparse, {key: rng.random(m.shape) < 0.1 for key, m in ks.get_masks(sparse).items()})
    assert ks.sparsity(sparse) == pytest.approx(0.9, abs=0.01)
    sizes = {}
    x = np.random.default_rng(1).normal(size=(4, 256)).astype("float32")
    for name, model in (("dense", dense), ("sparse", sparse)):
        export = ks.export_saved_model(model, str(tmp_path / name))
        plain = tf.lite.TFLiteConverter.from_saved_model(export).convert()
        converter = tf.lite.TFLiteConverter.from_saved_model(export)
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        encoded = converter.convert()
        for content in (plain, encoded):
            np.testing.assert_allclose(tflite_predict(content, x), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
        sizes[name] = {"raw": len(plain), "gzip": len(gzip.compress(plain, 9)), "encoded": len(encoded)}
    assert sizes["dense"]["gzip"] > 0.85 * sizes["dense"]["raw"]  # dense float32 barely compresses
    assert sizes["sparse"]["raw"] == pytest.approx(sizes["dense"]["raw"], rel=0.01)  # zeros are stored as zeros
    assert sizes["sparse"]["gzip"] < 0.2 * sizes["dense"]["gzip"], sizes
    assert sizes["sparse"]["encoded"] < 0.3 * sizes["dense"]["raw"], sizes
