"""Train one sparse network: flags → gin → ``keras_sparse.experiment.train``.

    python binaries/train.py --gin_config=gin_configs/rigl.gin --logdir=/tmp/run1
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before TensorFlow loads: no C++ INFO lines

from absl import app, flags  # noqa: E402

from keras_sparse import cli, experiment  # noqa: E402

cli.define_flags()


def main(argv):
    del argv
    cli.run_main(lambda: experiment.train(flags.FLAGS.logdir, flags.FLAGS.seed, flags.FLAGS.overwrite))


if __name__ == "__main__":
    app.run(main)
