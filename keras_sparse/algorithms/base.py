"""The base class every sparse-training algorithm extends.

Modelled on jaxpruner's ``BaseUpdater``: an algorithm only says

* the per-layer target sparsity (``layer_sparsities``, from a distribution),
* the masks to start from (``initial_masks``; random by default),
* at which steps masks change (``is_update_step``) and to what (``updated_masks``),
* at which steps it needs the dense gradient (``uses_dense_gradient``), for the FLOPs count.

Each layer's sparsity type (``keras_sparse.sparsity_types``: unstructured, N:M, blocks, channels)
is bound in ``setup`` (``structures``); the algorithms select masks through it, so one
algorithm serves every type.

The ``Trainer`` calls these hooks and never asks which algorithm it runs.
"""

from __future__ import annotations

import weakref
from typing import Callable, ClassVar, Mapping

import numpy as np
import tensorflow as tf

from keras_sparse import distributions, sparsity_types
from keras_sparse.errors import ConfigError

Gradients = Mapping[str, tf.Tensor]


class SparseAlgorithm:
    """Base class: a static random mask at the target sparsity that never changes.

    Args:
        sparsity: global fraction of masked-kernel weights to prune, in [0, 1).
        distribution: ``"uniform"``, ``"erdos_renyi"``, ``"erdos_renyi_kernel"`` or a dict
            ``{layer name: sparsity}`` (see ``keras_sparse.distributions``).
        first_layer_dense: keep the first masked weight dense (with ``"uniform"``,
            ``"erdos_renyi"`` and ``"erdos_renyi_kernel"``; the others share the rest).
        seed: seeds the random initial masks and any random growth.
        sparsity_type: which entries are pruned together (``keras_sparse.sparsity_types``):
            ``"unstructured"``, N:M such as ``"2:4"``, blocks such as ``"4x1"``, ``"channel"``,
            or a map ``{layer name or path: type}`` (as ``wrap``'s selectors name weights;
            weights it does not name stay unstructured). An N:M layer's density is N/M
            whatever its target, unless the target is 0 (then it stays dense).
    """

    #: The name configs use for this algorithm (``keras_sparse.algorithms.get(name)``).
    name: ClassVar[str] = "base"
    #: Number of batches whose dense gradients ``initial_masks`` needs (SNIP); 0 for none.
    scoring_batches: int = 0
    #: Whether a mask-update step replaces that step's optimizer update (RigL's Algorithm 1)
    #: rather than following it.
    skips_optimizer_step: ClassVar[bool] = False

    def __init__(self, sparsity: float = 0.9, distribution: distributions.Distribution = "erdos_renyi_kernel",
                 first_layer_dense: bool = False, seed: int = 0, sparsity_type: sparsity_types.Spec = "unstructured"):
        self.sparsity = distributions.check_sparsity(sparsity)
        if isinstance(distribution, str) and distribution not in distributions.names():
            raise ConfigError(f"Unknown sparsity distribution {distribution!r}: use one of {distributions.names()} "
                              "or a dict {layer_name: sparsity}.")
        self.distribution = distribution
        self.first_layer_dense = first_layer_dense
        self.seed = int(seed)
        self.sparsity_type = sparsity_types.describe(sparsity_type)
        if first_layer_dense and not isinstance(distribution, str):
            raise ConfigError(f"{type(self).__name__}: first_layer_dense=True does not apply to an explicit "
                              "per-layer map: give the first layer sparsity 0.0 in the map instead.")
        self.total_steps: int | None = 0
        self.steps_per_epoch: int | None = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.targets: dict[str, float] = {}
        self.structures: dict[str, sparsity_types.SparsityType] = {}
        self._owner = None

    # ----------------------------------------------------------------- set-up
    def claim(self, owner: object) -> None:
        """Ties the algorithm to one optimizer: its schedule and masks belong to one model."""
        if self._owner is not None and self._owner() is not None and self._owner() is not owner:
            raise ConfigError(f"This {type(self).__name__} already trains another model: make one algorithm "
                              "object per model (and per SparseOptimizer).")
        self._owner = weakref.ref(owner)

    def setup(self, shapes: Mapping[str, tuple[int, ...]], total_steps: int | None,
              steps_per_epoch: int | None, layouts: Mapping[str, sparsity_types.Layout] | None = None) -> None:
        """Called once before training, with the masked weights' shapes and, where known, the
        length of training (``None`` where not: an algorithm that needs it says so) and the
        weights' layouts (``sparsity_types.layout_of``; a Dense/Conv kernel's where not given).

        Binds each weight's sparsity type (``structures``); a weight that cannot take its type
        raises a ``ConfigError`` naming it and the fix.
        """
        self.shapes = {key: tuple(int(d) for d in shape) for key, shape in shapes.items()}
        self.total_steps = None if total_steps is None else int(total_steps)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.targets = self.layer_sparsities()
        layouts = dict(layouts or {})
        types = sparsity_types.resolve(self.sparsity_type, list(self.shapes))
        self.structures = {
            key: types[key].on(layouts.get(key) or sparsity_types.default_layout(key, shape), self.targets[key])
            for key, shape in self.shapes.items()}

    def required_total_steps(self, what: str) -> int:
        """``total_steps``, or a ``ConfigError`` saying that ``what`` needs it."""
        if self.total_steps is None:
            raise ConfigError(f"{type(self).__name__}: {what} needs the length of training: pass "
                              "total_steps=epochs*steps_per_epoch to SparseOptimizer (or add "
                              "keras_sparse.SparsityCallback() to fit's callbacks), or set it explicitly.")
        return self.total_steps

    def layer_sparsities(self) -> dict[str, float]:
        """Hook: final target sparsity of each masked kernel."""
        options = {"first_layer_dense": self.first_layer_dense} if isinstance(self.distribution, str) else {}
        return distributions.layer_sparsities(self.shapes, self.sparsity, self.distribution, **options)

    def target_active(self, key: str) -> int:
        """Number of active weights of kernel ``key`` at its target sparsity (and its type)."""
        return self.structures[key].active_count()

    # ------------------------------------------------------------------ hooks
    def initial_masks(self, weights: Mapping[str, np.ndarray],
                      dense_gradients: Callable[[], dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
        """Hook: masks to start training from. Default: uniformly random at the target sparsity.

        ``dense_gradients()`` returns gradients summed over ``scoring_batches`` batches, for
        algorithms that score weights at initialization.
        """
        rng = np.random.default_rng(self.seed)
        return {key: self.structures[key].random_mask(rng) for key in self.shapes}

    def is_update_step(self, step: int) -> bool:
        """Hook: whether masks change at training step ``step``. Default: never."""
        return False

    def update_horizon(self) -> int:
        """Hook: a step from which on ``is_update_step`` is always False. Default: 0 (no updates)."""
        return 0

    def updated_masks(self, step: tf.Tensor, weights: Gradients, masks: Gradients,
                      gradients: Gradients) -> dict[str, tf.Tensor]:
        """Hook, traced into the compiled update step: new boolean masks at ``step``.

        ``weights`` are the kernels after the optimizer step of ``step``, ``gradients`` the
        dense gradients of that step (inactive positions included).
        """
        return dict(masks)

    def uses_dense_gradient(self, step: int) -> bool:
        """Hook: whether step ``step`` needs the dense weight gradient (for the FLOPs count)."""
        return False

    def config(self) -> dict:
        """The algorithm's settings, for ``metrics.json``."""
        skip = ("shapes", "targets", "structures", "total_steps", "steps_per_epoch")
        public = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in skip}
        return {"name": self.name, **public}
