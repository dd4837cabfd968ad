"""The console scripts that `pip install` puts on PATH (setup.cfg entry points) and the binaries."""

import os
import runpy
import shutil
import signal
import subprocess
import sys

import gin
import pytest
from absl import flags

from keras_sparse import cli, commands
from keras_sparse.errors import ConfigError, TrainingInterrupted
from keras_sparse.studies import grid

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def help_of(command: str):
    """``command --help``, run in a fresh directory (a child process started early, see BACKGROUND)."""
    return lambda directory: subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120,
                                            env=ENV, cwd=directory)


@pytest.mark.parametrize("command", ["keras-sparse-train", "keras-sparse-study"])
def test_help_lists_the_shipped_gin_configs(command, background):
    assert shutil.which(command), f"{command} is not installed: run pip install -e '.[test]'"
    _, result = background.result(__name__, f"help {command}")
    assert result.returncode in (0, 1)  # absl's --help exits with 1
    text = result.stdout.replace("\n    ", " ")
    for config in ("rigl.gin", "rigl_frozen.gin", "studies/reinit.gin", "mnist_lenet5.gin"):
        assert config in text
    assert "--logdir" in text and "--gin_help" in text
    assert f"USAGE: {command} " in text  # not the path of the installed script
    if command == "keras-sparse-study":  # the NAME argument, and what each study is
        assert "USAGE: keras-sparse-study NAME " in text
        for name in ("reinit", "further_pruning", "structure"):
            assert f"\n  {name} " in result.stdout


def train_from_a_directory_then_plot(tmp_path):
    """keras-sparse-train run from ``tmp_path`` with a shipped config's bare name, then
    keras-sparse-plot on its logdir (only where the training succeeded)."""
    result = subprocess.run(["keras-sparse-train", "--gin_config=static.gin", f"--logdir={tmp_path / 'run'}",
                             "--gin_bindings=training.epochs = 1", "--gin_bindings=model.width = 8",
                             "--gin_bindings=training.batch_size = 500", "--gin_bindings=training.export = False",
                             "--gin_bindings=training.jit_compile = False", "--noprogress"],
                            capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    if result.returncode != 0:
        return result, None
    return result, subprocess.run(["keras-sparse-plot", str(tmp_path / "run")], capture_output=True, text=True,
                                  timeout=120, env=ENV)


def unknown_study(directory):
    return subprocess.run(["keras-sparse-study", "bogus", f"--logdir={directory}"], capture_output=True,
                          text=True, timeout=120, env=ENV)


def study_gin_help(directory):
    return subprocess.run([sys.executable, os.path.join(ROOT, "binaries", "structure_study.py"), "--gin_help",
                           "--gin_config=studies/structure.gin"], capture_output=True, text=True, timeout=120,
                          env=ENV, cwd=directory)


def binary_beside_a_decoy(directory):
    """A binary run with a decoy keras_sparse package first on PYTHONPATH."""
    decoy = directory / "keras_sparse"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy keras_sparse was imported')\n")
    return subprocess.run([sys.executable, os.path.join(ROOT, "binaries", "summarize.py"), "--help"],
                          capture_output=True, text=True, timeout=120, env=dict(ENV, PYTHONPATH=str(directory)),
                          cwd=directory)


# conftest.BackgroundRuns starts these child processes when the session starts, beside the
# in-process tests: they spend most of their time starting TensorFlow.
BACKGROUND = {
    "test_train_runs_from_any_directory_with_a_shipped_config_name_and_noprogress": {
        "train_then_plot": train_from_a_directory_then_plot},
    "test_help_lists_the_shipped_gin_configs": {
        f"help {command}": help_of(command) for command in ("keras-sparse-train", "keras-sparse-study")},
    "test_study_needs_a_known_study_name": {"unknown_study": unknown_study},
    "test_study_gin_help_exits_0_without_a_logdir": {"study_gin_help": study_gin_help},
    "test_binaries_run_the_library_beside_them": {"binary_beside_a_decoy": binary_beside_a_decoy},
}


def test_train_runs_from_any_directory_with_a_shipped_config_name_and_noprogress(background):
    tmp_path, (result, plot) = background.result(__name__, "train_then_plot")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").exists()
    # --noprogress silences the epoch lines, not the final summary.
    assert "Epoch" not in result.stdout and result.stdout.startswith("Done: test accuracy ")
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert (tmp_path / "run" / "layer_sparsity.png").exists()


def test_study_needs_a_known_study_name(background):
    _, result = background.result(__name__, "unknown_study")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: name one study")


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_gin_reference_lists_every_bindable_parameter_with_its_default(clean_gin):
    from keras_sparse import algorithms, experiment  # noqa: F401  (registers training, data, model)
    from keras_sparse.studies import reinit  # noqa: F401

    gin.parse_config(["RigL.sparsity = 0.95", "data.name = 'digits'"])
    text = cli.gin_reference()
    lines = text.splitlines()
    for expected in ("training.epochs = 60", "training.batch_size = 64", "data.validation_fraction = 0.1",
                     "data.eval_batch_size = 1000", "model.name = 'mnist1d_cnn'", "mnist1d_cnn: model.width = 128",
                     "resnet: model.depth = 20, model.width = 1", "RigL.drop_fraction = 0.3",
                     "SNIP.scoring_batches = 1",
                     "MagnitudePruning.frequency = 100"):
        assert any(line.strip() == expected for line in lines), expected
    for algorithm in algorithms.REGISTRY:  # every registered algorithm class has its section
        assert f"\n{algorithms.get(algorithm).__name__}: " in text
    assert "  RigL.sparsity = 0.9    # bound: 0.95" in lines  # the default, and what the config binds
    assert "  data.name = 'mnist1d'    # bound: 'digits'" in lines
    assert "data.batch_size" not in text and "data.seed" not in text  # not bindable (denylisted)
    assert "reinit_study" not in text  # a study's parameters only for that study
    assert "  reinit_study.variants = ('original', 'new_init', 'reshuffle', 'signed_constant')" in \
        cli.gin_reference(["keras_sparse.studies.reinit"]).splitlines()


def test_study_gin_help_exits_0_without_a_logdir(background):
    directory, result = background.result(__name__, "study_gin_help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "structure_study.freeze_epochs = (0.25, 0.5, 1.0, 2.0)" in result.stdout
    assert "training.epochs = 60    # bound:" in result.stdout
    assert not list(directory.iterdir())  # nothing run, nothing written


@pytest.mark.parametrize("raised,code,line", [
    (TrainingInterrupted("Stopped by SIGINT at step 7; checkpoint /tmp/r/ckpt-7 written: rerun the same command "
                         "to resume.\nIn call to configurable 'training'", signal.SIGINT), 130,
     "Stopped by SIGINT at step 7; checkpoint /tmp/r/ckpt-7 written: rerun the same command to resume."),
    (TrainingInterrupted("Stopped by SIGTERM at step 3 (no logdir: nothing was saved).", signal.SIGTERM), 143,
     "Stopped by SIGTERM at step 3 (no logdir: nothing was saved)."),
    (KeyboardInterrupt(), 130, "Interrupted (Ctrl-C) outside the training loop: nothing was saved."),
    (ConfigError("Bad gin config: x\nIn call to configurable 'data'"), "error: Bad gin config: x", None),
])
def test_run_main_exits_with_one_line_and_the_signal_exit_code(raised, code, line, monkeypatch, capsys):
    def job():
        raise raised

    monkeypatch.setattr(cli, "parse_flags_into_gin", lambda: None)
    with pytest.raises(SystemExit) as stop:
        cli.run_main(job)
    assert stop.value.code == code
    if line is not None:
        assert capsys.readouterr().err.splitlines() == [line]


def test_summarize_explains_its_arguments_and_reports_a_bad_logdir(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        commands.summarize(["--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert "LOGDIR" in help_text and "metrics.json" in help_text and "Markdown table" in help_text
    with pytest.raises(SystemExit) as stop:
        commands.summarize([str(tmp_path)])
    assert str(stop.value.code).startswith("error: ") and "metrics.json" in str(stop.value.code)
    assert "\n" not in str(stop.value.code)
    with pytest.raises(SystemExit) as stop:
        commands.summarize([])  # argparse: LOGDIR is required
    assert stop.value.code == 2


def test_summarize_binary_help(monkeypatch, capsys):
    """binaries/summarize.py itself (run in this process: TensorFlow is already imported)."""
    monkeypatch.setattr(sys, "argv", ["binaries/summarize.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(ROOT, "binaries", "summarize.py"), run_name="__main__")
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python binaries/summarize.py [-h] LOGDIR [LOGDIR ...]")


def grid_flags(*argv):
    values = flags.FlagValues()
    cli.define_grid_flags(values)
    values(["study", *argv])
    return values


@pytest.mark.parametrize("argv, executor", [
    ((), type(None)), (("--jobs=4",), type(None)), (("--cell=3",), grid.OneCell), (("--list_cells",), grid.ListCells),
    (("--assemble",), grid.Assemble), (("--executor=ray", "--gpus_per_cell=0.5"), grid.Ray)])
def test_the_study_flags_choose_the_grid_executor(argv, executor):
    chosen = commands.grid_executor(grid_flags(*argv), program=["python", "x_study.py"])
    assert isinstance(chosen, executor)
    if executor is grid.Ray:
        assert (chosen.address, chosen.cpus_per_cell, chosen.gpus_per_cell) == (None, 1, 0.5)


@pytest.mark.parametrize("argv, message", [
    (("--cell=1", "--list_cells"), "--cell=1 and --list_cells exclude each other"),
    (("--assemble", "--executor=ray"), "--assemble and --executor=ray exclude each other"),
    (("--jobs=2", "--cell=0"), "--jobs=2 runs cells in processes on this machine, not with --cell=0"),
    (("--gpus_per_cell=1",), "--gpus_per_cell apply to --executor=ray only")])
def test_conflicting_study_flags_exit_with_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        commands.grid_executor(grid_flags(*argv), program=["python", "x_study.py"])


def test_binaries_run_the_library_beside_them(background):
    """A binary of a checkout imports that checkout's keras_sparse, not another one on the path
    (an editable install of another checkout, say): a decoy package first on PYTHONPATH is not
    imported."""
    _, result = background.result(__name__, "binary_beside_a_decoy")
    assert "decoy" not in result.stdout + result.stderr
    assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's --help exits with 1
