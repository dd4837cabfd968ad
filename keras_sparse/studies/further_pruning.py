"""Claim 2: structural robustness differs by algorithm (Van Gelder et al. 2020, §5).

Train each network, then prune a further fraction of its remaining weights by magnitude, per
layer and globally, with no retraining, and measure test accuracy at each total sparsity.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import gin
import matplotlib.pyplot as plt

from keras_sparse.errors import ConfigError
from keras_sparse.intervals import short_description
from keras_sparse.masking import get_masks, set_masks, sparsity
from keras_sparse.plotting import plot_interval
from keras_sparse.studies import common
from keras_sparse.studies.grid import finished, missing, run_grid
from keras_sparse.studies.measures import prune_further

SCOPES = ("layer", "global")


def further_pruning_cell(cell: dict, extra_sparsities: Sequence[float], scopes: Sequence[str]) -> dict[str, Any]:
    """Trains one network and evaluates it at every extra sparsity and scope."""
    run = common.train_network(common.make_algorithm(cell["algorithm"], cell["sparsity"]), cell["seed"])
    masks = get_masks(run.model)
    weights = {k.key: k.kernel.numpy() for k in run.trainer.kernels}
    points = []
    for scope in scopes:
        for extra in extra_sparsities:
            set_masks(run.model, prune_further(weights, masks, extra, scope))
            points.append({"scope": scope, "extra_sparsity": extra, "total_sparsity": sparsity(run.model),
                           "accuracy": common.evaluate(run)})
            # set_masks zeroed the pruned weights: put the trained network back.
            for kernel in run.trainer.kernels:
                kernel.kernel.assign(weights[kernel.key])
                kernel.mask.assign(masks[kernel.key])
    return {"trained_sparsity": run.trainer.sparsity(), "points": points}


@gin.configurable("further_pruning_study", denylist=["logdir", "jobs"])
def run(logdir: str, jobs: int = 1, algorithms: Sequence[str] = ("magnitude", "snip", "rigl", "static"),
        sparsities: Sequence[float] = (0.8, 0.9), seeds: Sequence[int] = (0,),
        extra_sparsities: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        scopes: Sequence[str] = SCOPES) -> list[dict]:
    """Runs the grid into ``logdir`` and writes results.json, results.md and further_pruning_<scope>.png
    (accuracy at each extra sparsity: mean and 95% interval over seeds), with the grid's wall
    time and per-cell times."""
    started = time.time()
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ConfigError(f"further_pruning_study.scopes names {unknown}: use some of {list(SCOPES)}.")
    cells = [{"algorithm": a, "sparsity": s, "seed": seed} for a in algorithms for s in sparsities for seed in seeds]
    cell_fn = functools.partial(further_pruning_cell, extra_sparsities=tuple(extra_sparsities), scopes=tuple(scopes))
    results = run_grid(logdir, cells, cell_fn, jobs)
    rows = [{**cell, **point} for cell, result in finished(cells, results) for point in result["points"]]
    accuracy = common.group(rows, ["scope", "algorithm", "sparsity", "extra_sparsity"], "accuracy")
    sections = []
    for scope in scopes:
        table = common.markdown_table(
            ["algorithm", "sparsity", *(f"+{e:g}" for e in extra_sparsities)],
            [[a, s, *(common.percent(accuracy[(scope, a, s, e)]) for e in extra_sparsities)]
             for a in algorithms for s in sparsities])
        caption = common.caption({k: v for k, v in accuracy.items() if k[0] == scope}, seeds)
        sections.append(f"## {scope} pruning\n\nTest accuracy (%) after removing the given fraction of the "
                        f"remaining weights, no retraining. {caption}\n\n{table}")
    markdown = "# Further pruning study\n\n" + "\n\n".join(sections)
    settings = {"algorithms": list(algorithms), "sparsities": list(sparsities), "seeds": list(seeds),
                "extra_sparsities": list(extra_sparsities), "scopes": list(scopes)}
    figures = {f"further_pruning_{scope}": _plot(rows, scope, algorithms, sparsities) for scope in scopes}
    common.write_results(logdir, "further_pruning", settings, rows, markdown, figures, missing(cells, results),
                         cells=cells, started=started)
    return rows


def _plot(rows, scope, algorithm_names, sparsities) -> plt.Figure:
    """One panel per trained sparsity, the algorithms side by side in each: accuracy against the
    fraction of the remaining weights removed (one line per algorithm stays readable on a full
    grid, where one panel with a line per algorithm and sparsity does not)."""
    columns = min(len(sparsities), 3)
    panels = -(-len(sparsities) // columns)
    figure, axes = plt.subplots(panels, columns, figsize=(3.2 * columns, 2.8 * panels), sharey=True, squeeze=False)
    ours = [r for r in rows if r["scope"] == scope]
    for ax, s in zip(axes.flat, sparsities):
        for name in algorithm_names:
            accuracy = common.group([r for r in ours if r["algorithm"] == name and r["sparsity"] == s],
                                    ["extra_sparsity"], "accuracy")
            plot_interval(ax, [extra for (extra,) in accuracy], list(accuracy.values()), scale=100, label=name,
                          marker="o", markersize=3)
        ax.set_title(f"trained at {s:g} sparsity", fontsize=9)
        ax.set_xlabel("fraction of the remaining\nweights removed", fontsize=8)
    for ax in axes.flat[len(sparsities):]:
        ax.set_visible(False)
    counts = [len(v) for v in common.group(ours, ["algorithm", "sparsity", "extra_sparsity"], "accuracy").values()]
    for row in axes:
        row[0].set_ylabel(f"test accuracy (%)\n(band: {short_description(counts)})", fontsize=8)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"further {scope} magnitude pruning, no retraining", fontsize=10)
    figure.tight_layout()
    return figure
