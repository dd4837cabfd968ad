"""Plot a finished run: per-layer sparsity and per-epoch loss/accuracy/sparsity, as PNG files.

    python binaries/plot.py LOGDIR [--out DIR]      (also ``keras-sparse-plot``)

Reads ``LOGDIR/metrics.json`` and writes ``layer_sparsity.png`` and ``training_curves.png``
into ``LOGDIR`` (or ``DIR``). See ``keras_sparse.plotting``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keras_sparse imports TensorFlow: no C++ INFO lines

import sys  # noqa: E402

# This checkout's library, not one installed from another checkout (an editable install can
# point anywhere): a binary runs the code beside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_sparse import commands  # noqa: E402

if __name__ == "__main__":
    commands.plot()
