"""Print a Markdown table of finished runs: ``python binaries/summarize.py LOGDIR [LOGDIR ...]``.

One row per run (the ``--logdir`` of ``keras-sparse-train``): algorithm, test accuracy, sparsity,
dense-gradient steps, training FLOPs relative to dense and training time, read from each
``LOGDIR/metrics.json``. ``--help`` explains the arguments.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keras_sparse imports TensorFlow: no C++ INFO lines

import sys  # noqa: E402

# This checkout's library, not one installed from another checkout (an editable install can
# point anywhere): a binary runs the code beside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_sparse import commands  # noqa: E402

if __name__ == "__main__":
    commands.summarize()
