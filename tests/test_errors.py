"""Bad input stops before training with one clear line, and leaves an existing logdir untouched."""

import os
import subprocess
import sys

import gin
import pytest

from keras_sparse import experiment, logdir
from keras_sparse.config import parse_gin
from keras_sparse.errors import ConfigError, TrainingDivergedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RIGL = os.path.join(ROOT, "gin_configs", "rigl.gin")
# One epoch of 7 steps of a narrow net, as a plain graph one step a call: these tests are about the
# checks and the logdir, not the compiled step (timing XLA against the graph, as "auto" does,
# doubled each run's cost).
FAST = ["training.epochs = 1", "model.width = 8", "training.progress = False", "training.export = False",
        "training.batch_size = 500", "training.jit_compile = False", "training.steps_per_execution = 1"]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def snapshot(directory):
    """{relative path: (size, mtime)} of every file below ``directory``."""
    result = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            result[os.path.relpath(path, directory)] = (os.path.getsize(path), os.path.getmtime(path))
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A logdir holding a finished one-epoch RigL run."""
    gin.clear_config()
    path = str(tmp_path_factory.mktemp("finished") / "run")
    parse_gin([RIGL], FAST)
    experiment.train(path, seed=0)
    gin.clear_config()
    return path


def train(logdir_path, *bindings, overwrite=False):
    parse_gin([RIGL], [*FAST, *bindings])
    return experiment.train(logdir_path, seed=0, overwrite=overwrite)


@pytest.mark.parametrize("bindings,message", [
    (["RigL.sparsity = 1.0"], "outside [0, 1)"),
    (["RigL.sparsity = -0.1"], "outside [0, 1)"),
    (["RigL.distribution = 'erdos'"], "Unknown sparsity distribution 'erdos'"),
    (["RigL.distribution = {'conv9': 0.5}"], "not masked layers"),
    (["RigL.freeze_step = 100000"], "outside training"),
    (["training.exclude = ['conv1', 'conv2', 'conv3', 'conv4', 'logits']"], "no weight to mask"),
    (["data.name = 'no_such_data_set'"], "Unknown data set 'no_such_data_set'"),
    (["training.optimizer = 'sgdd'"], "Unknown training.optimizer"),
])
def test_bad_setting_is_refused_before_touching_the_logdir(finished_run, bindings, message):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(finished_run, *bindings)
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("binding,message", [("Foo.bar = 1", "No configurable matching 'Foo'"),
                                             ("RigL.spars = 0.5", "doesn't have a parameter named 'spars'")])
def test_unknown_gin_configurable_or_parameter(binding, message):
    with pytest.raises(ConfigError, match=message):
        parse_gin([RIGL], [binding])


def test_missing_gin_file():
    with pytest.raises(ConfigError, match="not found"):
        parse_gin(["gin_configs/no_such.gin"], [])


def test_a_failed_start_leaves_no_empty_logdir(tmp_path):
    with pytest.raises(ConfigError):
        train(str(tmp_path / "new"), "RigL.freeze_step = 100000")
    assert not (tmp_path / "new").exists()


def test_different_config_is_refused_and_overwrite_moves_the_old_run_aside(finished_run, tmp_path):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match="different config .*RigL.sparsity.*--overwrite"):
        train(finished_run, "RigL.sparsity = 0.8")
    assert snapshot(finished_run) == before
    # Overwrite on a copy, so the module's finished run stays as it is for the other tests.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", finished_run, str(copy)], check=True)
    gin.clear_config()
    metrics = train(str(copy), "RigL.sparsity = 0.8", overwrite=True)
    assert metrics["sparsity"] == pytest.approx(0.8, abs=2e-3)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("copy.old-")]
    assert len(moved) == 1 and (moved[0] / "metrics.json").exists() and (moved[0] / "checkpoints").is_dir()


def test_same_config_on_a_finished_run_says_so_and_changes_nothing(finished_run, capsys):
    before = snapshot(finished_run)
    metrics = train(finished_run)
    assert metrics["steps"] == 7  # 3600 training examples (10% held out for validation), batches of 500
    assert snapshot(finished_run) == before
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "holds a finished run of this config (test accuracy " in out[0]
    assert "another --logdir or pass --overwrite" in out[0]


def test_same_config_resumes_an_unfinished_run_and_says_from_where(finished_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", finished_run, str(copy)], check=True)
    os.remove(copy / "metrics.json")  # as if stopped after its last checkpoint
    capsys.readouterr()
    assert train(str(copy))["steps"] == 7
    checkpoint = copy / "checkpoints" / "ckpt-7"
    assert capsys.readouterr().out.splitlines()[0] == f"Resuming from step 7 of 7 ({checkpoint})."


def test_overwrite_starts_a_finished_run_of_the_same_config_again(finished_run, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", finished_run, str(copy)], check=True)
    assert train(str(copy), overwrite=True)["steps"] == 7
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("copy.old-")]) == 1


def test_second_process_on_the_same_logdir_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / logdir.LOCK_FILE).write_text(f"{sleeper.pid} {__import__('socket').gethostname()}")
        with pytest.raises(ConfigError, match=f"Another process \\(pid {sleeper.pid}"):
            train(str(tmp_path / "run"))
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its owner is gone now: the stale lock is taken over and the run goes ahead.
    gin.clear_config()
    assert train(str(tmp_path / "run"))["steps"] == 7
    assert not (tmp_path / "run" / logdir.LOCK_FILE).exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    path = str(tmp_path / "run")
    parse_gin([RIGL], [*FAST, "training.lr_schedule = 'constant'"])
    run = experiment.build_run(0, logdir=path)
    run.trainer.fit(run.data.train_epoch, 1, steps_per_epoch=run.data.steps_per_epoch)  # ckpt-7, healthy
    run.trainer.optimizer.learning_rate.assign(1e30)  # then the weights blow up
    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at step (8|9|1\d).*ckpt-7 is kept"):
        run.trainer.fit(run.data.train_epoch, 3, steps_per_epoch=run.data.steps_per_epoch)
    checkpoints = sorted(p for p in os.listdir(os.path.join(path, "checkpoints")) if p.startswith("ckpt"))
    assert checkpoints and all(name.startswith("ckpt-7.") for name in checkpoints)


def run_binary_with_a_bad_sparsity(tmp_path):
    return subprocess.run([sys.executable, os.path.join(ROOT, "binaries", "train.py"), f"--gin_config={RIGL}",
                           f"--logdir={tmp_path / 'run'}", "--gin_bindings=RigL.sparsity = 1.5"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


# conftest.BackgroundRuns starts the binary when the session starts, beside the in-process tests.
BACKGROUND = {"test_binary_prints_one_error_line": {"bad_sparsity": run_binary_with_a_bad_sparsity}}


def test_binary_prints_one_error_line(background):
    tmp_path, result = background.result(__name__, "bad_sparsity")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: sparsity=1.5 is outside [0, 1): pass a fraction such as 0.9 for 90% sparsity."]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
