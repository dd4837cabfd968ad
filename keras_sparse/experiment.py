"""One gin-configured training run: data + model + algorithm + optimizer → a logdir.

``binaries/train.py`` is a thin shell around ``train``; the studies call it too. A logdir
receives checkpoints, TensorBoard events, ``operative_config.gin``, ``metrics.json`` and an
exported ``saved_model/``. Rerunning into a logdir that holds a checkpoint resumes from it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_sparse import data as data_lib
from keras_sparse import files, models
from keras_sparse import logdir as logdir_lib
from keras_sparse.algorithms import SparseAlgorithm, get
from keras_sparse.errors import ConfigError
from keras_sparse.masking import export_saved_model, wrap
from keras_sparse.strategies import is_chief, make_strategy
from keras_sparse.trainer import Trainer


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
    jit_compile: bool | str = "auto"
    steps_per_execution: int | str = "auto"
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

    def fit(self, callbacks: Sequence = ()):
        """Trains for ``settings.epochs``, with per-epoch ``val_`` metrics on the validation split
        held out from the training data; returns the per-epoch history."""
        return self.trainer.fit(self.data.train_epoch, self.settings.epochs, validation_data=self.data.validation,
                                steps_per_epoch=self.data.steps_per_epoch, callbacks=callbacks)

    def metrics(self) -> dict[str, Any]:
        """``test_`` loss and metrics (the test split, evaluated once, now), the trainer's
        counters and the run's settings."""
        evaluation = self.trainer.evaluate(self.data.test)
        return {**{f"test_{key}": value for key, value in evaluation.items()},
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
                      metrics=["accuracy"], jit_compile=settings.jit_compile, logdir=logdir, progress=settings.progress,
                      strategy=None if strategy is tf.distribute.get_strategy() else strategy,
                      steps_per_execution=settings.steps_per_execution)
    initial = {k.key: k.kernel.numpy() for k in trainer.kernels}
    return Run(settings, data, model, trainer, initial)


def train(logdir: str, seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Trains the gin-configured run and writes its logdir; returns the contents of ``metrics.json``.

    ``seed`` seeds the initialization, the data order and the algorithm's random choices. A
    logdir holding a checkpoint of the same config resumes, and a finished one is left as it is;
    one holding a different config is refused. ``overwrite`` moves an existing run aside and
    starts again. Every check runs before anything is written into the logdir.
    """
    started = time.perf_counter()
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
        elif os.path.exists(os.path.join(logdir, files.METRICS_FILE)):
            metrics = files.read_metrics(logdir)
            print(f"{logdir} holds a finished run of this config (test accuracy {_percent(metrics, 'test_accuracy')}): "
                  "nothing to do. To train again, use another --logdir or pass --overwrite.", flush=True)
            return metrics
        logdir_lib.write_config(logdir, config)
        run.fit()
        metrics = {**run.metrics(), "seed": seed}
        files.write_text(os.path.join(logdir, "operative_config.gin"), gin.operative_config_str())
        files.write_json(os.path.join(logdir, files.METRICS_FILE), metrics)
        if settings.export and chief:
            export_saved_model(run.model, os.path.join(logdir, "saved_model"))
    if chief:
        print(final_summary(metrics, logdir, time.perf_counter() - started, exported=settings.export), flush=True)
    return metrics


def final_summary(metrics: dict[str, Any], logdir: str, seconds: float, exported: bool = True) -> str:
    """The lines a finished run ends with: the result, the costs, and where the outputs are."""
    trained = sum(record.get("seconds", 0.0) for record in metrics.get("history", []))
    lines = [
        f"Done: test accuracy {_percent(metrics, 'test_accuracy')}, test loss {metrics['test_loss']:.4f}.",
        f"  sparsity {100 * metrics['sparsity']:.1f}% of the masked weights, "
        f"{100 * metrics['sparsity_of_all_parameters']:.1f}% of all parameters",
        f"  dense-gradient steps {metrics['dense_gradient_steps']} of {metrics['steps']}; "
        f"training FLOPs {metrics['training_flops_relative_to_dense']:.3f} × dense",
        f"  wall time {_duration(seconds)} (training epochs: {_duration(trained)} in all, over every resumed part)",
        f"  metrics:      {os.path.join(logdir, files.METRICS_FILE)}",
    ]
    if exported:
        lines.append(f"  saved model:  {os.path.join(logdir, 'saved_model')}")
    lines.append(f"  TensorBoard:  tensorboard --logdir {logdir}")
    return "\n".join(lines)


def _percent(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else str(value)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s" if minutes else f"{rest:.1f} s"
