"""Claims 3 and 4: RigL's structure emerges early, so RigL frozen early works
(Van Gelder et al. 2020, §6).

One RigL run keeps snapshots of its masks (every epoch, and on a finer grid in the first
epoch; with ``structure_study.snapshot_every_update`` also after every mask update) and
compares each with the final mask. Then early-frozen RigL at several freeze points
is trained against full RigL and a static mask: accuracy, dense-gradient steps, training FLOPs.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import gin
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from keras_sparse.callbacks import Callback
from keras_sparse.intervals import interval, short_description
from keras_sparse.masking import get_masks
from keras_sparse.plotting import plot_interval
from keras_sparse.studies import common
from keras_sparse.studies.grid import finished, missing, run_grid
from keras_sparse.studies.measures import mask_overlap


class MaskSnapshots(Callback):
    """Keeps ``get_masks`` at training start and after each step in ``steps`` (``masks``, by the
    number of steps done). With ``every_update``, also after every mask update: ``update_masks``
    holds the initial masks and those after each update, by the number of steps done (an
    update at step ``s``, 0-based, is stored under ``s + 1``)."""

    def __init__(self, steps: Sequence[int], every_update: bool = False):
        self.steps = set(steps)
        self.every_update = every_update
        self.masks: dict[int, dict] = {}
        self.update_masks: dict[int, dict] = {}

    def on_train_begin(self, trainer) -> None:
        self.masks[trainer.step] = get_masks(trainer.model)
        if self.every_update:
            self.update_masks[trainer.step] = self.masks[trainer.step]

    def on_mask_update_end(self, trainer, active_counts) -> None:
        if self.every_update:
            self.update_masks[trainer.step] = get_masks(trainer.model)

    def step_boundaries(self, trainer) -> set[int]:
        return self.steps

    def on_step_end(self, trainer, losses) -> None:
        if trainer.step in self.steps:
            self.masks[trainer.step] = get_masks(trainer.model)


def snapshot_steps(steps_per_epoch: int, epochs: int, first_epoch_points: int) -> list[int]:
    """Every epoch end, plus ``first_epoch_points`` evenly spaced steps inside the first epoch."""
    fine = {round(steps_per_epoch * i / first_epoch_points) for i in range(1, first_epoch_points + 1)}
    return sorted(fine | {steps_per_epoch * e for e in range(1, epochs + 1)})


def _summary(run) -> dict[str, Any]:
    summary = run.trainer.summary()
    return {"accuracy": common.evaluate(run), "dense_gradient_steps": summary["dense_gradient_steps"],
            "training_flops": summary["training_flops_relative_to_dense"], "steps": summary["steps"]}


def structure_cell(cell: dict, sparsity: float, first_epoch_points: int) -> dict[str, Any]:
    """``snapshots``: full RigL with mask snapshots (``cell["every_update"]``: also one after
    every mask update, under ``update_snapshots``, numbered from 0 for the initial mask);
    ``frozen``: RigL frozen at ``freeze_epoch``; ``static``: a static random mask."""
    seed = cell["seed"]
    if cell["kind"] == "static":
        return _summary(common.train_network(common.make_algorithm("static", sparsity), seed))
    if cell["kind"] == "frozen":
        algorithm = common.make_algorithm("rigl", sparsity, freeze_epoch=cell["freeze_epoch"])
        return _summary(common.train_network(algorithm, seed))
    # Snapshot steps need the epoch length, known once the run is built: build first, then train.
    snapshots = MaskSnapshots([], every_update=bool(cell.get("every_update")))

    def plan_snapshots(run):
        snapshots.steps = set(snapshot_steps(run.data.steps_per_epoch, run.settings.epochs, first_epoch_points))

    run = common.train_network(common.make_algorithm("rigl", sparsity), seed, callbacks=[snapshots],
                               before_fit=plan_snapshots)
    final = get_masks(run.model)
    overlaps = [{"step": step, "epoch": step / run.data.steps_per_epoch, "overlap": mask_overlap(masks, final)}
                for step, masks in sorted(snapshots.masks.items())]
    result = {**_summary(run), "snapshots": overlaps}
    if snapshots.every_update:
        result["update_snapshots"] = [
            {"update": index, "step": step, "epoch": step / run.data.steps_per_epoch,
             "overlap": mask_overlap(masks, final)}
            for index, (step, masks) in enumerate(sorted(snapshots.update_masks.items()))]
    return result


@gin.configurable("structure_study", denylist=["logdir", "jobs"])
def run(logdir: str, jobs: int = 1, sparsity: float = 0.9, seeds: Sequence[int] = (0,),
        first_epoch_points: int = 8, freeze_epochs: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
        snapshot_every_update: bool = False) -> list[dict]:
    """Runs the study into ``logdir``; writes results.json, results.md, structure_overlap.png
    and early_freeze.png (means and 95% intervals over seeds), with the grid's wall time and
    per-cell times.

    ``snapshot_every_update``: full RigL also keeps its masks after every mask update; their
    rows (those with an ``"update"`` key: 0 is the initial mask, k the mask after the k-th
    update) make a per-update table and structure_by_update.png (against the update index and
    against epochs)."""
    started = time.time()
    # The option is part of the snapshot cell's identity: a cell stored without per-update
    # snapshots is not reused for a grid that asks for them.
    extra = {"every_update": True} if snapshot_every_update else {}
    cells = ([{"kind": "snapshots", "seed": s, **extra} for s in seeds]
             + [{"kind": "frozen", "freeze_epoch": f, "seed": s} for f in freeze_epochs for s in seeds]
             + [{"kind": "static", "seed": s} for s in seeds])
    cell_fn = functools.partial(structure_cell, sparsity=sparsity, first_epoch_points=first_epoch_points)
    results = run_grid(logdir, cells, cell_fn, jobs)
    overlap_rows, update_rows, freeze_rows = [], [], []
    for cell, result in finished(cells, results):
        variant = {"snapshots": "rigl (full)", "static": "static"}.get(cell["kind"])
        variant = variant or f"rigl frozen @ {cell['freeze_epoch']:g} epoch"
        summary = {k: v for k, v in result.items() if k not in ("snapshots", "update_snapshots")}
        freeze_rows.append({"variant": variant, "freeze_epoch": cell.get("freeze_epoch"), "seed": cell["seed"],
                            "sparsity": sparsity, **summary})
        overlap_rows += _snapshot_rows(result.get("snapshots", []), cell["seed"], sparsity)
        update_rows += _snapshot_rows(result.get("update_snapshots", []), cell["seed"], sparsity)
    sections = ["# Structure study: how early RigL's mask emerges", _overlap_table(overlap_rows, seeds)]
    if snapshot_every_update:
        sections.append(_update_table(update_rows, seeds))
    markdown = "\n\n".join([*sections, _freeze_table(freeze_rows, seeds, freeze_epochs)])
    settings = {"sparsity": sparsity, "seeds": list(seeds), "first_epoch_points": first_epoch_points,
                "freeze_epochs": list(freeze_epochs), "snapshot_every_update": snapshot_every_update}
    figures = {"structure_overlap": _plot_overlap(overlap_rows),
               "early_freeze": _plot_freeze(freeze_rows, freeze_epochs)}
    if snapshot_every_update:
        figures["structure_by_update"] = _plot_updates(update_rows)
    rows = overlap_rows + update_rows + freeze_rows
    common.write_results(logdir, "structure", settings, rows, markdown, figures,
                         missing(cells, results), cells=cells, started=started)
    return rows


def _snapshot_rows(snapshots: Sequence[dict], seed: int, sparsity: float) -> list[dict]:
    """One row per snapshot and layer (and ``overall``), with ``change_done``; a per-update
    snapshot's row keeps its ``update`` index."""
    rows = []
    for snap in snapshots:
        for layer, values in snap["overlap"].items():
            # Share of the way from the initial mask to the final one: 1 - Hamming(t) / Hamming(0).
            start = snapshots[0]["overlap"][layer]["hamming"]
            done = 1.0 - values["hamming"] / start if start else 1.0
            index = {"update": snap["update"]} if "update" in snap else {}
            rows.append({"seed": seed, "sparsity": sparsity, **index, "step": snap["step"], "epoch": snap["epoch"],
                         "layer": layer, **values, "change_done": done})
    return rows


def _emergence_table(rows, keys: Sequence[str], measures: Sequence[str], header: Sequence[str]):
    """The table of the ``overall`` snapshot rows by ``keys`` (the last one the epoch), with the
    mean and interval of each of ``measures``; and the groups of the first measure (for the caption)."""
    overall = [r for r in rows if r["layer"] == "overall"]
    groups = [common.group(overall, keys, measure) for measure in measures]
    body = [[*key[:-1], f"{key[-1]:.2f}", *(common.percent(group[key]) for group in groups)] for key in groups[0]]
    return common.markdown_table(header, body), groups[0]


def _update_table(rows, seeds) -> str:
    table, present = _emergence_table(
        rows, ["update", "step", "epoch"], ["final_present", "iou", "change_done"],
        ["update", "after step", "epoch", "final mask present (%)", "IoU with final (%)", "change done (%)"])
    return ("## Structure emergence per mask update (all masked layers together)\n\n"
            f"RigL's masks after each mask update against its final mask. {common.caption(present, seeds)} "
            "Update 0 is the initial mask; update k is the mask right after the k-th update (the update "
            "at step s, counted from 0, is the snapshot after s + 1 steps). *Change done* as above.\n\n" + table)


def _overlap_table(rows, seeds) -> str:
    table, present = _emergence_table(
        rows, ["step", "epoch"], ["final_present", "iou", "hamming_fraction", "change_done"],
        ["step", "epoch", "final mask present (%)", "IoU with final (%)", "Hamming distance (% of weights)",
         "change done (%)"])
    return ("## Structure emergence (all masked layers together)\n\n"
            f"Each RigL mask snapshot against RigL's final mask. {common.caption(present, seeds)} "
            "Step 0 is the random initial mask, so its overlap is the chance level (layers that the "
            "distribution keeps dense count as fully present). *Change done* = 1 − Hamming(t) / Hamming(0): "
            "the share of the way from the initial to the final mask. Per-layer values are in results.json.\n\n"
            + table)


def _freeze_table(rows, seeds, freeze_epochs) -> str:
    order = ["static", *(f"rigl frozen @ {f:g} epoch" for f in freeze_epochs), "rigl (full)"]
    by = {key: common.group(rows, ["variant"], key) for key in ("accuracy", "dense_gradient_steps", "training_flops")}
    table = common.markdown_table(
        ["variant", "test accuracy (%)", "dense-gradient steps", "training FLOPs vs dense"],
        [[v, common.percent(by["accuracy"][(v,)]), common.number(by["dense_gradient_steps"][(v,)], ".0f"),
          common.number(by["training_flops"][(v,)], ".4f")] for v in order])
    accuracy = {v: by["accuracy"][(v,)] for v in order}
    return (f"## Early-frozen RigL\n\nTest accuracy (%). {common.caption(accuracy, seeds)} Dense-gradient steps "
            "and training FLOPs: their mean over the seeds.\n\n" + table)


def _plot_overlap(rows) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    layers = sorted({r["layer"] for r in rows} - {"overall"})
    for ax, measure, title in ((axes[0], "final_present", "final mask already present (%)"),
                               (axes[1], "change_done", "change from initial to final mask done (%)")):
        for layer in ["overall", *layers]:
            values = common.group([r for r in rows if r["layer"] == layer], ["epoch"], measure)
            xs = [e for (e,) in values]
            if layer == "overall":  # with its 95% interval over seeds as a band
                plot_interval(ax, xs, list(values.values()), scale=100,
                              label=f"overall (band: {short_description(len(v) for v in values.values())})",
                              linewidth=2.5, color="black")
            else:
                ax.plot(xs, [100 * common.mean_std(v)[0] for v in values.values()], label=layer, linewidth=1,
                        alpha=0.7)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("epoch (linear below 1, log above)")
        ax.set_ylabel(title)
    axes[0].set_title("RigL mask snapshots against the final mask")
    if axes[1].get_legend_handles_labels()[0]:  # a partial grid may have no snapshots yet
        axes[1].legend(fontsize=6)
    figure.tight_layout()
    return figure


def _plot_updates(rows) -> plt.Figure:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    overall = [r for r in rows if r["layer"] == "overall"]
    for ax, x, label in ((axes[0], "update", "mask update (0: initial mask)"), (axes[1], "epoch", "epoch")):
        for measure, name, color in (("iou", "IoU with final mask", "tab:blue"),
                                     ("change_done", "change from initial to final done", "tab:orange")):
            values = common.group(overall, [x], measure)
            counts = short_description(len(v) for v in values.values())
            plot_interval(ax, [v for (v,) in values], list(values.values()), scale=100, color=color,
                          label=f"{name} (band: {counts})", marker=".", markersize=3)
        ax.set_xlabel(label)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("% (all masked layers)")
    axes[0].set_title("RigL masks after each update, against the final mask")
    if axes[1].get_legend_handles_labels()[0]:  # a partial grid may have no snapshots yet
        axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def _plot_freeze(rows, freeze_epochs) -> plt.Figure:
    figure, ax = plt.subplots(figsize=(5.5, 3.5))
    frozen = [r for r in rows if r["freeze_epoch"] is not None]
    accuracy = common.group(frozen, ["freeze_epoch"], "accuracy")
    flops = common.group(frozen, ["freeze_epoch"], "training_flops")
    xs = [f for (f,) in accuracy]
    plot_interval(ax, xs, list(accuracy.values()), scale=100, style="bars", marker="o", label="frozen RigL accuracy")
    for variant, style, color in (("rigl (full)", "--", "tab:green"), ("static", ":", "tab:gray")):
        stats = interval([r["accuracy"] for r in rows if r["variant"] == variant]).scaled(100)
        if stats.n:  # a partial grid may not have it yet
            ax.axhline(stats.mean, linestyle=style, color=color, label=variant)
            if stats.n > 1:
                ax.axhspan(stats.low, stats.high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("freeze point (epochs)")
    counts = [len(v) for v in common.group(rows, ["variant"], "accuracy").values()]
    ax.set_ylabel(f"test accuracy (%)\n(bars, bands: {short_description(counts)})")
    twin = ax.twinx()
    twin.plot(xs, [common.mean_std(v)[0] for v in flops.values()], marker="s", color="tab:red", label="training FLOPs")
    twin.set_ylabel("training FLOPs vs dense", color="tab:red")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Early-frozen RigL")
    figure.tight_layout()
    return figure
