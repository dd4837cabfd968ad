"""Tests for keras_sparse.studies.grid: results stored per cell, reruns skip finished cells, failed
cells named with their logs, and every executor (local processes, one cell, listed commands,
assembly from the cells done) on one code path. The Ray executor: tests/test_grid_ray.py."""

import json
import os
import shlex
import sys
import threading
import time

import gin
import pytest

from keras_sparse import files
from keras_sparse.errors import ConfigError
from keras_sparse.studies import common, grid
from keras_sparse.studies.grid import GridError, GridStopped, cell_id, run_grid

CALLS = []


@gin.configurable("grid_test")
def offset(value: int = 0) -> int:
    return value


def square(cell):
    CALLS.append(dict(cell))
    print(f"working on x={cell['x']}", flush=True)
    if cell.get("fail"):
        raise RuntimeError("interrupted")
    if cell.get("bad_input"):
        raise ConfigError("unknown algorithm 'rigel': use one of dense, rigl")
    return {"value": cell["x"] ** 2 + offset()}


def quiet(_):
    pass


def test_cell_id_is_file_name_safe():
    assert cell_id({"algorithm": "rigl", "sparsity": 0.9, "seed": 0}) == "algorithm=rigl,sparsity=0.9,seed=0"
    assert "/" not in cell_id({"name": "a/b c"})


def test_results_in_cell_order_and_stored_as_they_end(tmp_path):
    CALLS.clear()
    cells = [{"x": 3}, {"x": 1}, {"x": 2}]
    assert run_grid(str(tmp_path), cells, square, log=quiet) == [{"value": 9}, {"value": 1}, {"value": 4}]
    stored = json.loads((tmp_path / "cells" / "x=1.json").read_text())
    assert stored["cell"] == {"x": 1} and stored["result"] == {"value": 1}
    assert stored["seconds"] >= 0 and stored["host"]
    assert not list((tmp_path / "cells").glob("*.log"))  # run in this process: the console is its log


def test_a_failed_cell_is_named_with_its_log_the_others_run_and_a_rerun_runs_only_it(tmp_path, capsys):
    CALLS.clear()
    cells = [{"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    with pytest.raises(GridError, match=r"1 of 3 cells failed: x=2,fail=True;.*rerunning the same command"):
        run_grid(str(tmp_path), cells, square)
    report = capsys.readouterr()
    log = tmp_path / "cells" / "x=2,fail=True.log"
    assert f"FAILED: x=2,fail=True: RuntimeError: interrupted (log: {log})" in report.out
    assert "RuntimeError: interrupted" in log.read_text() and "Traceback" in report.err
    assert [c["x"] for c in CALLS] == [1, 2, 3]  # the failure did not stop the grid
    assert {p.name for p in (tmp_path / "cells").iterdir()} == {"x=1.json", "x=3.json", "x=2,fail=True.log"}
    CALLS.clear()
    results = run_grid(str(tmp_path), cells, lambda cell: square({**cell, "fail": False}), log=quiet)  # fixed
    assert [c["x"] for c in CALLS] == [2]  # x=1 and x=3 were not redone
    assert results == [{"value": 1}, {"value": 4}, {"value": 9}]
    assert not log.exists()  # the stale log of the failure went


def test_bad_input_in_a_cell_stops_the_grid_at_once(tmp_path):
    CALLS.clear()
    cells = [{"x": 1}, {"x": 2, "bad_input": True}, {"x": 3}]
    with pytest.raises(ConfigError, match=r"^cell x=2,bad_input=True: unknown algorithm 'rigel'"):
        run_grid(str(tmp_path), cells, square, log=quiet)
    assert [c["x"] for c in CALLS] == [1, 2]


def test_repeated_cells_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="repeated cells"):
        run_grid(str(tmp_path), [{"x": 1}, {"x": 1}], square, log=quiet)


def in_which_process(cell):
    print(f"working on x={cell['x']}", flush=True)
    return {"pid": os.getpid()}


def test_one_job_hands_the_cells_left_to_fresh_processes_once_memory_maps_run_low(tmp_path, monkeypatch):
    """A long grid in one process would die when XLA's compiled programs exhaust the process's
    memory maps: past half of them, the cells left run one by one in fresh processes."""
    maps = iter([(10, 100), (60, 100)])  # before the first cell: room; before the second: past half
    monkeypatch.setattr(grid, "memory_maps", lambda: next(maps))
    lines = []
    results = run_grid(str(tmp_path), [{"x": x} for x in range(3)], in_which_process, log=lines.append)
    assert results[0]["pid"] == os.getpid()
    assert len({os.getpid(), results[1]["pid"], results[2]["pid"]}) == 3  # a fresh process for each
    assert any("60 of its 100 memory maps" in line and "the 2 cells left run one by one in fresh processes" in line
               for line in lines)
    assert (tmp_path / "cells" / "x=2.log").read_text() == "working on x=2\n"


def test_memory_maps_counts_this_process():
    used, limit = grid.memory_maps()
    assert 0 < used < limit


def test_parallel_jobs_give_the_same_results_and_keep_each_cells_output_in_its_log(tmp_path):
    cells = [{"x": x} for x in range(2)] + [{"x": 2, "fail": True}]  # a fresh process each: 3 in all
    lines = []
    gin.clear_config()
    gin.parse_config(["grid_test.value = 100"])  # the workers get this process's gin configuration
    try:
        with pytest.raises(GridError, match="1 of 3 cells failed: x=2,fail=True"):
            run_grid(str(tmp_path), cells, square, jobs=2, log=lines.append)
    finally:
        gin.clear_config()
    assert run_grid(str(tmp_path), cells[:2], square, jobs=2, log=quiet) == [{"value": x * x + 100} for x in range(2)]
    for x in range(2):
        assert (tmp_path / "cells" / f"x={x}.log").read_text() == f"working on x={x}\n"
    failed = (tmp_path / "cells" / "x=2,fail=True.log").read_text()
    assert failed.startswith("working on x=2\nTraceback") and "RuntimeError: interrupted" in failed
    report = next(line for line in lines if "FAILED" in line)
    assert "its last lines:" in report and "    RuntimeError: interrupted" in report


def test_one_cell_runs_alone_and_the_last_one_returns_every_result(tmp_path):
    CALLS.clear()
    cells = [{"x": 1}, {"x": 2}]
    with pytest.raises(GridStopped, match="1 of 2 cells done, 1 to go"):
        run_grid(str(tmp_path), cells, square, executor=grid.OneCell(1), log=quiet)
    assert CALLS == [{"x": 2}]
    lines = []
    assert run_grid(str(tmp_path), cells, square, executor=grid.OneCell(0), log=lines.append) == [
        {"value": 1}, {"value": 4}]
    assert lines[-1] == "All 2 cells are done: writing the study's tables."
    lines.clear()
    assert run_grid(str(tmp_path), cells, square, executor=grid.OneCell(0), log=lines.append)[0] == {"value": 1}
    assert lines[0] == "Cell 0 of 2 (x=1) is already done." and len(CALLS) == 2
    with pytest.raises(ConfigError, match=r"--cell=2: this grid has 2 cells, numbered 0 to 1"):
        run_grid(str(tmp_path), cells, square, executor=grid.OneCell(2), log=quiet)


def test_one_cell_sees_the_cells_that_finished_elsewhere_while_it_ran(tmp_path):
    cells = [{"x": 1}, {"x": 2}]

    def cell_while_another_machine_finishes_x1(cell):
        grid.record(str(tmp_path), cells[0], grid.Outcome(0, {"value": 1}))
        return square(cell)
    # x=1 was not done when this run started; it is when x=2 ends: this run finishes the grid.
    assert run_grid(str(tmp_path), cells, cell_while_another_machine_finishes_x1, executor=grid.OneCell(1),
                    log=quiet) == [{"value": 1}, {"value": 4}]


def test_list_cells_prints_a_command_per_cell_to_do_and_keeps_the_config_in_the_logdir(tmp_path, capsys):
    gin.clear_config()
    gin.parse_config(["training.epochs = 3"])
    run_grid(str(tmp_path), [{"x": 1}], square, log=quiet)
    capsys.readouterr()
    cells = [{"x": 1}, {"x": 2}, {"x": 3}]
    program = [sys.executable, "/somewhere/binaries/reinit_study.py"]
    with pytest.raises(GridStopped, match="2 of 3 cells to run"):
        run_grid(str(tmp_path), cells, square, executor=grid.ListCells(program))
    out = capsys.readouterr().out
    commands = [shlex.split(line) for line in out.splitlines()]
    assert [c[-1] for c in commands] == ["--cell=1", "--cell=2"]  # cell 0 is done
    config = commands[0][2]
    assert commands[0][:2] == program and config.startswith(f"--gin_config={tmp_path}{os.sep}grid-")
    assert commands[0][3] == f"--logdir={tmp_path}" and all(c[:4] == commands[0][:4] for c in commands)
    assert open(config.split("=", 1)[1]).read() == gin.config_str() and "training.epochs = 3" in gin.config_str()
    gin.clear_config()


def test_assemble_returns_the_cells_done_and_names_the_others(tmp_path):
    cells = [{"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    with pytest.raises(ConfigError, match="No cell of this grid is done"):
        run_grid(str(tmp_path), cells, square, executor=grid.Assemble(), log=quiet)
    with pytest.raises(GridError):
        run_grid(str(tmp_path), cells[:2], square, log=quiet)
    lines = []
    results = run_grid(str(tmp_path), cells, square, executor=grid.Assemble(), log=lines.append)
    assert results == [{"value": 1}, None, None]
    assert grid.finished(cells, results) == [({"x": 1}, {"value": 1})]
    assert grid.missing(cells, results) == ["x=2,fail=True", "x=3"]
    assert lines == ["Writing the study's tables from 1 of 3 cells; not done: x=2,fail=True, x=3 "
                     "(1 of them failed last time: see their logs)."]


def test_using_sets_the_executor_of_the_grids_in_its_block(tmp_path):
    with grid.using(grid.OneCell(0)):
        with pytest.raises(GridStopped):
            run_grid(str(tmp_path), [{"x": 1}, {"x": 2}], square, log=quiet)
    assert run_grid(str(tmp_path), [{"x": 1}, {"x": 2}], square, log=quiet) == [{"value": 1}, {"value": 4}]


def test_the_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, an optional extra: pip install -e '\.\[ray\]'"):
        run_grid(str(tmp_path), [{"x": 1}], square, executor=grid.Ray(), log=quiet)


def test_concurrent_writers_of_one_file_never_leave_it_partial(tmp_path):
    path = str(tmp_path / "result.json")
    seen, errors = [], []

    def write(n):
        for _ in range(30):
            files.write_json(path, {"writer": n, "payload": [n] * 2000})

    def read():
        for _ in range(200):
            if os.path.exists(path):
                try:
                    value = files.read_json(path)
                except ConfigError as error:
                    errors.append(error)
                else:
                    seen.append(set(value["payload"]) == {value["writer"]})
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and all(seen)
    assert os.listdir(tmp_path) == ["result.json"]  # no temporary file left


def test_partial_tables_say_which_cells_are_missing(tmp_path):
    assert common.percent([]) == "—" and common.number([]) == "—"
    common.write_results(str(tmp_path), "reinit", {}, [], "# Title\n\nTable.", {}, missing=["x=2"])
    assert json.loads((tmp_path / "results.json").read_text())["missing_cells"] == ["x=2"]
    assert (tmp_path / "results.md").read_text() == (
        "# Title\n\n**Partial:** 1 cell of the grid not done yet, left out: x=2.\n\nTable.\n")


def test_a_study_stores_its_wall_time_and_each_cells_time_a_rerun_keeps_the_stored_times(tmp_path, capsys):
    cells = [{"x": 1}, {"x": 2}]
    started = time.time()
    run_grid(str(tmp_path), cells, square, log=quiet)
    spent = common.cost(str(tmp_path), cells, started)
    assert spent["cells_done"] == spent["cells_ran_now"] == 2 and spent["wall_seconds"] >= 0
    assert [c["cell"] for c in spent["cells"]] == ["x=1", "x=2"] and all(c["ran_now"] for c in spent["cells"])
    stored = [json.loads((tmp_path / "cells" / f"x={x}.json").read_text()) for x in (1, 2)]
    assert [c["seconds"] for c in spent["cells"]] == [s["seconds"] for s in stored]
    assert spent["cell_seconds"] == pytest.approx(sum(s["seconds"] for s in stored), abs=0.1)

    # A rerun skips both cells: each keeps the time stored when it ran, marked as not run now.
    again = time.time()
    run_grid(str(tmp_path), cells + [{"x": 3}], square, log=quiet)
    spent = common.cost(str(tmp_path), cells + [{"x": 3}], again)
    assert [(c["cell"], c["ran_now"]) for c in spent["cells"]] == [("x=1", False), ("x=2", False), ("x=3", True)]
    assert [c["seconds"] for c in spent["cells"][:2]] == [s["seconds"] for s in stored]

    common.write_results(str(tmp_path), "reinit", {}, [], "# Title\n\nTable.", {}, cells=cells + [{"x": 3}],
                         started=again)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cost"] == {**spent, "wall_seconds": results["cost"]["wall_seconds"]}
    line = (tmp_path / "results.md").read_text().splitlines()[-1]
    assert line.startswith("Cost: ") and "3 cells, 1 run by it" in line and "2 done before" in line
    assert "reinit study: Cost: " in capsys.readouterr().out


def test_a_partial_structure_table_shows_a_dash_for_a_missing_cell(tmp_path):
    from keras_sparse.studies import structure

    static = {"kind": "static", "seed": 0}
    os.makedirs(tmp_path / "cells")
    grid.record(str(tmp_path), static, grid.Outcome(0, result={"accuracy": 0.9, "dense_gradient_steps": 0,
                                                               "training_flops": 0.07, "steps": 10}, seconds=1.5))
    with grid.using(grid.Assemble()):
        structure.run(str(tmp_path), seeds=[0], freeze_epochs=[1.0])
    markdown = (tmp_path / "results.md").read_text()
    assert "nan" not in markdown.lower()
    assert "| rigl frozen @ 1 epoch | — | — | — |" in markdown and "| static | 90.0 | 0 | 0.0700 |" in markdown
    assert "**Partial:** 2 cells of the grid not done yet" in markdown


def test_the_reinit_tables_from_hand_made_cells_give_intervals_and_the_gap_to_the_static_mask(tmp_path):
    from keras_sparse.studies import reinit

    os.makedirs(tmp_path / "cells")
    accuracies = {("magnitude", 0): 0.60, ("magnitude", 1): 0.62, ("magnitude", 2): 0.64,
                  ("rigl", 0): 0.50, ("rigl", 1): 0.52, ("static", 0): 0.40, ("static", 1): 0.46, ("static", 2): 0.43}
    for (algorithm, seed), value in accuracies.items():
        grid.record(str(tmp_path), {"algorithm": algorithm, "sparsity": 0.9, "seed": seed},
                    grid.Outcome(0, result={"original": value, "sparsity_reached": 0.9, "variants": {}}, seconds=2.0))
    with grid.using(grid.Assemble()):
        reinit.run(str(tmp_path), algorithms=["magnitude", "rigl", "static"], sparsities=[0.9], seeds=[0, 1, 2],
                   variants=[])
    markdown = (tmp_path / "results.md").read_text()
    # rigl's seed 2 is missing: the grid is partial, and the caption covers cells of 3 and 2 seeds.
    assert "**Partial:** 1 cell of the grid not done yet, left out: algorithm=rigl,sparsity=0.9,seed=2." in markdown
    assert ("Mean over seeds [0, 1, 2], with [min, max] over the seeds where a cell has fewer than 5 (too few for a "
            "95% interval).") in markdown
    assert "| magnitude | 0.9 | 62.0 [60.0, 64.0] |" in markdown and "| rigl | 0.9 | 51.0 [50.0, 52.0] |" in markdown
    # Magnitude is best: +19 points over static (43.0 [40.0, 46.0]); the larger sd is static's, 3.0 points.
    assert "| 0.9 | magnitude | 62.0 [60.0, 64.0] | 43.0 [40.0, 46.0] | +19.0 | 3.0 | yes |" in markdown
    assert json.loads((tmp_path / "results.json").read_text())["cost"]["cell_seconds"] == 16.0
