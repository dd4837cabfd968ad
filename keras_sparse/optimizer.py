"""``SparseOptimizer``: sparse training as an optimizer, so any training loop trains sparse.

Like google-research/rigl's sparse optimizers and jaxpruner's ``wrap_optax``, it wraps any Keras
optimizer and adds an algorithm (``keras_sparse.algorithms``). Every ``apply`` is one training
step of the algorithm on a model whose weights ``keras_sparse.wrap`` masked:

* a plain step masks the gradients, lets the wrapped optimizer update the weights, and
  re-masks them (momentum would otherwise move a pruned weight off zero);
* at the algorithm's mask-update steps it changes the masks from that step's dense gradients
  instead: RigL and SET skip the optimizer step there, as the RigL paper's Algorithm 1,
  google-research/rigl and jaxpruner do; gradual magnitude pruning takes the step, then prunes.
  Grown weights start at zero with their optimizer slots (momentum, Adam moments) reset.

``model.compile(optimizer=SparseOptimizer(...))`` and plain ``model.fit`` then train sparse;
so does a ``GradientTape`` loop calling ``optimizer.apply``, and ``keras_sparse.Trainer``.
Whether a step updates the masks is decided inside the compiled step, from a table of the
algorithm's update steps, so ``jit_compile`` and ``steps_per_execution`` work.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sparse import algorithms as algorithms_lib
from keras_sparse import mask_ops, masking, sparsity_types
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError


@keras.saving.register_keras_serializable(package="keras_sparse")
class SparseOptimizer(keras.optimizers.Optimizer):
    """Wraps ``optimizer`` so that every step also runs ``algorithm`` on the masked weights.

    Args:
        optimizer: any Keras 3 optimizer (SGD, Adam, AdamW, …) with its own settings.
        algorithm: e.g. ``keras_sparse.algorithms.RigL(sparsity=0.9)``; one optimizer each.
        total_steps: the length of training in steps, which places the algorithm's schedule
            (RigL's end at 75%, magnitude pruning's begin and end). Needed unless the algorithm
            has no schedule or all its steps are explicit; ``keras_sparse.SparsityCallback``
            can set it from the first ``fit`` call instead. Steps past the schedule's end keep
            the masks as they are, and the first training that runs past it says so in one line
            on stderr (``say_past_schedule``).
        steps_per_epoch: for settings given in epochs (``RigL(freeze_epoch=1)``).
        model: the model to train; wrapped (``keras_sparse.wrap``) here if it is not yet.
            Without it, the masks are found from the variables when the optimizer is built.
            Either way the algorithm's initial masks are set at the first step (``prepare``).

    The step counter is ``iterations`` (every step, mask updates included); the wrapped
    optimizer's own ``iterations`` (and so a learning-rate schedule) counts the steps it took.
    SNIP scores weights on data: call ``initialize_masks(data)`` once, after ``compile``.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, algorithm: SparseAlgorithm,
                 total_steps: int | None = None, steps_per_epoch: int | None = None,
                 model: keras.Model | None = None, name: str | None = None, **kwargs: Any):
        if kwargs:
            raise ConfigError(f"SparseOptimizer takes no {sorted(kwargs)}: set them on the optimizer it wraps.")
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ConfigError(f"SparseOptimizer wraps a Keras 3 optimizer, got {type(optimizer).__name__}.")
        if isinstance(algorithm, Mapping):  # from_config
            algorithm = algorithms_lib.from_config(algorithm)
        if not isinstance(algorithm, SparseAlgorithm):
            raise ConfigError(f"SparseOptimizer needs a keras_sparse algorithm, got {type(algorithm).__name__}: "
                              "e.g. keras_sparse.algorithms.RigL(sparsity=0.9).")
        super().__init__(learning_rate=0.0, name=name or f"sparse_{optimizer.name}")
        self.inner_optimizer = optimizer
        self.algorithm = algorithm
        self.total_steps = None if total_steps is None else int(total_steps)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        # Plain containers, set past Keras's attribute tracking: they refer to the model's masks
        # and the wrapped optimizer's slots, which are saved with those, not as this optimizer's.
        object.__setattr__(self, "weights_", [])
        object.__setattr__(self, "_slots", {})
        self._state_ref = None  # weakref to the model's MaskState
        self._ready = False  # algorithm set up and masks bound
        self._said_past_end = False  # the past-the-schedule line is said once per optimizer
        self._update_table: tf.Tensor | None = None
        self._tracing_without_updates = False  # see without_mask_updates
        if model is not None:
            masking.wrap(model)
            self.bind(masking.masked_weights(model))

    # ------------------------------------------------------------- set-up
    @property
    def prepared(self) -> bool:
        """Whether the algorithm is set up (``prepare``): the schedule can no longer change."""
        return self._ready

    def set_schedule(self, total_steps: int | None, steps_per_epoch: int | None = None) -> None:
        """Sets the length of training before the first step (``SparsityCallback`` calls it)."""
        if self._ready and (total_steps, steps_per_epoch) != (self.total_steps, self.steps_per_epoch):
            raise ConfigError(f"SparseOptimizer: the schedule ({self.total_steps} steps) is already in use: "
                              "set total_steps before training starts.")
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    def bind(self, weights: Sequence[masking.MaskedWeight]) -> None:
        """Ties the optimizer to one model's masked weights (``build`` finds them from its variables)."""
        weights = list(weights)
        if self.weights_:
            if len(weights) != len(self.weights_) or any(
                    a.variable is not b.variable for a, b in zip(weights, self.weights_)):
                raise ConfigError(f"This SparseOptimizer was built for another model's weights "
                                  f"({[w.key for w in self.weights_][:3]}…): make one optimizer per model.")
            return
        if len({id(w.state) for w in weights}) != 1:
            raise ConfigError("SparseOptimizer: the masked weights come from several wrapped models: "
                              "wrap the outer model only.")
        mirrored = isinstance(getattr(weights[0].variable, "value", None), tf.distribute.DistributedValues)
        if mirrored != isinstance(getattr(self.iterations, "value", None), tf.distribute.DistributedValues):
            raise ConfigError("The SparseOptimizer and the model were made under different tf.distribute strategies: "
                              "create both (and wrap the model) inside the same `with strategy.scope():`.")
        self.algorithm.claim(self)
        self.weights_[:] = weights
        self._state_ref = weakref.ref(weights[0].state)

    @property
    def masks_initialized(self) -> bool:
        """Whether the model's masks were set (by ``initialize_masks``, ``set_masks`` or a load)."""
        self._require_bound()
        with tf.init_scope():
            return bool(self._state_ref().initialized.numpy())

    def prepare(self, initialize: bool = True) -> None:
        """Sets the algorithm up for the bound weights and the schedule, and (``initialize``) sets
        its initial masks unless the model has them already. The first step calls it; call it
        earlier to see a configuration error earlier."""
        self._require_bound()
        with tf.init_scope():  # eager, also while the first step is being traced
            if not self._ready:
                shapes = {w.key: tuple(int(d) for d in w.variable.shape) for w in self.weights_}
                layouts = {w.key: sparsity_types.layout_of(w) for w in self.weights_}
                self.algorithm.setup(shapes, self.total_steps, self.steps_per_epoch, layouts)
                self._state_ref().declare_sparsity_types(self.algorithm.structures)
                horizon = self.algorithm.update_horizon()
                self._update_table = tf.constant([self.algorithm.is_update_step(s) for s in range(horizon)] + [False])
                self._ready = True
            if initialize and not self.masks_initialized:
                if self.algorithm.scoring_batches:
                    raise ConfigError(f"{type(self.algorithm).__name__} scores weights on training batches: call "
                                      "optimizer.initialize_masks(train_data) once, after compile and before fit.")
                self.initialize_masks()

    def build(self, var_list) -> None:
        """Builds the wrapped optimizer on ``var_list`` and finds the masks of its variables."""
        var_list = list(var_list)
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._bind_masked(var_list)

    def _bind_masked(self, variables) -> None:
        """``bind`` to the masks of those of ``variables`` that a wrapped model masks, if any."""
        weights = [w for w in map(masking.mask_of, variables) if w is not None]
        if weights:
            self.bind(weights)

    @property
    def variables(self) -> list:
        return self._variables[:] + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.learning_rate = learning_rate

    def _require_bound(self) -> None:
        if not self.weights_ and self.built:  # the model may have been wrapped after the build (a load)
            self._bind_masked(self._trainable_variables)
        if not self.weights_:
            raise ConfigError("None of the variables this SparseOptimizer updates has a mask: call "
                              "keras_sparse.wrap(model) before compile/fit, or pass model= to SparseOptimizer "
                              "(a .keras file loads with its masks through keras_sparse.load_model).")

    def initialize_masks(self, data=None, gradients: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        """Sets the algorithm's initial masks (once: a model that has them, saved or loaded, keeps them).

        Args:
            data: for algorithms that score weights on data (SNIP): batches ``(x, y)`` of the
                training data; the model must be compiled with its loss.
            gradients: instead of ``data``, a function returning the dense gradients summed over
                the scoring batches, ``{key: array}`` (``Trainer`` passes its own).
        """
        self.prepare(initialize=False)
        if self.masks_initialized:
            return
        scoring = self.algorithm.scoring_batches
        if scoring and gradients is None:
            if data is None:
                raise ConfigError(f"{type(self.algorithm).__name__} scores weights on training batches: call "
                                  "optimizer.initialize_masks(train_data) once, after compile and before fit.")

            def gradients():
                return _summed_compiled_loss_gradients(self._state_ref().model_ref(), self.weights_, data, scoring)
        weights = {w.key: w.variable.numpy() for w in self.weights_}
        masks = self.algorithm.initial_masks(weights, gradients if scoring else None)
        for w in self.weights_:
            mask = np.asarray(masks[w.key], dtype=bool)
            w.mask.assign(mask)
            w.variable.assign(np.where(mask, weights[w.key], 0).astype(w.variable.dtype))
        self._state_ref().initialized.assign(True)

    # -------------------------------------------------------------- steps
    def apply(self, grads, trainable_variables=None):
        """One training step (Keras's ``Optimizer.apply``); mask updates decided in-graph."""
        variables = list(trainable_variables) if trainable_variables is not None else self._trainable_variables
        if not self.built:
            self.build(variables)
        self.prepare()
        if not tf.distribute.has_strategy() or tf.__internal__.distribute.strategy_supports_no_merge_call():
            self.sparse_apply(grads, variables, update=False if self._tracing_without_updates else None)
            return
        # MirroredStrategy: a synchronization (the wrapped optimizer's gradient all-reduce) may not
        # sit inside a conditional in replica context, so decide in cross-replica context.
        def cross_replica(distribution, grads, variables):
            def step(update: bool):
                def run():
                    distribution.extended.call_for_each_replica(
                        lambda g: self.sparse_apply(g, variables, update=update, count=False), args=(grads,))
                return run

            tf.cond(self.is_update_now(), step(True), step(False))
            self.iterations.assign_add(1)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(list(grads), variables))

    def updates_between(self, start: int, stop: int) -> bool:
        """Whether any step from ``start`` to ``stop - 1`` updates the masks (the set-up schedule)."""
        self.prepare(initialize=False)
        return any(self.algorithm.is_update_step(s) for s in range(start, min(stop, self.algorithm.update_horizon())))

    def update_steps(self, start: int, stop: int) -> list[int]:
        """The steps from ``start`` to ``stop - 1`` that update the masks (the set-up schedule)."""
        self.prepare(initialize=False)
        return [s for s in range(start, min(stop, self.algorithm.update_horizon())) if self.algorithm.is_update_step(s)]

    @contextlib.contextmanager
    def without_mask_updates(self):
        """While a step program is traced inside it, ``apply`` compiles a step that never updates
        masks, without the in-graph ``tf.cond`` (which copies its operands each step inside an XLA
        loop). For programs that the caller runs only where ``updates_between`` is False; call such
        a program inside it every time, so that a retrace sees it too."""
        self._tracing_without_updates = True
        try:
            yield
        finally:
            self._tracing_without_updates = False

    def is_update_now(self) -> tf.Tensor:
        """Whether the current step (``iterations``) updates the masks, as a boolean tensor."""
        last = tf.cast(tf.shape(self._update_table)[0] - 1, self.iterations.dtype)
        # tf.gather, not table[step]: XLA compiles a slice's start as a constant, which would
        # recompile the step at every step.
        return tf.gather(self._update_table, tf.minimum(tf.convert_to_tensor(self.iterations), last))

    def sparse_apply(self, grads, variables, update: bool | tf.Tensor | None = None,
                     count: bool = True) -> tf.Tensor | None:
        """One training step with the mask-update decision given: ``True``/``False`` decided while
        tracing (``Trainer`` compiles each its own program), a boolean tensor decided in-graph,
        or None for the schedule's decision at ``iterations``.

        Returns the new masks' active counts (int64, one per masked weight) at a decided mask
        update, zeros from a tensor decision that did not update, None without an update.
        """
        self.prepare()
        grads = list(grads)
        variables = list(variables)
        index = {id(v): i for i, v in enumerate(variables)}
        missing = [w.key for w in self.weights_ if id(w.variable) not in index]
        if missing:
            raise ConfigError(f"SparseOptimizer: the masked weights {missing[:3]} are not among the variables "
                              "being trained: this optimizer was built for another model.")
        positions = [index[id(w.variable)] for w in self.weights_]
        dense = [grads[i] if grads[i] is not None else tf.zeros_like(w.variable)
                 for i, w in zip(positions, self.weights_)]
        if update is None:
            update = self.is_update_now()
        if isinstance(update, bool):
            counts = (self._update_masks(dense, grads, variables, positions) if update
                      else self._step(grads, variables, positions))
        else:
            counts = tf.cond(update, lambda: self._update_masks(dense, grads, variables, positions),
                             lambda: self._step(grads, variables, positions, zeros=True))
        if count:
            self.iterations.assign_add(1)
        return counts

    def _step(self, grads, variables, positions, zeros: bool = False):
        """A plain step: masked gradients, the wrapped optimizer's update, weights re-masked."""
        # Every gradient made in this graph (a conditional's branch): the wrapped optimizer's
        # all-reduce needs all of its inputs from one graph.
        masked = [g if g is None else tf.identity(g) for g in grads]
        for i, w in zip(positions, self.weights_):
            if masked[i] is not None:
                masked[i] = tf.where(w.mask, masked[i], tf.zeros_like(masked[i]))
        self.inner_optimizer.apply(masked, variables)
        for w in self.weights_:
            w.variable.assign(tf.where(w.mask, w.variable, tf.zeros_like(w.variable)))
        return tf.zeros([len(self.weights_)], tf.int64) if zeros else None

    def _update_masks(self, dense, grads, variables, positions) -> tf.Tensor:
        """The algorithm's mask update at this step, from its dense gradients (all-reduced over
        replicas, so every replica computes the same masks)."""
        if not self.algorithm.skips_optimizer_step:
            self._step(grads, variables, positions)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            dense = [context.all_reduce(tf.distribute.ReduceOp.SUM, g) for g in dense]
        step = tf.convert_to_tensor(self.iterations)
        weights = {w.key: tf.convert_to_tensor(w.variable) for w in self.weights_}
        masks = {w.key: tf.convert_to_tensor(w.mask) for w in self.weights_}
        new_masks = self.algorithm.updated_masks(step, weights, masks, dict(zip((w.key for w in self.weights_), dense)))
        for w in self.weights_:
            old, new = masks[w.key], new_masks[w.key]
            w.mask.assign(new)
            # Weights that stay active keep their value; dropped and grown ones are zero.
            w.variable.assign(tf.where(new & old, w.variable, tf.zeros_like(w.variable)))
            grown = new & ~old
            for slot in self.slots(w):
                slot.assign(tf.where(grown, tf.zeros_like(slot), slot))
        return tf.stack([mask_ops.count_true(new_masks[w.key]) for w in self.weights_])

    def slots(self, weight: masking.MaskedWeight) -> list:
        """The wrapped optimizer's variables that belong to ``weight`` (momentum, Adam moments, …)."""
        if weight.key not in self._slots:
            prefix = weight.variable.path.replace("/", "_") + "_"
            self._slots[weight.key] = [v for v in self.inner_optimizer.variables
                                       if v.name.startswith(prefix) and tuple(v.shape) == tuple(weight.variable.shape)]
        return self._slots[weight.key]

    def past_schedule_note(self, last_step: int) -> str | None:
        """The one line to show when training runs to ``last_step``, past the schedule's end (the
        schedule is not stretched); None within the schedule, when it has no length, and when the
        masks would not change anyway (no updates at all, as static and SNIP, or explicit update
        steps that reach past ``last_step``)."""
        if self.total_steps is None or last_step <= self.total_steps:
            return None
        stop = ""
        if self._ready:
            horizon = self.algorithm.update_horizon()
            if horizon == 0 or horizon >= last_step:
                return None
            stop = f" (mask updates stop at step {horizon})"
        return (f"keras-sparse: training runs to step {last_step}, past the schedule's {self.total_steps} "
                f"steps: the schedule is not stretched{stop}.")

    def say_past_schedule(self, last_step: int) -> None:
        """Prints ``past_schedule_note(last_step)`` on stderr, the first time there is one."""
        note = self.past_schedule_note(last_step)
        if note and not self._said_past_end:
            self._said_past_end = True
            print(note, file=sys.stderr, flush=True)

    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned now."""
        self._require_bound()
        return masking.sparsity_of(self.weights_)

    # ------------------------------------------------------------- Keras API
    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        # Keras's fit calls this once, on the host, when the fit call ends: the place where a fit
        # without SparsityCallback (which says it before the call) learns it trained past the
        # schedule's end with the masks fixed, and says so rather than staying silent.
        self.inner_optimizer.finalize_variable_values(var_list)
        self.say_past_schedule(int(self.iterations.numpy()))

    def get_config(self) -> dict:
        return {"name": self.name, "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "algorithm": self.algorithm.config(), "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)


def as_sparse_optimizer(optimizer: keras.optimizers.Optimizer, algorithm: SparseAlgorithm | None) -> SparseOptimizer:
    """``optimizer`` wrapped in a ``SparseOptimizer`` running ``algorithm``, or ``optimizer`` itself
    if it is a ``SparseOptimizer`` already (then ``algorithm`` is None or its own)."""
    if not isinstance(optimizer, SparseOptimizer):
        return SparseOptimizer(optimizer, algorithm)
    if algorithm is not None and algorithm is not optimizer.algorithm:
        raise ConfigError("The SparseOptimizer runs another algorithm than the one given: pass the plain "
                          "optimizer, or algorithm=None.")
    return optimizer


def find_sparse_optimizer(optimizer) -> SparseOptimizer | None:
    """``optimizer`` if it is a ``SparseOptimizer``, or the one it wraps (Keras wraps the compiled
    optimizer in a ``LossScaleOptimizer`` under ``mixed_float16``); None if there is none."""
    while optimizer is not None and not isinstance(optimizer, SparseOptimizer):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


def summed_gradients(model: keras.Model, weights: Sequence[masking.MaskedWeight], batches: Iterable,
                     loss: Callable[[Any, Any, Any], tf.Tensor]) -> dict[str, np.ndarray]:
    """Each of ``weights``' dense gradient of ``loss(x, y, predictions)`` summed over ``batches``
    (SNIP's scores; Lee et al. 2019). Runs in training mode (batch statistics) but puts
    BatchNorm's moving averages back: scoring must not train."""
    saved = [v.numpy() for v in model.non_trainable_variables]
    total = {w.key: np.zeros(w.variable.shape, np.float32) for w in weights}
    for x, y in batches:
        with tf.GradientTape() as tape:
            value = loss(x, y, model(x, training=True))
        for w, gradient in zip(weights, tape.gradient(value, [w.variable for w in weights])):
            if gradient is not None:
                total[w.key] += np.asarray(gradient, np.float32)
    for variable, value in zip(model.non_trainable_variables, saved):
        variable.assign(value)
    return total


def _summed_compiled_loss_gradients(model: keras.Model, weights: Sequence[masking.MaskedWeight], data,
                                    batches: int) -> dict[str, np.ndarray]:
    """``summed_gradients`` of the model's compiled loss over the first ``batches`` batches of
    ``data`` (a dataset, or arrays ``(x, y)`` batched by 32)."""
    if model is None or getattr(model, "compiled_loss", None) is None and getattr(model, "loss", None) is None:
        raise ConfigError("initialize_masks(data) needs the model compiled with its loss first.")
    if not isinstance(data, tf.data.Dataset):
        data = tf.data.Dataset.from_tensor_slices(data).batch(32) if isinstance(data, tuple) else data
    return summed_gradients(model, weights, itertools.islice(data, batches),
                            lambda x, y, predictions: model.compute_loss(x=x, y=y, y_pred=predictions))
