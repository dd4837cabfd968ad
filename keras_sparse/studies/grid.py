"""Running a study's grid of independent cells, resumably and optionally in parallel.

Each cell is a small dict of JSON values (algorithm, sparsity, seed, …). Its result is written
to ``<logdir>/cells/<cell id>.json`` the moment it ends, so a grid that is stopped and rerun
into the same logdir redoes at most the cell that was running. ``jobs > 1`` runs cells in
fresh processes (spawned, each with its own TensorFlow and the same gin configuration); they
share nothing but the files they write.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import re
from typing import Any, Callable, Mapping, Sequence

import gin

from keras_sparse import files
from keras_sparse.errors import ConfigError

Cell = Mapping[str, Any]
CellFunction = Callable[[Cell], Any]


def cell_id(cell: Cell) -> str:
    """A file-name-safe id such as ``algorithm=rigl,sparsity=0.9,seed=0``."""
    text = ",".join(f"{key}={value}" for key, value in cell.items())
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def _result_path(logdir: str, cell: Cell) -> str:
    return os.path.join(logdir, "cells", cell_id(cell) + ".json")


def _store(path: str, cell: Cell, result: Any) -> None:
    files.write_json(path, {"cell": dict(cell), "result": result}, indent=1)  # a kill leaves no half-written result


def _init_worker(gin_config: str, module: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    importlib.import_module(module)  # registers the configurables the config names
    gin.parse_config(gin_config)


def _call(job: tuple[CellFunction, Cell, str]) -> tuple[Cell, Any, str]:
    function, cell, path = job
    result = function(cell)
    _store(path, cell, result)
    return cell, result, path


def run_grid(logdir: str, cells: Sequence[Cell], function: CellFunction, jobs: int = 1,
             log: Callable[[str], None] = print) -> list[Any]:
    """Runs ``function(cell)`` for every cell without a stored result; returns all results in
    ``cells`` order. ``function`` must be a module-level function (it is pickled for ``jobs > 1``)."""
    os.makedirs(os.path.join(logdir, "cells"), exist_ok=True)
    ids = [cell_id(cell) for cell in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("The study grid has repeated cells: remove duplicate values from its lists.")
    results: dict[str, Any] = {}
    pending = []
    for cell in cells:
        path = _result_path(logdir, cell)
        if os.path.exists(path):
            results[cell_id(cell)] = files.read_json(path)["result"]
        else:
            pending.append((function, cell, path))
    log(f"{len(cells) - len(pending)} of {len(cells)} cells already done; running {len(pending)} with {jobs} job(s).")
    if jobs <= 1 or len(pending) <= 1:
        outcomes = map(_call, pending)
        for n, (cell, result, _) in enumerate(outcomes, 1):
            results[cell_id(cell)] = result
            log(f"[{n}/{len(pending)}] done: {cell_id(cell)}")
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(jobs, initializer=_init_worker,
                          initargs=(gin.config_str(), getattr(function, "func", function).__module__),
                          maxtasksperchild=1) as pool:
            for n, (cell, result, _) in enumerate(pool.imap_unordered(_call, pending), 1):
                results[cell_id(cell)] = result
                log(f"[{n}/{len(pending)}] done: {cell_id(cell)}")
    return [results[i] for i in ids]
