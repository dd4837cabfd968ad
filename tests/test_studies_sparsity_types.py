"""The sparsity-types study (issue 18 point 3): its grid runs only the (sparsity, type) pairs of
matched density, each cell's masks reach the sparsity its type's rule gives, and its table; the
shipped configs parse with the expected values."""

import json
import os

import gin
import pytest

from keras_sparse.config import parse_gin
from keras_sparse.studies import grid, sparsity_types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A narrow CNN (width 8), 2 epochs of 2 steps (batch 2000 of 4000), mask updates every step, no
# XLA: each cell trains in a few seconds. Two cells only (the suite is near its time budget): the
# study's code is the same for every algorithm.
TINY = ["training.epochs = 2", "training.batch_size = 2000", "model.width = 8", "RigL.update_frequency = 1",
        "MagnitudePruning.frequency = 1", "training.jit_compile = False"]
FULL = {(s, t) for s, types in ((0.5, ("unstructured", "2:4", "4x1", "channel")),
                                (0.75, ("unstructured", "1:4", "4x1", "channel"))) for t in types}


def expected_active(type_name: str, shape: list[int], target: float) -> int:
    """The active count each type's rule gives (docs/structure.md), written out for Dense and
    Conv1D kernels (inputs on the second-to-last axis, output channels on the last)."""
    size = 1
    for d in shape:
        size *= d
    if type_name == "unstructured":
        return round(size * (1 - target))
    if ":" in type_name:
        n, m = (int(x) for x in type_name.split(":"))
        return size * n // m
    group = size // shape[-1] if type_name == "channel" else 4  # a channel, or a 4x1 block
    return max(round(size // group * (1 - target)), 1) * group


@pytest.mark.parametrize("config, expected", [
    ("sparsity_types_cnn", {"model.name": "mnist1d_cnn", "training.epochs": 30, "training.optimizer": "sgd",
                            "sparsity_types_study.unstructured_layers": {"2:4": ["conv1"], "1:4": ["conv1"],
                                                                         "4x1": ["conv1"], "channel": ["logits"]}}),
    ("sparsity_types_transformer", {"model.name": "mnist1d_transformer", "training.epochs": 60,
                                    "training.optimizer": "adamw", "training.learning_rate": 0.002,
                                    "sparsity_types_study.unstructured_layers": {"channel": ["logits"]}}),
])
def test_configs_parse_with_the_expected_values_and_cells(config, expected):
    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", f"{config}.gin")], [])
        common = {"sparsity_types_study.algorithms": ["magnitude", "rigl"], "sparsity_types_study.seeds": [0, 1, 2],
                  "sparsity_types_study.distribution": "uniform", "training.progress": False}
        for name, value in {**common, **expected}.items():
            assert gin.query_parameter(name) == value, name
        cells = sparsity_types.make_cells(*(gin.query_parameter(f"sparsity_types_study.{name}")
                                            for name in ("algorithms", "types", "sparsities", "seeds")))
    finally:
        gin.clear_config()
    assert len(cells) == 48 and {(c["sparsity"], c["type"]) for c in cells} == FULL
    assert [c["seed"] for c in cells[:16]] == [0] * 16  # seed outermost: a partial grid has whole seeds


def test_a_tiny_grid_runs_the_matched_pairs_reaches_each_rule_and_tabulates(tmp_path):
    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", "sparsity_types_cnn.gin")], TINY + [
            'sparsity_types_study.algorithms = ["rigl"]', 'sparsity_types_study.types = ["2:4", "1:4", "channel"]',
            "sparsity_types_study.sparsities = [0.75]", "sparsity_types_study.seeds = [0]"])
        rows = sparsity_types.run(str(tmp_path))
    finally:
        gin.clear_config()
    ran = {(r["algorithm"], r["sparsity"], r["type"]) for r in rows}
    assert ran == {("rigl", 0.75, "1:4"), ("rigl", 0.75, "channel")}  # no 2:4 at 0.75
    cells = [{k: row[k] for k in ("algorithm", "sparsity", "type", "seed")} for row in rows]
    assert {name for name in os.listdir(tmp_path / "cells") if name.endswith(".json")} == {
        os.path.basename(grid.result_path(str(tmp_path), cell)) for cell in cells}
    for row, cell in zip(rows, cells):
        result = json.loads(open(grid.result_path(str(tmp_path), cell)).read())["result"]
        left = {"1:4": "conv1/kernel", "channel": "logits/kernel"}[row["type"]]
        active = size = 0
        for key, layer in result["layers"].items():
            kind = "unstructured" if key == left else row["type"]
            assert layer["type"] == kind and layer["pattern_holds"], key
            assert layer["active"] == expected_active(kind, layer["shape"], 0.75), (row, key)
            active, size = active + layer["active"], size + layer["size"]
        assert row["sparsity_reached"] == pytest.approx(1 - active / size) and 0 <= row["accuracy"] <= 1
    markdown = (tmp_path / "results.md").read_text()
    assert "| 0.75 | 1:4 | 0.7500 | yes |" in markdown and "| 0.75 | channel | 0.7500 | yes |" in markdown
    assert "| 0.75 | 2:4 |" not in markdown and "1:4: conv1; channel: logits" in markdown
    assert "One seed (seeds [0])" in markdown and "nan" not in markdown
    assert "each N:M type runs only at sparsity 1 - N/M (2:4 at 0.5, 1:4 at 0.75)" in markdown  # the grid's types
