r"""The further pruning study: flags → gin → `keras_sparse.studies.further_pruning.run`
(also `keras-sparse-study further_pruning`).

    python binaries/further_pruning_study.py --gin_config=gin_configs/studies/further_pruning.gin \
        --logdir=/tmp/further_pruning

``--gin_help`` lists every gin parameter a ``--gin_bindings`` can set, with its default.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: no C++ INFO lines

import sys  # noqa: E402

# This checkout's library, not one installed from another checkout (an editable install can
# point anywhere): a binary runs the code beside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_sparse import commands  # noqa: E402

if __name__ == "__main__":
    commands.study("further_pruning")
