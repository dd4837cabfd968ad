"""The command lines: ``binaries/*.py`` and the console scripts ``pip install`` puts on PATH.

- ``keras-sparse-train`` = ``python binaries/train.py``: one gin-configured training run.
- ``keras-sparse-study NAME`` = ``python binaries/NAME_study.py`` (``reinit``, ``further_pruning``,
  ``structure``).
- ``keras-sparse-plot LOGDIR`` = ``python binaries/plot.py LOGDIR``.

``--help`` on the first two lists the gin configs shipped in ``gin_configs/``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from absl import app, flags

from keras_sparse import cli
from keras_sparse.errors import KerasSparseError

STUDIES = {"reinit": "keras_sparse.studies.reinit", "further_pruning": "keras_sparse.studies.further_pruning",
           "structure": "keras_sparse.studies.structure"}


def train() -> None:
    """``keras-sparse-train --gin_config=rigl.gin --logdir=DIR [--gin_bindings=...] [--seed=N]``."""
    from keras_sparse import experiment

    cli.define_flags()

    def main(argv):
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}: every setting is a --flag or a --gin_bindings.")
        cli.run_main(lambda: experiment.train(flags.FLAGS.logdir, flags.FLAGS.seed, flags.FLAGS.overwrite))

    app.run(main)


def study(name: str | None = None) -> None:
    """``keras-sparse-study NAME --gin_config=studies/NAME.gin --logdir=DIR [--jobs=N]``;
    ``binaries/NAME_study.py`` passes ``name`` itself."""
    cli.define_flags(study=True)

    def main(argv):
        chosen, rest = (name, argv[1:]) if name else (argv[1] if len(argv) > 1 else None, argv[2:])
        if chosen not in STUDIES or rest:
            sys.exit(f"error: name one study: keras-sparse-study {{{'|'.join(STUDIES)}}} --gin_config=... --logdir=...")
        module = importlib.import_module(STUDIES[chosen])
        cli.run_main(lambda: module.run(flags.FLAGS.logdir, jobs=flags.FLAGS.jobs))

    app.run(main)


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
        sys.exit(f"error: {error}")
    for path in paths.values():
        print(path)
