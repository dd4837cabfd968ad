"""Tests for keras_sparse.studies.grid: results stored per cell, reruns skip finished cells."""

import json
import os

import pytest

from keras_sparse.errors import ConfigError
from keras_sparse.studies.grid import cell_id, run_grid

CALLS = []


def square(cell):
    CALLS.append(dict(cell))
    if cell.get("fail"):
        raise RuntimeError("interrupted")
    return {"value": cell["x"] ** 2}


def test_cell_id_is_file_name_safe():
    assert cell_id({"algorithm": "rigl", "sparsity": 0.9, "seed": 0}) == "algorithm=rigl,sparsity=0.9,seed=0"
    assert "/" not in cell_id({"name": "a/b c"})


def test_results_in_cell_order_and_stored_as_they_end(tmp_path):
    CALLS.clear()
    cells = [{"x": 3}, {"x": 1}, {"x": 2}]
    assert run_grid(str(tmp_path), cells, square, log=lambda _: None) == [{"value": 9}, {"value": 1}, {"value": 4}]
    stored = json.loads((tmp_path / "cells" / "x=1.json").read_text())
    assert stored == {"cell": {"x": 1}, "result": {"value": 1}}


def test_interrupted_grid_keeps_finished_cells_and_reruns_only_the_rest(tmp_path):
    CALLS.clear()
    cells = [{"x": 1}, {"x": 2, "fail": True}, {"x": 3}]
    with pytest.raises(RuntimeError):
        run_grid(str(tmp_path), cells, square, log=lambda _: None)
    assert os.path.exists(tmp_path / "cells" / "x=1.json")
    assert not any(name.startswith("x=2") for name in os.listdir(tmp_path / "cells"))
    CALLS.clear()
    cells[1] = {"x": 2, "fail": False}
    results = run_grid(str(tmp_path), cells, square, log=lambda _: None)
    assert [c["x"] for c in CALLS] == [2, 3]  # x=1 was not redone
    assert results == [{"value": 1}, {"value": 4}, {"value": 9}]


def test_repeated_cells_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="repeated cells"):
        run_grid(str(tmp_path), [{"x": 1}, {"x": 1}], square, log=lambda _: None)


def test_parallel_jobs_give_the_same_results(tmp_path):
    cells = [{"x": x} for x in range(4)]
    assert run_grid(str(tmp_path), cells, square, jobs=2, log=lambda _: None) == [{"value": x * x} for x in range(4)]
    assert len(os.listdir(tmp_path / "cells")) == 4
