"""Plot a finished run: per-layer sparsity and per-epoch loss/accuracy/sparsity, as PNG files.

    python binaries/plot.py LOGDIR [--out DIR]

Reads ``LOGDIR/metrics.json`` and writes ``layer_sparsity.png`` and ``training_curves.png``
into ``LOGDIR`` (or ``DIR``). See ``keras_sparse.plotting``.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keras_sparse imports TensorFlow: no C++ INFO lines

from keras_sparse import plotting  # noqa: E402
from keras_sparse.errors import KerasSparseError  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="a run's logdir (holds metrics.json)")
    parser.add_argument("--out", default=None, help="where to write the PNG files (default: LOGDIR)")
    args = parser.parse_args(argv)
    try:
        paths = plotting.plot_run(args.logdir, args.out)
    except KerasSparseError as error:
        sys.exit(f"error: {error}")
    for path in paths.values():
        print(path)


if __name__ == "__main__":
    main()
