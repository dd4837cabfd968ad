"""The further pruning study: flags → gin → `keras_sparse.studies.further_pruning.run`.

    python binaries/further_pruning_study.py --gin_config=gin_configs/studies/further_pruning.gin --logdir=/tmp/further_pruning
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: no C++ INFO lines

from absl import app, flags  # noqa: E402

from keras_sparse import cli  # noqa: E402
from keras_sparse.studies import further_pruning  # noqa: E402

cli.define_flags(study=True)


def main(argv):
    del argv
    cli.run_main(lambda: further_pruning.run(flags.FLAGS.logdir, jobs=flags.FLAGS.jobs))


if __name__ == "__main__":
    app.run(main)
