"""Saving and deployment: ``model.save``/``keras.models.load_model`` of wrapped models, and
TFLite conversion of stripped ones."""

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
from conftest import build_convnet, build_mlp, make_dataset

import keras_sparse as ks
from keras_sparse.masking import _walk
from keras_sparse.trainer import Callback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TF 2.21 warns that tf.lite.Interpreter moves to ai_edge_litert; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated:UserWarning")


def build_nested(seed: int = 0) -> keras.Model:
    """A functional model whose first layer is a Sequential MLP (8 -> 16 -> 12 -> 4), then Dense(5)."""
    inner = build_mlp(seed=seed, name="inner")
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(inner(inputs)), name="outer")


def build_separable(seed: int = 0) -> keras.Model:
    """SeparableConv2D and SeparableConv1D (two masks each), then Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((7, 7, 3))
    x = keras.layers.SeparableConv2D(4, 3, depth_multiplier=2, name="sep2d")(inputs)
    x = keras.layers.Reshape((25, 4))(x)
    x = keras.layers.SeparableConv1D(6, 3, name="sep1d")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="separable")


MODELS = {
    "sequential": (build_mlp, (8,)),
    "functional": (build_convnet, (6, 6, 1)),  # Conv2D, BatchNorm, DepthwiseConv2D, Dense
    "nested": (build_nested, (8,)),
    "separable": (build_separable, (7, 7, 3)),
}


def sparse_model(kind: str, seed: int = 0) -> keras.Model:
    """The wrapped model ``kind`` with every weight random (BatchNorm statistics included) and
    random masks of about 60% sparsity applied, so that nothing on disk is a default value."""
    build, _ = MODELS[kind]
    model = ks.wrap(build(seed=seed))
    rng = np.random.default_rng(seed + 100)
    for variable in model.weights:
        if variable.dtype != "bool":
            value = rng.normal(size=variable.shape).astype(variable.dtype)
            variable.assign(np.abs(value) + 0.5 if "variance" in variable.path else value)
    ks.set_masks(model, {key: rng.random(mask.shape) < 0.4 for key, mask in ks.get_masks(model).items()})
    return model


def inputs_for(kind: str, n: int = 5) -> np.ndarray:
    return np.random.default_rng(7).normal(size=(n, *MODELS[kind][1])).astype("float32")


def wrappers(model: keras.Model) -> list[str]:
    return [layer.layer.name for layer in _walk(model) if isinstance(layer, ks.MaskedWrapper)]


def assert_same_sparse_model(original: keras.Model, loaded: keras.Model, x: np.ndarray,
                             random_weights: bool = True) -> None:
    assert wrappers(loaded) == wrappers(original)
    masks, loaded_masks = ks.get_masks(original), ks.get_masks(loaded)
    assert list(loaded_masks) == list(masks)
    for key, mask in masks.items():
        assert loaded_masks[key].dtype == bool
        np.testing.assert_array_equal(loaded_masks[key], mask, err_msg=key)
    assert ks.sparsity(loaded) == ks.sparsity(original)
    assert ks.sparsity_report(loaded) == ks.sparsity_report(original)
    # Every weight, bit for bit, in the same order; pruned kernel entries exactly 0.0.
    assert len(loaded.weights) == len(original.weights)
    for a, b in zip(original.weights, loaded.weights):
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (a.path, b.path)
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=b.path)
    for k in ks.masked_kernels(loaded):
        assert np.all(k.kernel.numpy()[~k.mask.numpy()] == 0.0), k.key
        if random_weights:  # (RigL's grown weights start at 0.0)
            assert np.all(k.kernel.numpy()[k.mask.numpy()] != 0.0), k.key
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(original(x)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_keras_save_and_load_keep_masks_weights_and_predictions(kind, tmp_path):
    model = sparse_model(kind)
    assert 0.4 < ks.sparsity(model) < 0.8  # random masks, not the all-ones default of a fresh build
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: registered by `import keras_sparse`
    assert_same_sparse_model(model, loaded, inputs_for(kind))
    if kind == "separable":
        assert sorted(ks.get_masks(loaded)) == ["logits/kernel", "sep1d/depthwise_kernel", "sep1d/pointwise_kernel",
                                               "sep2d/depthwise_kernel", "sep2d/pointwise_kernel"]

    # The archive stores the masks as bool arrays, one per masked kernel.
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
        config = json.loads(archive.read("config.json"))
    bool_datasets = []
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        weights.visititems(lambda name, item: bool_datasets.append(name)
                           if isinstance(item, h5py.Dataset) and item.dtype == bool else None)
    assert len(bool_datasets) == len(ks.get_masks(model))
    assert "keras_sparse>MaskedWrapper" in json.dumps(config)

    # Saved again from the loaded model: the same archive contents come back.
    again = str(tmp_path / "again.keras")
    loaded.save(again)
    assert_same_sparse_model(model, keras.models.load_model(again), inputs_for(kind))


def test_wrapper_from_config_builds_its_masks_once():
    original = ks.MaskedWrapper(keras.layers.SeparableConv2D(4, 3, name="sep"))
    original.build((None, 7, 7, 3))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(original)))  # through JSON, as on disk
    assert config["registered_name"] == "keras_sparse>MaskedWrapper"
    rebuilt = keras.saving.deserialize_keras_object(config)
    assert isinstance(rebuilt, ks.MaskedWrapper) and rebuilt.name == "masked_sep"
    assert rebuilt.kernel_names == ("depthwise_kernel", "pointwise_kernel")
    rebuilt.build((None, 7, 7, 3))
    rebuilt.build((None, 7, 7, 3))  # a second build adds nothing (it used to raise)
    assert [(w.path.split("/")[-1], w.dtype, tuple(w.shape)) for w in rebuilt.weights] == [
        (w.path.split("/")[-1], w.dtype, tuple(w.shape)) for w in original.weights]
    assert sum(w.dtype == "bool" for w in rebuilt.weights) == 2


@pytest.mark.parametrize("kind", ["functional", "separable"])
def test_loaded_model_masks_are_in_tf_train_checkpoints(kind, tmp_path):
    """Trainer's resume uses tf.train.Checkpoint, which must see the masks of a loaded model too."""
    model = sparse_model(kind)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    saved = tf.train.Checkpoint(model=loaded).write(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(saved)]
    assert sum("_mask" in name for name in names) == len(ks.get_masks(model)), names
    ks.set_masks(loaded, {key: np.ones_like(mask) for key, mask in ks.get_masks(loaded).items()})
    assert ks.sparsity(loaded) == 0.0
    tf.train.Checkpoint(model=loaded).read(saved).assert_existing_objects_matched()
    assert_same_sparse_model(model, loaded, inputs_for(kind))


def test_load_in_a_fresh_process_needs_only_import_keras_sparse(tmp_path):
    model = sparse_model("nested")
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = inputs_for("nested")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import json, sys, numpy as np, keras, keras_sparse as ks\n"
        f"m = keras.models.load_model({path!r})\n"
        f"y = np.asarray(m(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "print(json.dumps({'masks': {k: np.flatnonzero(v).tolist() for k, v in ks.get_masks(m).items()},\n"
        "                  'sparsity': ks.sparsity(m), 'y': y.tolist()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["masks"] == {k: np.flatnonzero(v).tolist() for k, v in ks.get_masks(model).items()}
    assert out["sparsity"] == ks.sparsity(model)
    np.testing.assert_allclose(np.array(out["y"]), np.asarray(model(x)), rtol=0, atol=1e-6)


def test_loaded_model_trains_with_trainer_and_saves_again(tmp_path):
    model = sparse_model("functional")
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    data = make_dataset(32, (6, 6, 1), 3, batch=8, seed=2)  # 4 steps an epoch

    # Continue training with the saved masks fixed.
    masks = ks.get_masks(loaded)
    before = {k.key: k.kernel.numpy().copy() for k in ks.masked_kernels(loaded)}
    trainer = ks.Trainer(loaded, ks.algorithms.FixedMask(masks), keras.optimizers.SGD(0.05, momentum=0.9),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True), progress=False)
    history = trainer.fit(data, epochs=2)
    assert trainer.step == 8 and np.isfinite(history[-1]["train_loss"])
    for k in ks.masked_kernels(loaded):
        mask = k.mask.numpy()
        np.testing.assert_array_equal(mask, masks[k.key])
        assert np.all(k.kernel.numpy()[~mask] == 0.0)
        assert not np.array_equal(k.kernel.numpy()[mask], before[k.key][mask])  # it did train
    assert trainer.summary()["layer_sparsity"] == {key: 1.0 - m.mean() for key, m in masks.items()}

    # Mask updates (RigL) work on the loaded model: its optimizer slots are found by path.
    rigl = ks.Trainer(loaded, ks.algorithms.RigL(0.5, "uniform", update_frequency=2, drop_fraction=0.5, seed=1),
                      keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), progress=False)
    assert all(len(slots) == 1 for slots in rigl._slots.values()), rigl._slots  # one momentum per kernel
    class FirstMasks(Callback):
        def on_train_begin(self, trainer):
            self.masks = ks.get_masks(trainer.model)

    first = FirstMasks()
    rigl.fit(data, epochs=1, callbacks=[first])
    assert rigl.dense_gradient_steps > 0
    final = ks.get_masks(loaded)
    assert any(not np.array_equal(final[key], first.masks[key]) for key in final)  # masks were updated
    for k in ks.masked_kernels(loaded):
        assert np.all(k.kernel.numpy()[~k.mask.numpy()] == 0.0)
        assert k.mask.numpy().mean() == pytest.approx(0.5, abs=0.05)

    loaded.save(str(tmp_path / "trained.keras"))
    assert_same_sparse_model(loaded, keras.models.load_model(str(tmp_path / "trained.keras")),
                             inputs_for("functional"), random_weights=False)


# ------------------------------------------------------------------- TFLite
def tflite_predict(model_content: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = tf.lite.Interpreter(model_content=model_content)
    inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inputs["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def test_stripped_model_converts_to_tflite_with_the_same_predictions(tmp_path):
    model = sparse_model("sequential")
    x = inputs_for("sequential", n=16)
    expected = np.asarray(model(x))
    stripped = ks.strip(model)
    assert not wrappers(stripped)
    from_keras = tf.lite.TFLiteConverter.from_keras_model(stripped).convert()
    export = ks.export_saved_model(model, str(tmp_path / "saved_model"))
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model(export).convert()
    for content in (from_keras, from_saved_model):
        np.testing.assert_allclose(tflite_predict(content, x), expected, rtol=1e-5, atol=1e-5)
    # The file holds the kernels (transposed, for FULLY_CONNECTED) with the pruned zeros exact.
    interpreter = tf.lite.Interpreter(model_content=from_saved_model)
    interpreter.allocate_tensors()
    constants = {}
    for detail in interpreter.get_tensor_details():
        try:
            constants[tuple(detail["shape"])] = interpreter.get_tensor(detail["index"])
        except ValueError:  # activations: no data outside invoke()
            pass
    for k in ks.masked_kernels(model):
        kernel, mask = k.kernel.numpy(), k.mask.numpy()
        stored = constants[tuple(reversed(kernel.shape))].T
        np.testing.assert_array_equal(stored, kernel, err_msg=k.key)
        assert np.count_nonzero(stored == 0.0) == np.count_nonzero(~mask) > 0, k.key


def test_tflite_file_of_a_90_percent_sparse_model_compresses_much_better(tmp_path):
    """The pruned weights are exact zeros in the .tflite file: gzip shrinks it ~1/(1 - sparsity)."""
    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((256,)), keras.layers.Dense(256, activation="relu", name="fc"),
                                 keras.layers.Dense(10, name="logits")])

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
