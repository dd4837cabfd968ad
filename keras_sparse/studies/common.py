"""Pieces every study shares: training one network, writing results, summarising over seeds.

Values over seeds are reported as a mean and a 95% interval (``keras_sparse.intervals``):
Student-t for 5 or more seeds, min–max for fewer, the value alone for one; every table's
caption says which (``caption``).
"""

from __future__ import annotations

import io
import os
import time
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: studies run on machines without a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_sparse import files  # noqa: E402
from keras_sparse.algorithms import SparseAlgorithm, get  # noqa: E402
from keras_sparse.experiment import Run, TrainingSettings, build_run  # noqa: E402
from keras_sparse.intervals import describe, format_interval  # noqa: E402
from keras_sparse.studies import grid  # noqa: E402


def make_algorithm(name: str, sparsity: float, **overrides: Any) -> SparseAlgorithm:
    """The registered algorithm ``name`` at ``sparsity``; its other arguments come from gin."""
    cls = get(name)
    if name == "dense":
        return cls(**overrides)
    return cls(sparsity=sparsity, **overrides)


def train_network(algorithm: SparseAlgorithm, seed: int, model_seed: int | None = None,
                  callbacks: Sequence = (), before_fit=None) -> Run:
    """Builds the gin-configured run with ``algorithm`` and trains it (no logdir, no export).

    ``before_fit(run)`` may change the run (e.g. set initial kernels) before training starts.
    """
    run = build_run(seed, algorithm, TrainingSettings(), model_seed=model_seed)
    if before_fit is not None:
        before_fit(run)
    run.trainer.fit(run.data.train_epoch, run.settings.epochs, validation_data=None,
                    steps_per_epoch=run.data.steps_per_epoch, callbacks=callbacks)
    return run


def evaluate(run: Run) -> float:
    """Test accuracy of the run's model as it is now."""
    return run.trainer.evaluate(run.data.test)["accuracy"]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; NaN for no values (a cell not done yet)."""
    array = np.asarray(list(values), float)
    if not array.size:
        return float("nan"), float("nan")
    return float(array.mean()), float(array.std())


def group(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], value: str) -> dict[tuple, list[float]]:
    """``{(row[k] for k in keys): [row[value], …]}``, in first-seen order."""
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row[k] for k in keys)].append(row[value])
    return grouped


def percent(values: Sequence[float]) -> str:
    """``"95.2 [94.1, 96.3]"`` (in %): the mean over seeds and its 95% interval (``intervals.interval``:
    Student-t for 5 or more seeds, min–max for fewer); the value alone for one seed; ``"—"`` for none."""
    return format_interval(values, scale=100.0, digits=1)


def number(values: Sequence[float], spec: str = ".0f") -> str:
    """The mean of ``values`` formatted with ``spec`` (a quantity the same for every seed, or
    whose spread is not the point: step counts, FLOPs); ``"—"`` for none (a cell not done)."""
    mean = mean_std(values)[0]
    return "—" if np.isnan(mean) else format(mean, spec)


def caption(groups: Mapping[Any, Sequence[float]], seeds: Sequence[int]) -> str:
    """The sentence a table's caption needs to say what its ``[a, b]`` are, from the values per
    cell (``group``'s output) over ``seeds``: a partial grid may have fewer seeds in some cells."""
    return describe((len(v) for v in groups.values()), seeds)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cost(logdir: str, cells: Sequence[Mapping[str, Any]], started: float) -> dict[str, Any]:
    """What a study's grid cost: ``wall_seconds`` of this command (from ``started``, a
    ``time.time()``), and per cell its ``seconds``, ``host`` and whether it ran in this command
    (``ran_now``: it finished after ``started``; the others were stored by earlier runs or other
    machines and keep the time stored when they ran). ``cell_seconds`` sums the cells done."""
    per_cell = []
    for cell in cells:
        stored = grid.stored_time(logdir, cell)
        if stored is not None:
            finished_at = stored.get("finished")
            per_cell.append({"cell": grid.cell_id(cell), "seconds": stored.get("seconds") or 0.0,
                             "host": stored.get("host"), "ran_now": finished_at is not None and finished_at >= started})
    return {"wall_seconds": round(time.time() - started, 1),
            "cell_seconds": round(sum(c["seconds"] for c in per_cell), 1),
            "cells_done": len(per_cell), "cells_ran_now": sum(c["ran_now"] for c in per_cell), "cells": per_cell}


def cost_line(spent: Mapping[str, Any]) -> str:
    """One sentence for results.md and the console: wall time, cells run now and before, their times."""
    now = [c["seconds"] for c in spent["cells"] if c["ran_now"]]
    before = [c["seconds"] for c in spent["cells"] if not c["ran_now"]]
    text = (f"Cost: {spent['wall_seconds']:.1f} s wall time for this command; {spent['cells_done']} cells, "
            f"{len(now)} run by it ({sum(now):.1f} s of cell time)")
    if before:
        text += f", {len(before)} done before ({sum(before):.1f} s when they ran)"
    return text + f"; {spent['cell_seconds']:.1f} s of cell time in all. Per-cell times are in results.json."


def write_results(logdir: str, study: str, settings: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                  markdown: str, figures: Mapping[str, plt.Figure], missing: Sequence[str] = (),
                  cells: Sequence[Mapping[str, Any]] | None = None, started: float | None = None) -> None:
    """Writes ``results.json`` (settings + every row), ``results.md`` and one PNG per figure, each
    atomically (cells finishing on several machines may write them at once). ``missing`` names
    the grid's cells not done yet (``--assemble`` writes tables without them): results.json
    lists them and results.md says so under its title. With the grid's ``cells`` and the
    ``time.time()`` the study ``started`` at, its cost (``cost``) goes into results.json under
    ``"cost"``, ends results.md, and is printed."""
    os.makedirs(logdir, exist_ok=True)
    result = {"study": study, "settings": dict(settings), "rows": list(rows)}
    if missing:
        result["missing_cells"] = list(missing)
        title, _, rest = markdown.partition("\n")
        count = f"{len(missing)} cell{'s' if len(missing) > 1 else ''} of the grid"
        markdown = f"{title}\n\n**Partial:** {count} not done yet, left out: {', '.join(missing)}.\n{rest}"
    if cells is not None and started is not None:
        spent = cost(logdir, cells, started)
        result["cost"] = spent
        markdown = markdown.rstrip() + "\n\n" + cost_line(spent)
        print(f"{study} study: {cost_line(spent)}", flush=True)
    files.write_json(os.path.join(logdir, "results.json"), result, indent=1)
    files.write_text(os.path.join(logdir, "results.md"), markdown.rstrip() + "\n")
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        files.write_bytes(os.path.join(logdir, f"{name}.png"), buffer.getvalue())
