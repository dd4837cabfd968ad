"""Accuracy against sparsity type at matched density (issue 18, point 3).

For each algorithm × (sparsity, type) × seed: train one network whose masked weights take the
type (``keras_sparse.sparsity_types``: unstructured; N:M, the 2:4 of sparse tensor cores,
Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"; blocks; whole output channels),
and record its test accuracy and the sparsity its masks actually reached (``sparsity_report``).

Matched density: an N:M type fixes a layer's density at N/M whatever the target, so an N:M type
is run only at the sparsity ``1 - N/M`` (2:4 at 0.5, 1:4 at 0.75) and the other types at every
sparsity of the grid; pairs that do not match are not cells. Every algorithm gets the same
per-layer target (``distribution="uniform"`` by default: ERK would give some layers targets
that N:M cannot follow, and the densities would no longer match).

Layers where a type has no meaning are left unstructured through a per-layer map, as
docs/structure.md describes (e.g. 2:4 on a first conv with one input channel; whole channels
on the classifier, which would remove classes): ``unstructured_layers`` names them per type,
and the table's caption lists the layers each cell's sparsity report found unstructured.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Mapping, Sequence

import gin

from keras_sparse import sparsity_types
from keras_sparse.errors import ConfigError
from keras_sparse.masking import sparsity_report
from keras_sparse.studies import common
from keras_sparse.studies.grid import finished, missing, run_grid

TYPES = ("unstructured", "2:4", "1:4", "4x1", "channel")


def compatible(type_name: str, sparsity: float) -> bool:
    """Whether ``type_name`` can be run at ``sparsity`` with matched density: an N:M type only at
    ``1 - N/M`` (its pattern is its density); every other type at any sparsity."""
    kind = sparsity_types.parse(type_name)
    if isinstance(kind, sparsity_types.NByM):
        return abs((1.0 - kind.n / kind.m) - sparsity) < 1e-9
    return True


def type_spec(type_name: str, unstructured: Sequence[str] = ()) -> sparsity_types.Spec:
    """The algorithm's ``sparsity_type``: ``type_name`` on every masked weight, except the layers
    ``unstructured`` names (a per-layer map; the named layer wins over the glob ``"*"`` because the
    most specific entry does, ``masking.most_specific``)."""
    if not unstructured or str(sparsity_types.parse(type_name)) == "unstructured":
        return type_name
    return {"*": type_name, **{layer: "unstructured" for layer in unstructured}}


def make_cells(algorithms: Sequence[str], types: Sequence[str], sparsities: Sequence[float],
               seeds: Sequence[int]) -> list[dict]:
    """The grid's cells, seed outermost (a grid stopped part way has whole tables for its first
    seeds), the (sparsity, type) pairs ``compatible`` refuses left out."""
    return [{"algorithm": a, "sparsity": s, "type": t, "seed": seed}
            for seed in seeds for a in algorithms for s in sparsities for t in types if compatible(t, s)]


def sparsity_types_cell(cell: dict, distribution: Any, unstructured_layers: Mapping[str, Sequence[str]]
                        ) -> dict[str, Any]:
    """Trains one network with the cell's type and returns its test accuracy, the sparsity of its
    masked weights (and of all parameters), and per masked weight its type, shape, size, active
    count and whether the mask holds the type's pattern."""
    spec = type_spec(cell["type"], unstructured_layers.get(cell["type"], ()))
    algorithm = common.make_algorithm(cell["algorithm"], cell["sparsity"], sparsity_type=spec,
                                      distribution=distribution)
    run = common.train_network(algorithm, cell["seed"])
    report = sparsity_report(run.model)
    total = report.pop("total")
    return {"accuracy": common.evaluate(run), "sparsity_reached": total["masked_sparsity"],
            "sparsity_of_all_parameters": total["sparsity_of_all_parameters"],
            "layers": {key: {k: value[k] for k in ("type", "shape", "size", "active", "pattern_holds")}
                       for key, value in report.items()}}


@gin.configurable("sparsity_types_study", denylist=["logdir", "jobs"])
def run(logdir: str, jobs: int = 1, algorithms: Sequence[str] = ("magnitude", "rigl"),
        types: Sequence[str] = TYPES, sparsities: Sequence[float] = (0.5, 0.75), seeds: Sequence[int] = (0, 1, 2),
        distribution: Any = "uniform", unstructured_layers: Mapping[str, Sequence[str]] | None = None
        ) -> list[dict]:
    """Runs the grid into ``logdir`` and writes results.json and results.md: per sparsity and type,
    the test accuracy of each algorithm (mean and 95% interval over seeds) and the sparsity the
    masks reached, with the grid's wall time and per-cell times.

    Args:
        logdir: where the cells' results and the tables go.
        jobs: cells run at once (``--jobs``).
        algorithms: registered algorithm names; each takes ``sparsity_type=``.
        types: sparsity type names (``sparsity_types.parse``).
        sparsities: target sparsities; N:M types run only at their own (``compatible``).
        seeds: seeds of each (algorithm, sparsity, type).
        distribution: every algorithm's per-layer targets (uniform keeps densities matched).
        unstructured_layers: ``{type name: [layer, ...]}``, the layers left unstructured under
            that type (where it has no meaning); entries for types not in ``types`` are unused.
    """
    started = time.time()
    unstructured_layers = {str(k): list(v) for k, v in (unstructured_layers or {}).items()}
    for name in [*types, *unstructured_layers]:
        sparsity_types.parse(name)  # a one-line ConfigError for an unknown name, before any cell runs
    cells = make_cells(algorithms, types, sparsities, seeds)
    if not cells:
        raise ConfigError("sparsity_types_study: no (sparsity, type) pair matches (an N:M type runs only at the "
                          "sparsity 1 - N/M): add sparsities or types.")
    function = functools.partial(sparsity_types_cell, distribution=distribution,
                                 unstructured_layers=unstructured_layers)
    results = run_grid(logdir, cells, function, jobs)
    rows = [{**cell, "accuracy": result["accuracy"], "sparsity_reached": result["sparsity_reached"],
             "sparsity_of_all_parameters": result["sparsity_of_all_parameters"],
             "pattern_holds": all(layer["pattern_holds"] for layer in result["layers"].values()),
             "unstructured": sorted(key for key, layer in result["layers"].items()
                                    if layer["type"] == "unstructured")}
            for cell, result in finished(cells, results)]
    markdown = "# Sparsity types: accuracy at matched density\n\n" + table(rows, algorithms, types, sparsities,
                                                                          seeds)
    settings = {"algorithms": list(algorithms), "types": list(types), "sparsities": list(sparsities),
                "seeds": list(seeds), "distribution": distribution, "unstructured_layers": unstructured_layers}
    common.write_results(logdir, "sparsity_types", settings, rows, markdown, {}, missing(cells, results),
                         cells=cells, started=started)
    return rows


def table(rows: Sequence[Mapping[str, Any]], algorithms: Sequence[str], types: Sequence[str],
          sparsities: Sequence[float], seeds: Sequence[int]) -> str:
    """The caption and the table: one row per (sparsity, type) pair run, the sparsity reached and
    each algorithm's test accuracy."""
    accuracy = common.group(rows, ["algorithm", "sparsity", "type"], "accuracy")
    reached = common.group(rows, ["sparsity", "type"], "sparsity_reached")
    holds = common.group(rows, ["sparsity", "type"], "pattern_holds")
    lines = []
    for s in sparsities:
        for t in types:
            if not compatible(t, s):
                continue
            values = sorted({round(v, 4) for v in reached.get((s, t), [])})
            shown = " / ".join(f"{v:.4f}" for v in values) or "—"
            pattern = "—" if not holds.get((s, t)) else ("yes" if all(holds[(s, t)]) else "NO")
            lines.append([s, t, shown, pattern, *(common.percent(accuracy.get((a, s, t), [])) for a in algorithms)])
    header = ["target sparsity", "type", "sparsity reached (masked weights)", "pattern holds",
              *(f"{a} (%)" for a in algorithms)]
    left = {}
    for row in rows:
        if str(sparsity_types.parse(row["type"])) != "unstructured" and row["unstructured"]:
            left.setdefault(row["type"], set()).update(key.rsplit("/", 1)[0] for key in row["unstructured"])
    kept = "; ".join(f"{t}: {', '.join(sorted(left[t]))}" for t in types if t in left)
    n_by_m = [(t, kind) for t in types if isinstance(kind := sparsity_types.parse(t), sparsity_types.NByM)]
    matched = ", ".join(f"{t} at {1 - kind.n / kind.m:g}" for t, kind in n_by_m)
    caption = ("Test accuracy (%) per sparsity type at matched density: "
               + (f"N:M fixes a layer's density at N/M, so each N:M type runs only at sparsity 1 - N/M ({matched}) "
                  "and each other type at every sparsity; " if n_by_m else "each type runs at every sparsity; ")
               + "every layer gets the same target (uniform). \"Sparsity reached\" is the masked weights' final "
               "sparsity from the sparsity report (every value over algorithms and seeds); \"pattern holds\" that "
               "every masked weight's final mask has its type's pattern. "
               + (f"Layers left unstructured (the type has no meaning there, docs/structure.md): {kept}. " if kept
                  else "No layer was left unstructured. ")
               + common.caption(accuracy, seeds))
    return caption + "\n\n" + common.markdown_table(header, lines)
