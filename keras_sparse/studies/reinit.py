"""Claim 1: accuracy can be derived from structure alone (Van Gelder et al. 2020, §4).

For each algorithm × sparsity × seed: train, keep the final mask, and retrain that mask (fixed)
from the original initialization, a new random initialization, a per-layer reshuffle of the
original initial values, and the signed constant initialization (Zhou et al. 2019).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import gin
import matplotlib.pyplot as plt
import numpy as np

from keras_sparse.algorithms import FixedMask
from keras_sparse.errors import ConfigError
from keras_sparse.intervals import interval, short_description
from keras_sparse.masking import get_masks
from keras_sparse.plotting import plot_interval
from keras_sparse.studies import common
from keras_sparse.studies.grid import finished, missing, run_grid
from keras_sparse.studies.measures import INIT_VARIANTS, init_variant

NEW_INIT_SEED_OFFSET = 10_000  # "new_init" draws its kernels from seed + this
BASELINE = "static"  # the mask the algorithms must beat (issue 17, point 1)


def reinit_cell(cell: dict, variants: Sequence[str]) -> dict[str, Any]:
    """Trains one network and retrains its final mask from each init variant."""
    seed = cell["seed"]
    original = common.train_network(common.make_algorithm(cell["algorithm"], cell["sparsity"]), seed)
    masks = get_masks(original.model)
    result = {"original": common.evaluate(original),
              "sparsity_reached": original.trainer.sparsity(), "variants": {}}
    for variant in variants:
        model_seed = seed + NEW_INIT_SEED_OFFSET if variant == "new_init" else seed

        def set_initial_kernels(run, variant=variant):
            values = init_variant(variant, original.initial_kernels, masks, new_init=run.initial_kernels, seed=seed)
            for kernel in run.trainer.kernels:
                kernel.kernel.assign(values[kernel.key])

        retrained = common.train_network(FixedMask(masks), seed, model_seed=model_seed,
                                         before_fit=set_initial_kernels)
        result["variants"][variant] = common.evaluate(retrained)
    return result


@gin.configurable("reinit_study", denylist=["logdir", "jobs"])
def run(logdir: str, jobs: int = 1, algorithms: Sequence[str] = ("magnitude", "snip", "rigl", "static"),
        sparsities: Sequence[float] = (0.8, 0.9), seeds: Sequence[int] = (0,),
        variants: Sequence[str] = INIT_VARIANTS) -> list[dict]:
    """Runs the grid into ``logdir`` and writes results.json, results.md and reinit.png (test
    accuracy per algorithm, sparsity and init variant: mean and 95% interval over seeds), with
    the grid's wall time and per-cell times."""
    started = time.time()
    unknown = sorted(set(variants) - set(INIT_VARIANTS))
    if unknown:
        raise ConfigError(f"reinit_study.variants names {unknown}: use some of {list(INIT_VARIANTS)}.")
    cells = [{"algorithm": a, "sparsity": s, "seed": seed} for a in algorithms for s in sparsities for seed in seeds]
    results = run_grid(logdir, cells, functools.partial(reinit_cell, variants=tuple(variants)), jobs)
    rows = []
    for cell, result in finished(cells, results):
        rows.append({**cell, "variant": "trained", "accuracy": result["original"]})
        rows += [{**cell, "variant": v, "accuracy": result["variants"][v]} for v in variants]
    order = ["trained", *variants]
    accuracy = common.group(rows, ["algorithm", "sparsity", "variant"], "accuracy")
    table = common.markdown_table(
        ["algorithm", "sparsity", *order],
        [[a, s, *(common.percent(accuracy[(a, s, v)]) for v in order)] for a in algorithms for s in sparsities])
    markdown = ("# Reinit study: retraining the final mask from other initializations\n\n"
                f"Test accuracy (%). {common.caption(accuracy, seeds)}\n\n" + table)
    if BASELINE in algorithms and len(algorithms) > 1:
        markdown += "\n\n" + _separation(accuracy, algorithms, sparsities)
    settings = {"algorithms": list(algorithms), "sparsities": list(sparsities), "seeds": list(seeds),
                "variants": list(variants), "new_init_seed_offset": NEW_INIT_SEED_OFFSET}
    common.write_results(logdir, "reinit", settings, rows, markdown,
                         {"reinit": _plot(accuracy, algorithms, sparsities, order)}, missing(cells, results),
                         cells=cells, started=started)
    return rows


def _separation(accuracy, algorithms, sparsities) -> str:
    """Per sparsity: the best algorithm (highest mean trained accuracy) against the static mask."""
    rows = []
    for s in sparsities:
        base = accuracy[(BASELINE, s, "trained")]
        means = {a: np.mean(accuracy[(a, s, "trained")]) for a in algorithms
                 if a != BASELINE and accuracy[(a, s, "trained")]}
        if not base or not means:
            rows.append([s, "—", "—", common.percent(base), "—", "—", "—"])
            continue
        best = max(means, key=means.get)
        values = accuracy[(best, s, "trained")]
        gap = 100 * (np.mean(values) - np.mean(base))
        spreads = [100 * np.std(v, ddof=1) for v in (values, base) if len(v) > 1]
        spread = max(spreads) if spreads else float("nan")
        top, bottom = interval(values), interval(base)
        disjoint = "—" if min(top.n, bottom.n) < 2 else ("yes" if top.low > bottom.high else "no")
        rows.append([s, best, common.percent(values), common.percent(base), f"{gap:+.1f}",
                     "—" if np.isnan(spread) else f"{spread:.1f}", disjoint])
    table = common.markdown_table(["sparsity", "best algorithm", "its accuracy (%)", f"{BASELINE} (%)",
                                   "gap (points)", "seed-to-seed sd (points)", "intervals disjoint"], rows)
    return ("## The best algorithm against a static random mask\n\n"
            "Trained networks only. Per sparsity, the algorithm with the highest mean accuracy against the "
            f"{BASELINE} random mask: the gap between their means, the larger of their two seed-to-seed standard "
            "deviations (n − 1), and whether their intervals (as in the table above) are disjoint.\n\n" + table)


def _plot(accuracy, algorithm_names, sparsities, order) -> plt.Figure:
    bars = short_description(len(v) for v in accuracy.values())
    if list(order) == ["trained"]:
        # No retraining variants (e.g. gin_configs/studies/power_*.gin): the algorithms side by side.
        figure, ax = plt.subplots(figsize=(5.5, 3.8))
        for name in algorithm_names:
            plot_interval(ax, sparsities, [accuracy[(name, s, "trained")] for s in sparsities], scale=100,
                          label=name, marker="o")
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"test accuracy (%)\n(band: {bars})")
        ax.legend(fontsize=8)
        figure.tight_layout()
        return figure
    figure, axes = plt.subplots(1, len(algorithm_names), figsize=(3.2 * len(algorithm_names), 3), sharey=True,
                                squeeze=False)
    for ax, name in zip(axes[0], algorithm_names):
        for variant in order:
            plot_interval(ax, sparsities, [accuracy[(name, s, variant)] for s in sparsities], scale=100,
                          style="bars", label=variant, marker="o")
        ax.set_title(name)
        ax.set_xlabel("sparsity")
    axes[0][0].set_ylabel(f"test accuracy (%)\n(bars: {bars})")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    return figure
