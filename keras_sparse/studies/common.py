"""Pieces every study shares: training one network, writing results, summarising over seeds."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: studies run on machines without a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_sparse import files  # noqa: E402
from keras_sparse.algorithms import SparseAlgorithm, get  # noqa: E402
from keras_sparse.experiment import Run, TrainingSettings, build_run  # noqa: E402


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
    """``"95.2 ± 0.3"`` (in %) over seeds; just the value for one seed; ``"—"`` for none."""
    if not len(values):
        return "—"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if len(values) > 1 else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(logdir: str, study: str, settings: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                  markdown: str, figures: Mapping[str, plt.Figure], missing: Sequence[str] = ()) -> None:
    """Writes ``results.json`` (settings + every row), ``results.md`` and one PNG per figure, each
    atomically (cells finishing on several machines may write them at once). ``missing`` names
    the grid's cells not done yet (``--assemble`` writes tables without them): results.json
    lists them and results.md says so under its title."""
    os.makedirs(logdir, exist_ok=True)
    result = {"study": study, "settings": dict(settings), "rows": list(rows)}
    if missing:
        result["missing_cells"] = list(missing)
        title, _, rest = markdown.partition("\n")
        cells = f"{len(missing)} cell{'s' if len(missing) > 1 else ''} of the grid"
        markdown = f"{title}\n\n**Partial:** {cells} not done yet, left out: {', '.join(missing)}.\n{rest}"
    files.write_json(os.path.join(logdir, "results.json"), result, indent=1)
    files.write_text(os.path.join(logdir, "results.md"), markdown.rstrip() + "\n")
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        files.write_bytes(os.path.join(logdir, f"{name}.png"), buffer.getvalue())
