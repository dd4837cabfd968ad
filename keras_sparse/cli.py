"""absl flags and the main wrapper shared by the binaries."""

from __future__ import annotations

import glob
import os
import sys
from typing import Any, Callable

import tensorflow as tf
from absl import flags, logging

from keras_sparse.errors import KerasSparseError
from keras_sparse.experiment import CONFIG_DIR, STRATEGIES, parse_gin


def shipped_configs() -> list[str]:
    """The gin configs shipped in ``gin_configs/``, relative to it."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.gin"), recursive=True)
    return sorted(os.path.relpath(p, CONFIG_DIR) for p in paths)


def define_flags(study: bool = False) -> None:
    """Defines ``--gin_config``, ``--gin_bindings``, ``--logdir``, and ``--seed`` for training
    or ``--jobs`` for a study (whose seeds are part of its grid)."""
    flags.DEFINE_multi_string("gin_config", [], "Gin config file (repeatable). Shipped: " + ", ".join(shipped_configs()))
    flags.DEFINE_multi_string("gin_bindings", [], "Gin binding such as 'RigL.sparsity = 0.95' (repeatable).")
    flags.DEFINE_string("logdir", None, "Directory for the run's (or study's) outputs.")
    if study:
        flags.DEFINE_integer("jobs", 1, "Run this many grid cells at a time, each in its own process.")
    else:
        flags.DEFINE_integer("seed", 0, "Seeds initialization, data order and the algorithm's random choices.")
        flags.DEFINE_enum("strategy", None, list(STRATEGIES), "tf.distribute strategy; the same as the gin "
                          "binding training.strategy (see docs/distributed.md).")
        flags.DEFINE_bool("progress", True, "Print a line per epoch (and a progress bar on a terminal); "
                          "--noprogress is the gin binding training.progress = False.")
        flags.DEFINE_bool("overwrite", False, "If --logdir holds a run with another config, move it to "
                          "<logdir>.old-<time> and start again (without it, such a logdir is refused).")
    flags.mark_flag_as_required("logdir")
    # --help lists the main module's key flags; ours are defined here, so register them there.
    names = ["gin_config", "gin_bindings", "logdir"] + (["jobs"] if study else ["seed", "strategy", "progress", "overwrite"])
    for name in names:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def run_main(job: Callable[[], Any]) -> Any:
    """Parses the gin flags and runs ``job``; bad input exits with one ``error:`` line."""
    try:
        parse_flags_into_gin()
        return job()
    except KerasSparseError as error:
        # gin appends "In call to configurable ..." on a second line: keep the first.
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")


def parse_flags_into_gin() -> None:
    """Parses the gin files and bindings the flags name."""
    if not flags.FLAGS["verbosity"].present:
        # TensorFlow's INFO lines (checkpoint sharding, SavedModel assets) drown the progress
        # bar; --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
        tf.get_logger().setLevel("WARNING")
    # Studies build one Trainer (with its own compiled steps) per network: TensorFlow's
    # "excessive retracing" warning is expected there and says nothing useful.
    tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
    bindings = list(flags.FLAGS.gin_bindings)
    if "strategy" in flags.FLAGS and flags.FLAGS.strategy:
        bindings.append(f"training.strategy = '{flags.FLAGS.strategy}'")
    if "progress" in flags.FLAGS and not flags.FLAGS.progress:
        bindings.append("training.progress = False")
    parse_gin(flags.FLAGS.gin_config, bindings)
