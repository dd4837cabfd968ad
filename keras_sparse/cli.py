"""absl flags and the main wrapper shared by the binaries."""

from __future__ import annotations

import glob
import inspect
import os
import sys
from typing import Any, Callable, Iterable

import gin
import tensorflow as tf
from absl import flags, logging

from keras_sparse.config import CONFIG_DIR, parse_gin
from keras_sparse.errors import KerasSparseError, TrainingInterrupted
from keras_sparse.strategies import STRATEGIES

SIGINT_EXIT_CODE = 130  # the shell's 128 + SIGINT


def shipped_configs() -> list[str]:
    """The gin configs shipped in ``gin_configs/``, relative to it."""
    paths = glob.glob(os.path.join(CONFIG_DIR, "**", "*.gin"), recursive=True)
    return sorted(os.path.relpath(p, CONFIG_DIR) for p in paths)


GRID_FLAGS = ("jobs", "list_cells", "cell", "assemble", "executor", "ray_address", "cpus_per_cell", "gpus_per_cell")


def define_flags(study: bool = False) -> None:
    """Defines ``--gin_config``, ``--gin_bindings``, ``--gin_help``, ``--logdir``, and ``--seed``
    for training or, for a study (whose seeds are part of its grid), how its cells run: ``--jobs``,
    ``--list_cells``, ``--cell``, ``--assemble``, ``--executor`` and Ray's resources."""
    flags.DEFINE_multi_string("gin_config", [],
                              "Gin config file (repeatable). Shipped: " + ", ".join(shipped_configs()))
    flags.DEFINE_multi_string("gin_bindings", [], "Gin binding such as 'RigL.sparsity = 0.95' (repeatable); "
                              "--gin_help lists every parameter that can be bound, with its default.")
    flags.DEFINE_bool("gin_help", False, "Print every gin parameter this command can bind (training.*, data.*, "
                      "model.*, the algorithm classes" + (", the study's" if study else "") + ") with its default "
                      "and, with --gin_config/--gin_bindings, the value they bind; then exit.")
    flags.DEFINE_string("logdir", None, "Directory for the run's (or study's) outputs (required).")
    if study:
        define_grid_flags()
    else:
        flags.DEFINE_integer("seed", 0, "Seeds initialization, data order and the algorithm's random choices.")
        flags.DEFINE_enum("strategy", None, list(STRATEGIES), "tf.distribute strategy; the same as the gin "
                          "binding training.strategy (see docs/distributed.md).")
        flags.DEFINE_bool("progress", True, "Print a line per epoch (and a progress bar on a terminal); "
                          "--noprogress is the gin binding training.progress = False.")
        flags.DEFINE_bool("overwrite", False, "If --logdir holds a run with another config, move it to "
                          "<logdir>.old-<time> and start again (without it, such a logdir is refused).")
    # --logdir is required, but not to list the gin parameters.
    flags.register_multi_flags_validator(["logdir", "gin_help"], lambda values: values["logdir"] or values["gin_help"],
                                         message="--logdir is required: name the directory for the outputs.")
    # --help lists the main module's key flags; ours are defined here, so register them there.
    names = ["gin_config", "gin_bindings", "gin_help", "logdir"] + (
        list(GRID_FLAGS) if study else ["seed", "strategy", "progress", "overwrite"])
    for name in names:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def define_grid_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """A study's flags for how its grid of cells runs (``commands.grid_executor`` reads them)."""
    flags.DEFINE_integer("jobs", 1, "Run this many grid cells at a time on this machine, each in its own process.",
                         flag_values=flag_values)
    flags.DEFINE_bool("list_cells", False, "Run nothing: print one self-contained command per grid cell still to "
                      "do (--cell=K, writing into --logdir), for a Slurm job array, GNU parallel or any scheduler.",
                      flag_values=flag_values)
    flags.DEFINE_integer("cell", None, "Run only grid cell K (as --list_cells prints); the run that finishes the "
                         "last cell writes the study's tables.", lower_bound=0, flag_values=flag_values)
    flags.DEFINE_bool("assemble", False, "Run nothing: write the study's tables and plots from the cells done "
                      "so far, naming the ones missing.", flag_values=flag_values)
    flags.DEFINE_enum("executor", "local", ["local", "ray"], "Where the cells run: 'local' (--jobs processes on "
                      "this machine) or 'ray' (each cell a Ray task; pip install -e '.[ray]').",
                      flag_values=flag_values)
    flags.DEFINE_string("ray_address", None, "With --executor=ray: the cluster to join ('auto', HOST:PORT or "
                        "ray://HOST:10001); default: RAY_ADDRESS, a cluster 'ray start' runs here, else a new "
                        "local one.", flag_values=flag_values)
    flags.DEFINE_float("cpus_per_cell", 1.0, "With --executor=ray: the CPUs each cell's task requests.",
                       flag_values=flag_values)
    flags.DEFINE_float("gpus_per_cell", 0.0, "With --executor=ray: the GPUs each cell's task requests (0.5: two "
                       "cells share a GPU).", flag_values=flag_values)


def run_main(job: Callable[[], Any], gin_modules: Iterable[str] = ()) -> Any:
    """Parses the gin flags and runs ``job``; with ``--gin_help`` prints the bindable gin
    parameters instead (those of ``keras_sparse`` but its studies, and of the modules named in
    ``gin_modules``).

    A ``KerasSparseError`` (bad input, divergence) exits with one ``error:`` line and status 1;
    ``TrainingInterrupted`` (SIGTERM, Ctrl-C: a checkpoint was written) with its one line and
    status 128 + the signal's number, 130 for Ctrl-C; a Ctrl-C outside the training loop with one
    line and status 130.
    """
    try:
        parse_flags_into_gin()
        if "gin_help" in flags.FLAGS and flags.FLAGS.gin_help:
            print(gin_reference(gin_modules))
            return None
        return job()
    except TrainingInterrupted as error:
        print(first_line(error), file=sys.stderr)
        sys.exit(error.exit_code)
    except KerasSparseError as error:
        sys.exit(f"error: {first_line(error)}")
    except KeyboardInterrupt:
        print("Interrupted (Ctrl-C) outside the training loop: nothing was saved.", file=sys.stderr)
        sys.exit(SIGINT_EXIT_CODE)


def first_line(error: BaseException) -> str:
    """An error's message as one line (gin appends "In call to configurable ..." on a second)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


# --gin_help: the bindable parameters, read from gin's registry and the configurables' signatures.

def _configurables(modules: Iterable[str]) -> list[Any]:
    """gin's registered configurables of ``keras_sparse`` (studies only when in ``modules``),
    in the order training, data, model, algorithms, studies, others."""
    from gin import config as gin_config

    chosen = set(modules)
    found = []
    for _, configurable in gin_config._REGISTRY.items():  # gin has no public listing of its registry
        module = configurable.module or ""
        if not module.startswith("keras_sparse") or (module.startswith("keras_sparse.studies")
                                                     and module not in chosen):
            continue
        found.append(configurable)
    order = {"training": 0, "data": 1, "model": 2}

    def key(configurable):
        module = configurable.module
        rank = order.get(configurable.name, 3 if module.startswith("keras_sparse.algorithms")
                         else 4 if module.startswith("keras_sparse.studies") else 5)
        return rank, configurable.name
    return sorted(found, key=key)


def _parameters(function: Callable, skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [p for p in signature.parameters.values() if p.name not in set(skip) and p.name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _bound(name: str, parameter: str) -> tuple[bool, Any]:
    try:
        return True, gin.query_parameter(f"{name}.{parameter}")
    except ValueError:  # not bound by the parsed configs
        return False, None


def _line(name: str, parameter: inspect.Parameter) -> str:
    default = "(required)" if parameter.default is inspect.Parameter.empty else repr(parameter.default)
    text = f"  {name}.{parameter.name} = {default}"
    is_bound, value = _bound(name, parameter.name)
    if is_bound:
        text += f"    # bound: {value!r}"
    return text


def _summary(function: Callable) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def gin_reference(modules: Iterable[str] = ()) -> str:
    """Every gin parameter the command can bind, with its default (and the value bound by the
    parsed gin files and bindings), grouped by configurable. Read from gin's registry, so a new
    configurable (an algorithm, a study) appears without a change here."""
    lines = ["Gin parameters: bind them with --gin_bindings='NAME.PARAMETER = VALUE' or in a --gin_config file.",
             "Defaults as in the code; '# bound:' is the value the given --gin_config/--gin_bindings set.", ""]
    for configurable in _configurables(modules):
        function = configurable.wrapped
        skip = set(configurable.denylist or ())
        parameters = _parameters(function, skip)
        if configurable.allowlist:
            parameters = [p for p in parameters if p.name in configurable.allowlist]
        lines.append(f"{configurable.name}: {_summary(function)}")
        lines.extend(_line(configurable.name, p) for p in parameters)
        if configurable.name == "model" and configurable.module == "keras_sparse.models":
            lines.extend(_model_options(configurable.name))
        lines.append("")
    return "\n".join(lines).rstrip()


def _model_options(name: str) -> list[str]:
    """``model.build`` passes its other parameters to the builder ``model.name`` names."""
    from keras_sparse import models

    lines = [f"  and the options of the builder {name}.name names:"]
    for model in models.MODELS:
        builder = models.MODELS.get(model)
        options = _parameters(builder, skip=("input_shape", "num_classes"))
        described = ", ".join(f"{name}.{p.name} = {p.default!r}" for p in options) or "no options"
        lines.append(f"    {model}: {described}")
    return lines
