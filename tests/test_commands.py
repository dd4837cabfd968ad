"""The console scripts that `pip install` puts on PATH (setup.cfg entry points)."""

import os
import shutil
import subprocess

import pytest

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.mark.parametrize("command", ["keras-sparse-train", "keras-sparse-study"])
def test_help_lists_the_shipped_gin_configs(command, tmp_path):
    assert shutil.which(command), f"{command} is not installed: run pip install -e '.[test]'"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert result.returncode in (0, 1)  # absl's --help exits with 1
    for config in ("rigl.gin", "rigl_frozen.gin", "studies/reinit.gin", "mnist_lenet5.gin"):
        assert config in result.stdout.replace("\n    ", " ")
    assert "--logdir" in result.stdout


def test_train_runs_from_any_directory_with_a_shipped_config_name(tmp_path):
    result = subprocess.run(["keras-sparse-train", "--gin_config=static.gin", f"--logdir={tmp_path / 'run'}",
                             "--gin_bindings=training.epochs = 1", "--gin_bindings=model.width = 8",
                             "--gin_bindings=training.batch_size = 500", "--gin_bindings=training.export = False"],
                            capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").exists()
    plot = subprocess.run(["keras-sparse-plot", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
                          env=ENV)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "run" / "layer_sparsity.png").exists()


def test_study_needs_a_known_study_name(tmp_path):
    result = subprocess.run(["keras-sparse-study", "bogus", f"--logdir={tmp_path}"], capture_output=True, text=True,
                            timeout=120, env=ENV)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: name one study")
