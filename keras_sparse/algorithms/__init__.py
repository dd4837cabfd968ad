"""Sparse-training algorithms and the registry configs use to name them.

``get("rigl")`` returns the ``RigL`` class. Every class here is gin-configurable under its
class name (``RigL.sparsity = 0.95``); the names this module exports are those configurable
classes, so gin bindings apply to objects built in Python too.
"""

from __future__ import annotations

import inspect

import gin

from keras_sparse.algorithms import dynamic, magnitude, snip, static
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.algorithms.static import FixedMask
from keras_sparse.registry import Registry

REGISTRY: Registry[type[SparseAlgorithm]] = Registry("algorithm")


def register(cls: type[SparseAlgorithm]) -> type[SparseAlgorithm]:
    """Registers ``cls`` under ``cls.name``; returns its gin-configurable version (use that)."""
    return REGISTRY.add(cls.name, gin.external_configurable(cls, name=cls.__name__, module="keras_sparse.algorithms"))


Dense = register(static.Dense)
StaticSparse = register(static.StaticSparse)
MagnitudePruning = register(magnitude.MagnitudePruning)
SNIP = register(snip.SNIP)
SET = register(dynamic.SET)
RigL = register(dynamic.RigL)


def get(name: str) -> type[SparseAlgorithm]:
    """The algorithm class registered as ``name`` (e.g. ``"rigl"``)."""
    return REGISTRY.get(name)


def from_config(config: dict) -> SparseAlgorithm:
    """The algorithm ``config()`` describes (``{"name": "rigl", "sparsity": 0.9, …}``)."""
    settings = dict(config)
    cls = get(settings.pop("name"))
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in settings.items() if k in accepted})


__all__ = ["from_config", "SparseAlgorithm", "FixedMask", "Dense", "StaticSparse", "MagnitudePruning", "SNIP", "SET",
           "RigL", "REGISTRY", "register", "get"]
