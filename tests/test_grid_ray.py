"""The Ray executor (keras_sparse.studies.grid.Ray) on a local Ray cluster that this module starts
and stops: each cell a Ray task with its resource request, failures named with their logs, and a
study's results identical to --jobs 1. Ray is an optional extra (pip install -e '.[ray]'); CI
installs only .[test], so there these tests are skipped, with the reason."""

import json
import os

import gin
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: the Ray executor is the optional extra "
                                        "'ray' (pip install -e '.[ray]'); CI installs only '.[test]'")

from keras_sparse.config import parse_gin  # noqa: E402
from keras_sparse.studies import further_pruning, grid  # noqa: E402
from keras_sparse.studies.grid import GridError, run_grid  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# As tests/test_study_binaries.py's TINY, with one epoch and static masks (the cheapest to build):
# a cell trains for about a second.
TINY = ["training.epochs = 1", "training.batch_size = 500", "model.width = 8", "training.jit_compile = False",
        'further_pruning_study.algorithms = ["static"]', "further_pruning_study.sparsities = [0.8]",
        "further_pruning_study.seeds = [0, 1]", "further_pruning_study.extra_sparsities = [0.0, 0.5]"]


@pytest.fixture(scope="module")
def cluster():
    """A new local cluster of 2 CPUs and 1 (declared) GPU; its workers import this module by name."""
    path = os.pathsep.join(p for p in (TESTS, ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def square_on_ray(cell):
    print(f"working on x={cell['x']}", flush=True)
    if cell.get("fail"):
        raise RuntimeError("interrupted")
    return {"value": cell["x"] ** 2, "resources": ray.get_runtime_context().get_assigned_resources(),
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


# The tests run in this order: CPU tasks reuse their worker processes (which have imported
# TensorFlow by then), so the study's cells start at once; a GPU task gets a fresh worker.

def test_each_cell_is_a_ray_task_and_a_failure_is_named_with_its_log(cluster, tmp_path):
    cells = [{"x": 3}, {"x": 2, "fail": True}]
    lines = []
    with pytest.raises(GridError, match=r"1 of 2 cells failed: x=2,fail=True; .*rerunning the same command"):
        run_grid(str(tmp_path), cells, square_on_ray, executor=grid.Ray(), log=lines.append)
    assert lines[0] == "0 of 2 cells already done; running 2 as Ray tasks of 1 CPU and 0 GPU each."
    stored = json.loads((tmp_path / "cells" / "x=3.json").read_text())["result"]
    assert stored["value"] == 9 and stored["resources"] == {"CPU": 1.0}
    assert (tmp_path / "cells" / "x=3.log").read_text() == "working on x=3\n"  # the task's output, captured
    log = (tmp_path / "cells" / "x=2,fail=True.log").read_text()
    assert log.startswith("working on x=2\nTraceback") and log.rstrip().endswith("RuntimeError: interrupted")
    report = next(line for line in lines if "FAILED" in line)
    assert report.startswith("[1/2] FAILED: " if report.startswith("[1/2]") else "[2/2] FAILED: ")
    assert f"FAILED: x=2,fail=True: RuntimeError: interrupted (log: {tmp_path}" in report
    assert "    RuntimeError: interrupted" in report  # the log's last lines, under its name


def test_a_study_on_ray_gives_the_results_of_jobs_1_and_a_rerun_skips_its_cells(cluster, tmp_path):
    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", "further_pruning.gin")], TINY)
        with grid.using(grid.Ray()):
            on_ray = further_pruning.run(str(tmp_path / "ray"))
        assert {p.name for p in (tmp_path / "ray" / "cells").glob("*.log")} == {
            "algorithm=static,sparsity=0.8,seed=0.log", "algorithm=static,sparsity=0.8,seed=1.log"}
        lines = []
        assert run_grid(str(tmp_path / "ray"), [{"algorithm": "static", "sparsity": 0.8, "seed": 1}],
                        further_pruning.further_pruning_cell, executor=grid.Ray(), log=lines.append)
        assert lines == ["1 of 1 cells already done; running 0 as Ray tasks of 1 CPU and 0 GPU each."]
        assert further_pruning.run(str(tmp_path / "jobs1"), jobs=1) == on_ray  # in this process, one by one
    finally:
        gin.clear_config()
    assert (tmp_path / "ray" / "results.md").read_text() == (tmp_path / "jobs1" / "results.md").read_text()


def test_each_cell_requests_the_gpus_per_cell(cluster, tmp_path):
    lines = []
    [result] = run_grid(str(tmp_path), [{"x": 1}], square_on_ray,
                        executor=grid.Ray(cpus_per_cell=0.5, gpus_per_cell=0.5), log=lines.append)
    assert lines[0] == "0 of 1 cells already done; running 1 as Ray tasks of 0.5 CPU and 0.5 GPU each."
    assert result == {"value": 1, "resources": {"CPU": 0.5, "GPU": 0.5}, "visible_gpus": "0"}
