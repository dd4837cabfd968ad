"""``tf.distribute`` strategies by name, as ``training.strategy`` and ``--strategy`` give them."""

from __future__ import annotations

import os

import tensorflow as tf

from keras_sparse.errors import ConfigError

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


def check_built_in_scope(model, strategy: tf.distribute.Strategy) -> None:
    """A one-line error unless every variable of ``model`` was created under ``strategy``."""
    if not all(strategy.extended.variable_created_in_scope(getattr(v, "value", v)) for v in model.weights):
        raise ConfigError(f"The variables of model {model.name!r} were not created under the strategy: build and "
                          "wrap the model inside `with strategy.scope():`.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (always, but for non-chief multi-workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0
                                                     and "chief" not in resolver.cluster_spec().as_dict())
