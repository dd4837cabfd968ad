"""The three study binaries end to end on a tiny grid: every expected row, table and plot; a grid
run cell by cell from the commands --list_cells prints gives the results of --jobs 1."""

import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 steps an epoch (batch 500 of 4000), a narrow net, no XLA (compiling each cell's programs took
# longer than training them; the XLA step is tested elsewhere): each training run takes about a second.
TINY = ["training.epochs = 2", "training.batch_size = 500", "model.width = 8", "RigL.update_frequency = 2",
        "MagnitudePruning.frequency = 2", "SET.update_frequency = 2", "training.jit_compile = False"]


def run(args, cwd=None):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_study(name, logdir, *bindings, jobs=1, flags=()):
    args = [sys.executable, os.path.join(ROOT, "binaries", f"{name}_study.py"),
            f"--gin_config={os.path.join(ROOT, 'gin_configs', 'studies', name + '.gin')}", f"--logdir={logdir}",
            f"--jobs={jobs}", *(f"--gin_bindings={b}" for b in [*TINY, *bindings]), *flags]
    result = run(args)
    if flags:
        return result
    return json.loads((logdir / "results.json").read_text()), (logdir / "results.md").read_text(), result


REINIT = ['reinit_study.algorithms = ["rigl", "snip"]', "reinit_study.sparsities = [0.8]"]
FURTHER_PRUNING = ['further_pruning_study.algorithms = ["magnitude", "static"]',
                   "further_pruning_study.sparsities = [0.8]", "further_pruning_study.extra_sparsities = [0.0, 0.5]"]
STRUCTURE = ["structure_study.seeds = [0]", "structure_study.freeze_epochs = [0.5, 1.0]",
             "structure_study.first_epoch_points = 4"]


def list_and_run_cells(directory, listed):
    """--list_cells into ``listed``, then each command it prints, in order, from ``directory``
    (another directory, as a scheduler would); the commands run only if they are the expected two."""
    listing = run_study("further_pruning", listed, *FURTHER_PRUNING, flags=["--list_cells"])
    commands = listing.stdout.splitlines()
    if [shlex.split(c)[-1] for c in commands] != ["--cell=0", "--cell=1"]:
        return listing, commands, None
    return listing, commands, [run(shlex.split(command), cwd=directory) for command in commands]


# Each test's binary runs (conftest.BackgroundRuns starts them when the session starts, beside the
# in-process tests); each test waits for its own and checks them as before.
BACKGROUND = {
    "test_reinit_study": {"reinit": lambda d: run_study("reinit", d, *REINIT)},
    "test_further_pruning_study_and_the_same_grid_cell_by_cell_from_listed_commands": {
        "jobs1": lambda d: run_study("further_pruning", d, *FURTHER_PRUNING),
        "listed": lambda d: list_and_run_cells(d, d / "cells")},
    "test_structure_study": {"structure": lambda d: run_study("structure", d, *STRUCTURE)},
}


def test_reinit_study(background):
    logdir, (results, markdown, _) = background.result(__name__, "reinit")
    rows = results["rows"]
    expected = {(a, s, v) for a in ("rigl", "snip") for s in (0.8,)
                for v in ("trained", "original", "new_init", "reshuffle", "signed_constant")}
    assert {(r["algorithm"], r["sparsity"], r["variant"]) for r in rows} == expected
    assert len(rows) == len(expected) and all(r["seed"] == 0 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert "| rigl | 0.8 |" in markdown and (logdir / "reinit.png").stat().st_size > 1000
    assert "One seed (seeds [0]): the value alone, no interval." in markdown and "nan" not in markdown


def test_further_pruning_study_and_the_same_grid_cell_by_cell_from_listed_commands(background):
    one_process, (results, markdown, _) = background.result(__name__, "jobs1")
    rows = results["rows"]
    keys = {(r["algorithm"], r["sparsity"], r["scope"], r["extra_sparsity"]) for r in rows}
    assert keys == {(a, s, scope, e) for a in ("magnitude", "static") for s in (0.8,)
                    for scope in ("layer", "global") for e in (0.0, 0.5)}
    for r in rows:
        expected_total = r["sparsity"] + (1 - r["sparsity"]) * r["extra_sparsity"]
        assert r["total_sparsity"] == pytest.approx(expected_total, abs=0.01)
    assert "## layer pruning" in markdown and "## global pruning" in markdown
    for scope in ("layer", "global"):
        assert (one_process / f"further_pruning_{scope}.png").exists()

    # --list_cells: one self-contained command per cell (run from another directory, as a
    # scheduler would); the one that finishes the grid writes the tables, those of --jobs 1.
    directory, (listing, commands, outputs) = background.result(__name__, "listed")
    listed = directory / "cells"
    assert [shlex.split(c)[-1] for c in commands] == ["--cell=0", "--cell=1"]
    assert "2 of 2 cells to run (0 done)" in listing.stderr
    assert "1 of 2 cells done, 1 to go" in outputs[0].stderr
    assert "All 2 cells are done: writing the study's tables." in outputs[1].stdout
    for name in os.listdir(one_process / "cells"):
        assert json.loads((listed / "cells" / name).read_text())["result"] == json.loads(
            (one_process / "cells" / name).read_text())["result"]
    # The same tables; only what the runs cost differs (the last line of results.md, "cost" in results.json).
    listed_results = json.loads((listed / "results.json").read_text())
    assert {k: v for k, v in listed_results.items() if k != "cost"} == {k: v for k, v in results.items() if k != "cost"}
    assert (listed / "results.md").read_text().rsplit("\nCost: ", 1)[0] == markdown.rsplit("\nCost: ", 1)[0]
    # The grid's cost: this command's wall time, each cell's time; the listed run ran one cell in each command.
    assert results["cost"]["cells_done"] == results["cost"]["cells_ran_now"] == 2
    assert listed_results["cost"]["cells_done"] == 2 and listed_results["cost"]["cells_ran_now"] == 1
    assert all(c["seconds"] > 0 for c in results["cost"]["cells"])
    assert "further_pruning study: Cost: " in outputs[1].stdout


def test_structure_study(background):
    logdir, (results, markdown, _) = background.result(__name__, "structure")
    rows = results["rows"]
    overall = sorted((r["step"], r["final_present"]) for r in rows if r.get("layer") == "overall")
    # 7 steps an epoch (3600 training examples, batches of 500). Snapshots: the initial mask,
    # 4 points in epoch 1 (round(7 i / 4): 2, 4, 5, 7), the end of epoch 2.
    assert [step for step, _ in overall] == [0, 2, 4, 5, 7, 14]
    assert overall[-1][1] == 1.0  # the last snapshot is the final mask
    variants = {r["variant"]: r for r in rows if "variant" in r}
    assert set(variants) == {"rigl (full)", "rigl frozen @ 0.5 epoch", "rigl frozen @ 1 epoch", "static"}
    # RigL updates at steps 0, 2, 4, 6, 8 (< int(75% of 14) = 10): frozen at step 3 (half an
    # epoch) keeps steps 0 and 2, frozen at step 7 keeps 0, 2, 4, 6.
    assert variants["rigl frozen @ 0.5 epoch"]["dense_gradient_steps"] == 2
    assert variants["rigl frozen @ 1 epoch"]["dense_gradient_steps"] == 4
    assert variants["rigl (full)"]["dense_gradient_steps"] == 5
    assert variants["static"]["dense_gradient_steps"] == 0
    assert variants["static"]["training_flops"] < variants["rigl (full)"]["training_flops"]
    assert "Early-frozen RigL" in markdown and "nan" not in markdown.lower()
    assert results["cost"]["cells_done"] == 4 and markdown.rstrip().splitlines()[-1].startswith("Cost: ")
    for name in ("structure_overlap", "early_freeze"):
        assert (logdir / f"{name}.png").exists()


@pytest.mark.parametrize("config, expected, narrow", [
    ("power_mlp", {"model.name": "mlp", "reinit_study.sparsities": [0.9, 0.95, 0.98, 0.99],
                   "reinit_study.seeds": [0, 1, 2, 3, 4]}, "model.hidden = [16, 8]"),
    ("power_cnn", {"reinit_study.sparsities": [0.95, 0.98, 0.99], "reinit_study.seeds": [0, 1, 2, 3, 4]},
     "model.width = 8"),
])
def test_power_configs_parse_and_run_end_to_end_on_a_tiny_grid(tmp_path, config, expected, narrow):
    """Issue 17 point 1's settings (docs/results.md): the config as shipped, then a tiny grid of
    it in this process (a narrow net, 2 epochs of 8 steps, no XLA)."""
    import gin

    from keras_sparse.config import parse_gin
    from keras_sparse.studies import reinit

    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", f"{config}.gin")], [])
        for name, value in {**expected, "reinit_study.variants": [],
                            "reinit_study.algorithms": ["magnitude", "snip", "rigl", "static"]}.items():
            assert gin.query_parameter(name) == value, name
        with gin.unlock_config():
            gin.parse_config([*(b for b in TINY if not b.startswith("model.")), narrow,
                              'reinit_study.algorithms = ["magnitude", "static"]', "reinit_study.sparsities = [0.95]",
                              "reinit_study.seeds = [0]"])
        rows = reinit.run(str(tmp_path))
    finally:
        gin.clear_config()
    assert {(r["algorithm"], r["variant"]) for r in rows} == {("magnitude", "trained"), ("static", "trained")}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["cost"]["cells_done"] == 2 and (tmp_path / "reinit.png").exists()
    assert "| 0.95 | magnitude |" in (tmp_path / "results.md").read_text()  # the gap to the static mask


def test_structure_large_config_parses_and_snapshots_every_mask_update(tmp_path):
    """Issue 17 point 3's setting as shipped, then a tiny grid of it in this process: per-update
    mask snapshots at hand-checkable steps, beside the per-epoch ones and the early-freeze rows."""
    import gin

    from keras_sparse.config import parse_gin
    from keras_sparse.studies import structure

    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", "structure_large.gin")], [])
        expected = {"data.name": "mnist1d_large", "training.epochs": 20, "RigL.update_frequency": 100,
                    "structure_study.seeds": [0, 1, 2, 3, 4], "structure_study.snapshot_every_update": True,
                    "structure_study.freeze_epochs": [0.25, 0.5, 1.0, 2.0, 3.0, 5.0]}
        for name, value in expected.items():
            assert gin.query_parameter(name) == value, name
        with gin.unlock_config():
            gin.parse_config([*TINY, "mnist1d_large.train_examples = 4100", "RigL.update_frequency = 3",
                              "structure_study.seeds = [0]", "structure_study.freeze_epochs = [0.5]",
                              "structure_study.first_epoch_points = 2"])
        rows = structure.run(str(tmp_path))
    finally:
        gin.clear_config()
    # 7 steps an epoch (4100 examples, 10% held out: 3690, batches of 500), 14 steps. RigL updates
    # at steps 0, 3, 6, 9 (< int(75% of 14) = 10): snapshots after 1, 4, 7 and 10 steps, and the
    # initial mask as update 0.
    updates = sorted((r["update"], r["step"], r["iou"]) for r in rows if "update" in r and r["layer"] == "overall")
    assert [(u, s) for u, s, _ in updates] == [(0, 0), (1, 1), (2, 4), (3, 7), (4, 10)]
    assert updates[-1][2] == 1.0  # no update after the last one: its mask is the final mask
    assert updates[0][2] < 1.0  # the updates moved the mask
    # The per-epoch snapshots stay as they were: round(7 i / 2) = 4, 7, then the end of epoch 2.
    assert sorted({r["step"] for r in rows if "update" not in r and r.get("layer") == "overall"}) == [0, 4, 7, 14]
    variants = {r["variant"]: r for r in rows if "variant" in r}
    assert set(variants) == {"rigl (full)", "rigl frozen @ 0.5 epoch", "static"}
    # Frozen at step round(3.5) = 4: updates at 0 and 3 only.
    order = ("static", "rigl frozen @ 0.5 epoch", "rigl (full)")
    assert [variants[v]["dense_gradient_steps"] for v in order] == [0, 2, 4]
    markdown = (tmp_path / "results.md").read_text()
    assert "## Structure emergence per mask update" in markdown and "| 4 | 10 | 1.43 |" in markdown
    assert "nan" not in markdown.lower()
    for name in ("structure_overlap", "structure_by_update", "early_freeze"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("config, expected", [
    ("claims_mlp_reinit", {"model.name": "mlp", "reinit_study.sparsities": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99],
                           "reinit_study.seeds": [0, 1, 2, 3, 4],
                           "reinit_study.variants": ["original", "new_init", "reshuffle", "signed_constant"]}),
    ("claims_mlp_further_pruning", {"model.name": "mlp",
                                    "further_pruning_study.sparsities": [0.5, 0.8, 0.9, 0.95, 0.98, 0.99],
                                    "further_pruning_study.seeds": [0, 1, 2, 3, 4], "training.epochs": 30}),
    ("transformer_reinit", {"model.name": "mnist1d_transformer", "training.optimizer": "adamw",
                            "training.epochs": 60, "training.progress": False,
                            "reinit_study.sparsities": [0.8, 0.9], "reinit_study.seeds": [0, 1, 2]}),
    ("transformer_further_pruning", {"model.name": "mnist1d_transformer", "training.optimizer": "adamw",
                                     "training.epochs": 60, "further_pruning_study.sparsities": [0.8, 0.9],
                                     "further_pruning_study.seeds": [0, 1, 2]}),
    ("structure_mlp_large", {"model.name": "mlp", "data.name": "mnist1d_large", "training.epochs": 20,
                             "RigL.update_frequency": 100, "structure_study.sparsity": 0.95,
                             "structure_study.seeds": [0, 1, 2, 3, 4], "structure_study.snapshot_every_update": True}),
])
def test_claim_configs_parse_with_their_settings(config, expected):
    """Issue 17's claim grids (docs/results.md): the configs as shipped, with the settings the
    results were run with (the transformer's own optimizer and epochs win over the studies' 30)."""
    import gin

    from keras_sparse.config import parse_gin
    from keras_sparse.studies import further_pruning, reinit, structure  # noqa: F401  (registers the studies)

    gin.clear_config()
    try:
        parse_gin([os.path.join(ROOT, "gin_configs", "studies", f"{config}.gin")], [])
        for name, value in expected.items():
            assert gin.query_parameter(name) == value, name
    finally:
        gin.clear_config()
