"""One gin-configured training run: data + model + algorithm + optimizer → a logdir.

``binaries/train.py`` is a thin shell around ``train``; the studies call it too. A logdir
receives checkpoints, TensorBoard events, ``operative_config.gin``, ``metrics.json`` and an
exported ``saved_model/``. Rerunning into a logdir that holds a checkpoint resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_sparse import data as data_lib
from keras_sparse import logdir as logdir_lib
from keras_sparse import models
from keras_sparse.algorithms import SparseAlgorithm, get
from keras_sparse.errors import ConfigError
from keras_sparse.masking import export_saved_model, wrap
from keras_sparse.trainer import Trainer

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


def parse_gin(config_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses gin files and bindings; includes resolve next to each file and in ``gin_configs/``.

    A file that is not found as given is looked up in ``gin_configs/`` (``rigl.gin`` works from
    any directory). Unknown files, configurables or parameters raise a one-line ``ConfigError``.
    """
    files = [_find_config(f) for f in config_files]
    for path in [CONFIG_DIR, *{os.path.dirname(f) for f in files}]:
        gin.add_config_file_search_path(path)
    # gin logs "Path not found" at ERROR for each search path it tries before the one that
    # holds an include; real parse errors still raise.
    root = logging.getLogger()
    root.addFilter(_not_found_filter)
    try:
        gin.parse_config_files_and_bindings(files, list(bindings))
    except (ValueError, SyntaxError, KeyError, IOError) as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        where = f" ({lines[-1]})" if len(lines) > 1 else ""
        raise ConfigError(f"Bad gin config: {lines[0] if lines else error}{where}: check the name against "
                          "gin_configs/ and the arguments of training, data, model and the algorithm classes.") from None
    finally:
        root.removeFilter(_not_found_filter)


def _find_config(path: str) -> str:
    for candidate in (path, os.path.join(CONFIG_DIR, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(f"Gin config {path!r} not found, here or in {CONFIG_DIR}: pass an existing file, "
                      "e.g. gin_configs/rigl.gin.")


def _not_found_filter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Path not found")


def learning_rate_schedule(kind: str, base: float, total_steps: int, steps_per_epoch: int,
                           warmup_epochs: float = 0.0):
    """``constant``, ``cosine`` (to 0 at the end) or ``step`` (×0.1 at 50% and 75%), with linear warmup."""
    warmup = int(warmup_epochs * steps_per_epoch)
    if kind == "constant":
        return base
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(0.0 if warmup else base, max(total_steps - warmup, 1),
                                                      warmup_target=base if warmup else None,
                                                      warmup_steps=warmup)
    if kind == "step":
        bounds = [int(0.5 * total_steps), int(0.75 * total_steps)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [base, base * 0.1, base * 0.01])
    raise ConfigError(f"Unknown training.lr_schedule {kind!r}: use 'constant', 'cosine' or 'step'.")


def make_optimizer(name: str, learning_rate, momentum: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """``sgd`` (with momentum), ``adam`` or ``adamw``."""
    decay = weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=decay)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    raise ConfigError(f"Unknown training.optimizer {name!r}: use 'sgd', 'adam' or 'adamw'.")


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, or CPUs), ``multi_worker``
    (the workers named in ``TF_CONFIG``) or ``tpu`` (the TPU in ``TPU_NAME`` or the local one)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("training.strategy = 'multi_worker' needs TF_CONFIG naming the cluster and this "
                              "worker's task: see docs/distributed.md.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"Unknown training.strategy {name!r}: use one of {list(STRATEGIES)}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, but for non-chief multi-workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                     and "chief" not in resolver.cluster_spec().as_dict())


@gin.configurable("training")
@dataclasses.dataclass
class TrainingSettings:
    """Everything about a run but the seed and the logdir; gin binds it as ``training.*``.

    ``algorithm`` is an instance (gin: ``@RigL()``) or a registered name (``"rigl"``).
    """

    algorithm: SparseAlgorithm | str | None = None
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "sgd"
    learning_rate: float = 0.05
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    jit_compile: bool = True
    steps_per_execution: int = 1
    progress: bool = True
    export: bool = True
    exclude: Sequence[str] = ()
    strategy: str = "default"

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"training.epochs={self.epochs} must be at least 1.")


@dataclasses.dataclass
class Run:
    """A model, its data and its trainer, ready to ``fit``; ``initial_kernels`` are the masked
    kernels as initialized, before any mask was applied (the studies re-use them)."""

    settings: TrainingSettings
    data: data_lib.Data
    model: keras.Model
    trainer: Trainer
    initial_kernels: dict[str, np.ndarray]

    def fit(self):
        """Trains for ``settings.epochs`` and returns the per-epoch history."""
        return self.trainer.fit(self.data.train_epoch, self.settings.epochs, validation_data=self.data.test,
                                steps_per_epoch=self.data.steps_per_epoch)

    def metrics(self) -> dict[str, Any]:
        """Test accuracy and loss, the trainer's counters and the run's settings."""
        evaluation = self.trainer.evaluate(self.data.test)
        return {"test_accuracy": evaluation["accuracy"], "test_loss": evaluation["loss"],
                **self.trainer.summary(), "data": self.data.name, "model": self.model.name,
                "epochs": self.settings.epochs, "batch_size": self.settings.batch_size,
                "history": self.trainer.history}


def build_run(seed: int, algorithm: SparseAlgorithm | str | None = None, settings: TrainingSettings | None = None,
              logdir: str | None = None, model_seed: int | None = None,
              strategy: tf.distribute.Strategy | None = None) -> Run:
    """Builds data, model (wrapped), optimizer and trainer for one run.

    ``seed`` seeds the data order and the algorithm; ``model_seed`` (default ``seed``) the
    initialization, so a study can retrain the same data order from a new initialization.
    ``strategy`` defaults to the one ``settings.strategy`` names.
    """
    settings = settings or TrainingSettings()
    algorithm = algorithm if algorithm is not None else settings.algorithm
    if algorithm is None:
        raise ConfigError("No algorithm: bind training.algorithm (e.g. '@RigL()') or include an algorithm config.")
    if isinstance(algorithm, str):
        algorithm = get(algorithm)()
    algorithm.seed = seed
    # tf.data's shuffle seed combines its own seed with TensorFlow's global one: set both
    # first, or the data order would depend on what ran earlier in the process.
    keras.utils.set_random_seed(seed)
    data = data_lib.load(batch_size=settings.batch_size, seed=seed)
    strategy = strategy or make_strategy(settings.strategy)
    with strategy.scope():
        keras.utils.set_random_seed(seed if model_seed is None else model_seed)
        model = wrap(models.build(data.input_shape, data.num_classes), exclude=list(settings.exclude) or None)
        keras.utils.set_random_seed(seed)
        total_steps = settings.epochs * data.steps_per_epoch
        schedule = learning_rate_schedule(settings.lr_schedule, settings.learning_rate, total_steps,
                                          data.steps_per_epoch, settings.warmup_epochs)
        optimizer = make_optimizer(settings.optimizer, schedule, settings.momentum, settings.weight_decay)
    trainer = Trainer(model, algorithm, optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=settings.jit_compile, logdir=logdir, progress=settings.progress,
                      strategy=None if strategy is tf.distribute.get_strategy() else strategy,
                      steps_per_execution=settings.steps_per_execution)
    initial = {k.key: k.kernel.numpy() for k in trainer.kernels}
    return Run(settings, data, model, trainer, initial)


def train(logdir: str, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Trains the gin-configured run and writes its logdir; returns the contents of ``metrics.json``.

    ``seed`` seeds the initialization, the data order and the algorithm's random choices. A
    logdir holding a checkpoint of the same config resumes; one holding a different config is
    refused unless ``overwrite``, which moves the old run aside. Every check runs before
    anything is written into the logdir.
    """
    settings = TrainingSettings()
    config = f"# seed = {seed}\n" + "\n".join(
        line for line in gin.config_str().splitlines() if not line.startswith("training.progress"))
    strategy = make_strategy(settings.strategy)
    chief = is_chief(strategy)
    if not chief:
        # Every worker takes part in saving checkpoints; the others keep theirs apart.
        logdir = os.path.join(logdir, f"worker-{strategy.cluster_resolver.task_id}")
    run = build_run(seed, settings=settings, logdir=logdir, strategy=strategy)
    run.trainer.configure(settings.epochs, run.data.steps_per_epoch)
    with logdir_lib.lock(logdir):
        moved = logdir_lib.check_config(logdir, config, overwrite)
        if moved:
            print(f"Moved the previous run in {logdir} to {moved}.", flush=True)
        run.trainer.setup(run.data.train_epoch, settings.epochs, run.data.steps_per_epoch)
        logdir_lib.write_config(logdir, config)
        run.fit()
        metrics = {**run.metrics(), "seed": seed}
        _write_text(os.path.join(logdir, "operative_config.gin"), gin.operative_config_str())
        _write_text(os.path.join(logdir, "metrics.json"), json.dumps(_finite(metrics), indent=2))
        if settings.export and chief:
            export_saved_model(run.model, os.path.join(logdir, "saved_model"))
    return metrics


def _finite(value):
    """JSON has no NaN/inf: write them as strings rather than produce an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
