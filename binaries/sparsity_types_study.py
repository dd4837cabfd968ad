"""The sparsity-types study: flags → gin → `keras_sparse.studies.sparsity_types.run`
(also `keras-sparse-study sparsity_types`).

    python binaries/sparsity_types_study.py --gin_config=gin_configs/studies/sparsity_types_cnn.gin \
        --logdir=/tmp/types

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
    commands.study("sparsity_types")
