"""PNG plots of one training run, read from its logdir's ``metrics.json``.

    from keras_sparse import plotting
    plotting.plot_run("/tmp/run1")            # writes /tmp/run1/layer_sparsity.png, training_curves.png

or ``python binaries/plot.py /tmp/run1 [--out DIR]``.

- ``layer_sparsity.png``: a bar per masked kernel with its final sparsity, and the overall
  sparsity as a dashed line named at its right end.
- ``training_curves.png``: per epoch, the training and validation loss, the validation accuracy
  (with the final test accuracy as a marker), and the sparsity (overall, and per layer when
  the history records carry ``layer_sparsity``).

``plot_interval`` draws values over seeds on any matplotlib Axes as their mean with its interval
(``keras_sparse.intervals``) as a band or error bars: the studies' plots use it.

Only matplotlib's object-oriented API and its Agg canvas are used: no pyplot, no change to the
process's matplotlib backend, no display needed.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from keras_sparse.errors import ConfigError
from keras_sparse.files import read_metrics
from keras_sparse.intervals import Interval, interval

LAYER_SPARSITY_PNG = "layer_sparsity.png"
CURVES_PNG = "training_curves.png"
MAX_LEGEND_LAYERS = 10


def _number(value: Any) -> float:
    """A metric as a float; NaN for a missing value. ``metrics.json`` writes NaN/inf as strings."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def final_layer_sparsity(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{mask key: sparsity}`` at the end of the run (top-level ``layer_sparsity``, else the
    last history record's)."""
    layers = metrics.get("layer_sparsity")
    if not layers:
        history = metrics.get("history") or []
        layers = next((r["layer_sparsity"] for r in reversed(history) if r.get("layer_sparsity")), None)
    return {str(k): _number(v) for k, v in (layers or {}).items()}


def layer_sparsity_figure(metrics: Mapping[str, Any]) -> Figure:
    """Bar chart of the final per-layer sparsity (in %), the overall sparsity dashed."""
    layers = final_layer_sparsity(metrics)
    if not layers:
        raise ConfigError("metrics.json has no 'layer_sparsity' (top level or in 'history'): nothing to plot.")
    names = list(layers)
    values = [100.0 * layers[n] for n in names]
    figure = Figure(figsize=(max(5.5, 0.55 * len(names) + 2.5), 4.0))  # + the overall line's name
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    positions = range(len(names))
    bars = ax.bar(positions, values, color="tab:blue")
    for bar, value in zip(bars, values):
        if math.isfinite(value):
            # On a white box: readable where the overall line crosses it.
            ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    overall = _number(metrics.get("sparsity"))
    if math.isfinite(overall):
        label = f"overall {100.0 * overall:.1f}%"
        ax.axhline(100.0 * overall, color="tab:red", linestyle="--", linewidth=1, label=label)
        # Named at its end, outside the axes: a legend inside covered the bars' value labels.
        ax.annotate(label, xy=(1.0, 100.0 * overall), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize=8, color="tab:red")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 110)  # room above a 100% bar for its label
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("sparsity (%)")
    ax.set_title(_title(metrics, "final sparsity per layer"), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [_number(record.get(key)) for record in history]


def _has_values(values: Sequence[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def curves_figure(metrics: Mapping[str, Any]) -> Figure:
    """Loss, accuracy (%) and sparsity (%) per epoch, in three panels side by side."""
    history = [r for r in metrics.get("history") or [] if isinstance(r, Mapping)]
    if not history:
        raise ConfigError("metrics.json has an empty 'history': there are no epochs to plot.")
    epochs = []
    for i, record in enumerate(history):
        epoch = _number(record.get("epoch"))
        epochs.append(int(epoch) if math.isfinite(epoch) else i + 1)
    figure = Figure(figsize=(13.0, 3.8))
    FigureCanvasAgg(figure)
    loss_ax, accuracy_ax, sparsity_ax = figure.subplots(1, 3)

    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = _series(history, key)
        if _has_values(values):
            loss_ax.plot(epochs, values, marker=".", label=label)
    loss_ax.set_title("loss")

    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        values = _series(history, key)
        if _has_values(values):
            accuracy_ax.plot(epochs, [100.0 * v for v in values], marker=".", label=label)
    test_accuracy = _number(metrics.get("test_accuracy"))
    if math.isfinite(test_accuracy):
        accuracy_ax.plot([epochs[-1]], [100.0 * test_accuracy], marker="*", markersize=11, linestyle="none",
                         color="tab:red", label=f"test {100.0 * test_accuracy:.1f}%")
    accuracy_ax.set_title("accuracy (%)")

    overall = _series(history, "sparsity")
    if _has_values(overall):
        sparsity_ax.plot(epochs, [100.0 * v for v in overall], marker=".", color="black", linewidth=2,
                         label="overall")
    layer_keys = list(dict.fromkeys(key for r in history for key in (r.get("layer_sparsity") or {})))
    many = len(layer_keys) > MAX_LEGEND_LAYERS  # then thin grey lines, one legend entry for all
    for i, key in enumerate(layer_keys):
        values = [100.0 * _number((r.get("layer_sparsity") or {}).get(key)) for r in history]
        if many:
            sparsity_ax.plot(epochs, values, color="grey", linewidth=0.7, alpha=0.6,
                             label=f"{len(layer_keys)} layers" if i == 0 else None)
        else:
            sparsity_ax.plot(epochs, values, linewidth=1, alpha=0.8, label=key)
    sparsity_ax.set_title("sparsity (%)")
    sparsity_ax.set_ylim(-2, 102)

    for ax in (loss_ax, accuracy_ax, sparsity_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    figure.suptitle(_title(metrics, "training curves"), fontsize=10)
    figure.tight_layout()
    return figure


def plot_interval(ax: Axes, xs: Sequence[float], samples: Sequence[Sequence[float]], scale: float = 1.0,
                  style: str = "band", label: str | None = None, **line) -> list[Interval]:
    """Plots, at each ``xs[i]``, the mean of ``samples[i]`` (the values over seeds) times ``scale``,
    joined by a line, with its interval (``intervals.interval``: 95% Student-t for 5 or more
    seeds, min–max for fewer) as a shaded ``"band"`` or as ``"bars"`` (error bars). Points with
    no values are left out; a point with one value has no band. ``line`` goes to ``ax.plot``
    (``marker``, ``color``, …). Returns the intervals, in ``xs`` order."""
    if style not in ("band", "bars"):
        raise ValueError(f"style must be 'band' or 'bars', got {style!r}.")
    stats = [interval(values).scaled(scale) for values in samples]
    kept = [(x, s) for x, s in zip(xs, stats) if s.n and math.isfinite(s.mean)]
    if not kept:
        return stats
    x, means = [p for p, _ in kept], [s.mean for _, s in kept]
    lows, highs = [s.low for _, s in kept], [s.high for _, s in kept]
    if style == "bars":
        ax.errorbar(x, means, yerr=[[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]],
                    capsize=3, label=label, **line)
        return stats
    (drawn,) = ax.plot(x, means, label=label, **line)
    if any(s.n > 1 for _, s in kept):
        ax.fill_between(x, lows, highs, color=drawn.get_color(), alpha=0.2, linewidth=0)
    return stats


def _title(metrics: Mapping[str, Any], what: str) -> str:
    algorithm = metrics.get("algorithm")
    name = algorithm.get("name") if isinstance(algorithm, Mapping) else algorithm
    parts = [str(p) for p in (metrics.get("model"), metrics.get("data"), name) if p]
    if "seed" in metrics:
        parts.append(f"seed {metrics['seed']}")
    return f"{what}: {', '.join(parts)}" if parts else what


def plot_run(logdir: str, out_dir: str | None = None) -> dict[str, str]:
    """Reads ``logdir/metrics.json`` and writes ``layer_sparsity.png`` and ``training_curves.png``
    into ``out_dir`` (default: ``logdir``). Returns ``{"layer_sparsity": path, "curves": path}``.

    Raises:
        ConfigError: if ``metrics.json`` is missing or unreadable, or lacks the per-layer
            sparsities or the per-epoch history; nothing is written then.
    """
    metrics = read_metrics(logdir)
    figures = {"layer_sparsity": (layer_sparsity_figure(metrics), LAYER_SPARSITY_PNG),
               "curves": (curves_figure(metrics), CURVES_PNG)}  # both built before anything is written
    out_dir = out_dir or logdir
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, (figure, filename) in figures.items():
        paths[key] = os.path.join(out_dir, filename)
        figure.savefig(paths[key], dpi=100)
    return paths
