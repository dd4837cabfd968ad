"""End-to-end tests of keras_sparse.experiment and binaries/train.py on short MNIST-1D runs."""

import json
import os
import re
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from keras_sparse import data, experiment
from keras_sparse.config import parse_gin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["dense", "static", "magnitude", "snip", "set", "rigl", "rigl_frozen"]
# A narrow net and two epochs (56 steps each at batch 64) keep each run to a few seconds.
# No XLA: compiling takes longer than two epochs of the narrow net (the binary's XLA default is
# run by test_train_binary_end_to_end_and_resume_past_a_corrupt_checkpoint).
SHORT = ["training.epochs = 2", "model.width = 8", "training.progress = False", "training.jit_compile = False"]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


# The steps that needed a dense gradient in 112 steps (RigL paper, Appendix H): every step of dense
# training, none of a static mask or of SET; magnitude pruning trains dense until begin_step (10% of
# training: steps 0..10); SNIP scores one batch; RigL updates every 15 steps from step 0 until 75% of
# training (steps 0..83: 0, 15, .., 75), and frozen RigL until the end of epoch 1 (step 56): 0, 15, 30, 45.
DENSE_GRADIENT_STEPS = {"dense": 112, "static": 0, "magnitude": 11, "snip": 1, "set": 0, "rigl": 6, "rigl_frozen": 4}


@pytest.mark.parametrize("config", CONFIGS)
def test_every_algorithm_config_trains(config, tmp_path):
    # Magnitude pruning reaches its target only at a pruning step on end_step (as tfmot's
    # schedule): prune every step, so the end of this short run is one.
    every_step = ["MagnitudePruning.frequency = 1"] if config == "magnitude" else []
    parse_gin([os.path.join(ROOT, "gin_configs", f"{config}.gin")],
              SHORT + every_step + ["training.export = False", "training.batch_size = 64"])
    metrics = experiment.train(str(tmp_path), seed=1)
    expected_sparsity = 0.0 if config == "dense" else 0.9
    assert metrics["sparsity"] == pytest.approx(expected_sparsity, abs=2e-3)
    assert metrics["steps"] == 112  # 2 epochs of 3600 training examples (10% held out): 56 batches of 64 each
    assert metrics["dense_gradient_steps"] == DENSE_GRADIENT_STEPS[config]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["test_loss"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "sparsity", "layer_sparsity", "steps", "dense_gradient_steps",
                "training_flops_relative_to_dense"):
        assert key in on_disk
    assert (tmp_path / "operative_config.gin").read_text().count("training.epochs = 2") == 1


def _run_binary(*args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "binaries", "train.py"), *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _bindings(*bindings):
    return [f"--gin_bindings={b}" for b in bindings]


BINARY_BINDINGS = _bindings("training.epochs = 2", "model.width = 8")


def run_binary_then_rerun_past_a_corrupt_checkpoint(directory):
    """Runs the binary into ``directory/run`` and keeps a copy of that logdir as it ended
    (``directory/first``); then truncates the newest checkpoint (step 112), removes metrics.json
    (else the rerun would find the run finished) and reruns the same command. Returns both runs
    (the second None where the first failed)."""
    logdir = directory / "run"
    args = ["--gin_config=gin_configs/rigl.gin", f"--logdir={logdir}", "--seed=3", *BINARY_BINDINGS]
    first = _run_binary(*args)
    if first.returncode != 0:
        return first, None
    shutil.copytree(logdir, directory / "first", symlinks=True)
    newest = next(p for p in (logdir / "checkpoints").iterdir() if p.name.startswith("ckpt-112.data"))
    newest.write_bytes(newest.read_bytes()[:100])
    (logdir / "metrics.json").unlink()
    return first, _run_binary(*args)


# conftest.BackgroundRuns starts the binary runs when the session starts, beside the in-process tests.
BACKGROUND = {"test_train_binary_end_to_end_and_resume_past_a_corrupt_checkpoint": {
    "binary": run_binary_then_rerun_past_a_corrupt_checkpoint},
    "test_train_binary_missing_tfds_set_is_one_clear_line": {
    "missing_tfds": lambda directory: run_binary_on_a_missing_tfds_set(directory)}}


def test_train_binary_end_to_end_and_resume_past_a_corrupt_checkpoint(background):
    directory, (first, second) = background.result(__name__, "binary")
    logdir = directory / "run"
    assert first.returncode == 0, first.stderr[-3000:]
    ended = directory / "first"  # the logdir as the first run left it
    for name in ("checkpoints", "config.gin", "operative_config.gin", "metrics.json", "saved_model"):
        assert (ended / name).exists(), name
    assert not (ended / ".lock").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(ended))
    metrics = json.loads((ended / "metrics.json").read_text())
    assert metrics["steps"] == 112 and metrics["seed"] == 3
    # Each epoch line has its time and speed; the run ends with a summary of the result and its files.
    assert "Epoch 1/2" in first.stdout and "\r" not in first.stdout  # not a terminal: no progress bar
    epoch_lines = [line for line in first.stdout.splitlines() if line.startswith("  train_loss=")]
    assert len(epoch_lines) == 2 and all(re.search(r"val_accuracy=.* — [\d.]+ s, \d+ steps/s$", line)
                                         for line in epoch_lines)
    assert re.search(r"^Done: test accuracy \d+\.\d\d%, test loss", first.stdout, re.M)
    for path in ("metrics.json", "saved_model"):
        assert str(logdir / path) in first.stdout
    assert f"tensorboard --logdir {logdir}" in first.stdout
    assert "test_accuracy" in metrics and all("test_accuracy" not in record for record in metrics["history"])

    loaded = tf.saved_model.load(str(ended / "saved_model"))
    x = next(iter(data.load(batch_size=4, name="mnist1d").test))[0][:4]
    assert loaded.signatures["serving_default"](x)["output_0"].shape == (4, 10)

    # The newest checkpoint (step 112) was truncated: the rerun names it, falls back to step 56,
    # trains epoch 2 again and ends where the first run ended.
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ckpt-112" in second.stderr and "trying the previous one" in second.stderr
    assert f"Resuming from step 56 of 112 ({logdir / 'checkpoints' / 'ckpt-56'})." in second.stdout
    resumed = json.loads((logdir / "metrics.json").read_text())
    assert resumed["steps"] == 112
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["test_accuracy"] == metrics["test_accuracy"]


def run_binary_on_a_missing_tfds_set(tmp_path):
    return _run_binary("--gin_config=gin_configs/static.gin", f"--logdir={tmp_path / 'run'}",
                       *_bindings("data.name = 'mnist'", f"data.data_dir = '{tmp_path / 'tfds'}'",
                                  "data.download = False"))


def test_train_binary_missing_tfds_set_is_one_clear_line(background):
    tmp_path, result = background.result(__name__, "missing_tfds")
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'mnist'" in lines[0] and str(tmp_path / "tfds") in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config,shape", [("mnist_lenet300.gin", (28, 28, 1)), ("mnist_lenet5.gin", (28, 28, 1)),
                                          ("cifar10_resnet20.gin", (32, 32, 3)),
                                          ("cifar10_wide_resnet.gin", (32, 32, 3))])
def test_tfds_data_and_model_configs_compose_with_an_algorithm_config(config, shape, tmp_path):
    import tensorflow_datasets as tfds

    parse_gin([os.path.join(ROOT, "gin_configs", "rigl.gin"), os.path.join(ROOT, "gin_configs", config)],
                         ["training.epochs = 1", "training.batch_size = 32", "training.progress = False",
                          "training.jit_compile = False"])
    with tfds.testing.mock_data(num_examples=64):
        run = experiment.build_run(seed=0)
        assert run.data.input_shape == shape
        assert run.trainer.algorithm.update_frequency == 100  # the data config's own setting
        run.fit()
    # 64 mock examples: 6 held out for validation, 58 train: one batch of 32 an epoch.
    assert run.trainer.step == 1 and abs(run.trainer.sparsity() - 0.9) < 2e-3


def test_model_seed_changes_the_initialization_not_the_data_order():
    """The reinit study's "new_init" variant: another model_seed gives other initial weights,
    and the same seed gives the same data order."""
    parse_gin([os.path.join(ROOT, "gin_configs", "static.gin")], SHORT)
    same = experiment.build_run(seed=0, model_seed=0)
    new = experiment.build_run(seed=0, model_seed=10_000)
    again = experiment.build_run(seed=0)
    for key, kernel in same.initial_kernels.items():
        assert not np.array_equal(kernel, new.initial_kernels[key])
        np.testing.assert_array_equal(kernel, again.initial_kernels[key])
    first = lambda run: next(iter(run.data.train_epoch(0)))[1].numpy()  # noqa: E731
    np.testing.assert_array_equal(first(same), first(new))
