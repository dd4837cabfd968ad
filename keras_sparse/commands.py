"""The command lines: ``binaries/*.py`` and the console scripts ``pip install`` puts on PATH.

- ``keras-sparse-train`` = ``python binaries/train.py``: one gin-configured training run.
- ``keras-sparse-study NAME`` = ``python binaries/NAME_study.py`` (``reinit``, ``further_pruning``,
  ``structure``, ``sparsity_types``).
- ``keras-sparse-plot LOGDIR`` = ``python binaries/plot.py LOGDIR``.

``--help`` on the first two lists the gin configs shipped in ``gin_configs/``, ``--gin_help``
every gin parameter they can bind.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from absl import app, flags

from keras_sparse import cli
from keras_sparse.errors import KerasSparseError

STUDIES = {"reinit": "keras_sparse.studies.reinit", "further_pruning": "keras_sparse.studies.further_pruning",
           "structure": "keras_sparse.studies.structure", "sparsity_types": "keras_sparse.studies.sparsity_types"}

TRAIN_USAGE = """Train one sparse network, configured by gin files and bindings.

USAGE: keras-sparse-train --gin_config=CONFIG.gin [--gin_config=...] --logdir=DIR \
[--gin_bindings='NAME.PARAMETER = VALUE' ...] [--seed=N]
       (or: python binaries/train.py ...)

  e.g. keras-sparse-train --gin_config=rigl.gin --gin_bindings='RigL.sparsity = 0.95' --logdir=/tmp/rigl95

A config name not found as given is looked up in gin_configs/. The logdir receives checkpoints,
TensorBoard logs, metrics.json and saved_model/; rerunning the same command resumes from the last
checkpoint. --gin_help lists every parameter a binding can set, with its default.
"""

STUDY_USAGE = """Run one of the studies: a grid of training runs and the table that compares them.

USAGE: keras-sparse-study NAME --gin_config=studies/NAME.gin --logdir=DIR [--jobs=N] [--gin_bindings=...]
       (or: python binaries/NAME_study.py ...)
   or: ... --list_cells    (print one --cell=K command per cell still to do, for a scheduler)
   or: ... --cell=K        (run cell K alone; the run that finishes the last cell writes the tables)
   or: ... --assemble      (write the tables from the cells done so far)
   or: ... --executor=ray [--ray_address=ADDR] [--cpus_per_cell=1] [--gpus_per_cell=0]

NAME is one of:
  reinit           retrain each trained network's final mask from its original initialization,
                   a new one, a per-layer reshuffle and signed constants (claim 1)
  further_pruning  prune each trained network further by magnitude, per layer and globally,
                   without retraining (claim 2)
  structure        how early RigL's mask settles, and RigL frozen early against full RigL and
                   a static mask (claims 3 and 4)
  sparsity_types   accuracy per sparsity type (unstructured, 2:4, 1:4, 4x1 blocks, channels) at
                   matched density, for each algorithm (issue 18)

  e.g. keras-sparse-study reinit --gin_config=studies/reinit.gin --logdir=/tmp/reinit --jobs=2
       keras-sparse-study reinit --gin_config=studies/reinit.gin --logdir=/shared/reinit --list_cells > cells.txt

studies/NAME.gin are the small MNIST-1D grids; studies/NAME_full.gin the paper-scale ones.
Each cell's result is stored in DIR/cells/ as it ends; rerunning skips finished cells.
--gin_help lists every parameter a binding can set, with its default.
"""


def _use_usage(text: str) -> None:
    """absl's --help prints ``__main__``'s docstring; a console script has none."""
    main = sys.modules.get("__main__")
    if main is not None and not (main.__doc__ or "").strip():
        main.__doc__ = text.replace("%", "%%")


def train() -> None:
    """``keras-sparse-train --gin_config=rigl.gin --logdir=DIR [--gin_bindings=...] [--seed=N]``."""
    from keras_sparse import experiment

    cli.define_flags()
    _use_usage(TRAIN_USAGE)

    def main(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}: every setting is a --flag or a --gin_bindings.")
        cli.run_main(lambda: experiment.train(flags.FLAGS.logdir, flags.FLAGS.seed, flags.FLAGS.overwrite))

    app.run(main)


def study(name: str | None = None) -> None:
    """``keras-sparse-study NAME --gin_config=studies/NAME.gin --logdir=DIR [--jobs=N]``;
    ``binaries/NAME_study.py`` passes ``name`` itself."""
    cli.define_flags(study=True)
    _use_usage(STUDY_USAGE)

    def main(argv):
        chosen, rest = (name, argv[1:]) if name else (argv[1] if len(argv) > 1 else None, argv[2:])
        if flags.FLAGS.gin_help and chosen is None and not rest:  # every study's parameters
            modules = list(STUDIES.values())
            for module in modules:
                importlib.import_module(module)
            cli.run_main(lambda: None, gin_modules=modules)
            return
        if chosen not in STUDIES or rest:
            sys.exit(f"error: name one study: keras-sparse-study {{{'|'.join(STUDIES)}}} --gin_config=... --logdir=... "
                     "(--help describes them)")
        from keras_sparse.studies import grid

        executor = grid_executor(flags.FLAGS, program=[sys.executable, os.path.abspath(sys.argv[0])] if name
                                 else [os.path.abspath(sys.argv[0]), chosen])
        module = importlib.import_module(STUDIES[chosen])

        def job():
            with grid.using(executor):
                try:
                    module.run(flags.FLAGS.logdir, jobs=flags.FLAGS.jobs)
                except grid.GridStopped as stop:  # --list_cells, or --cell=K with cells still to do
                    print(cli.first_line(stop), file=sys.stderr)

        cli.run_main(job, gin_modules=[STUDIES[chosen]])

    app.run(main)


def grid_executor(f: flags.FlagValues, program: list[str]):
    """The grid executor the study flags in ``f`` ask for (None: ``--jobs`` processes on this
    machine; ``program`` starts the commands ``--list_cells`` prints); a conflicting combination
    exits with one ``error:`` line."""
    from keras_sparse.studies import grid

    modes = ([f"--cell={f.cell}"] if f.cell is not None else []) + [
        f"--{name}" for name in ("list_cells", "assemble") if f[name].value]
    if f.executor == "ray":
        modes.append("--executor=ray")
    if len(modes) > 1:
        sys.exit(f"error: {' and '.join(modes)} exclude each other: give one.")
    if modes and f.jobs != 1:
        sys.exit(f"error: --jobs={f.jobs} runs cells in processes on this machine, not with {modes[0]}: drop it.")
    ray_flags = [f"--{name}" for name in ("ray_address", "cpus_per_cell", "gpus_per_cell") if f[name].present]
    if ray_flags and f.executor != "ray":
        sys.exit(f"error: {', '.join(ray_flags)} apply to --executor=ray only: add it, or drop them.")
    if f.cell is not None:
        return grid.OneCell(f.cell)
    if f.list_cells:
        return grid.ListCells(program)
    if f.assemble:
        return grid.Assemble()
    if f.executor == "ray":
        return grid.Ray(f.ray_address, f.cpus_per_cell, f.gpus_per_cell)
    return None


def plot(argv: list[str] | None = None) -> None:
    """``keras-sparse-plot LOGDIR [--out DIR]``: a run's per-layer sparsity and learning curves as PNG."""
    from keras_sparse import plotting

    parser = argparse.ArgumentParser(prog="keras-sparse-plot", description=plot.__doc__.split(":", 1)[1].strip())
    parser.add_argument("logdir", help="a run's logdir (holds metrics.json)")
    parser.add_argument("--out", default=None, help="where to write the PNG files (default: LOGDIR)")
    args = parser.parse_args(argv)
    try:
        paths = plotting.plot_run(args.logdir, args.out)
    except KerasSparseError as error:
        sys.exit(f"error: {cli.first_line(error)}")
    for path in paths.values():
        print(path)


def summarize(argv: list[str] | None = None) -> None:
    """``python binaries/summarize.py LOGDIR [LOGDIR ...]``: a Markdown table of finished runs."""
    from keras_sparse.report import markdown_table

    parser = argparse.ArgumentParser(
        prog="python binaries/summarize.py",
        description="Print a Markdown table of finished training runs, one row per LOGDIR: algorithm, test "
                    "accuracy, sparsity, dense-gradient steps, training FLOPs relative to dense, training time "
                    "(read from each LOGDIR/metrics.json).",
        epilog="e.g. python binaries/summarize.py runs/rigl runs/static")
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="the --logdir of a finished run")
    args = parser.parse_args(argv)
    try:
        print(markdown_table(args.logdirs))
    except KerasSparseError as error:
        sys.exit(f"error: {cli.first_line(error)}")
    except OSError as error:
        sys.exit(f"error: cannot read {error.filename or 'metrics.json'}: {error.strerror or error}: give the logdir "
                 "of a finished run.")
    except (KeyError, TypeError, ValueError) as error:
        sys.exit(f"error: a metrics.json lacks or garbles {error}: is every LOGDIR a run finished by this "
                 "version of keras-sparse-train?")
