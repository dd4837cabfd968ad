"""``Trainer``: the training loop for masked models: epochs, compiled calls and the resume position.

The compiled steps are in ``steps``, each epoch's batches in ``epochs``, evaluation in
``evaluation``, checkpoints in ``checkpointing``; everything else is a callback (``callbacks``).
The loop asks the algorithm only when masks change; it never branches on which algorithm runs.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.callbacks import Callback, CallbackList, ProgressLogger, TensorBoard, TerminateOnNaN, TrainingCost
from keras_sparse.checkpointing import RunCheckpoint
from keras_sparse.epochs import EpochIterator, as_dataset, cardinality
from keras_sparse.errors import TrainingInterrupted
from keras_sparse.evaluation import Evaluator
from keras_sparse.masking import mask_state, masked_weights, sparsity_report
from keras_sparse.optimizer import as_sparse_optimizer
from keras_sparse.signals import stop_requests
from keras_sparse.steps import StepPrograms, as_loss
from keras_sparse.strategies import check_built_in_scope
from keras_sparse.tuning import AUTO, XlaChoice, check_jit_compile
from keras_sparse.tuning import steps_per_execution as resolve_steps_per_execution

__all__ = ["Callback", "Trainer"]


class Trainer:
    """Trains a model made by ``keras_sparse.wrap`` with a ``SparseAlgorithm``.

    Args:
        model: a wrapped model (``keras_sparse.wrap``).
        algorithm: the sparse-training algorithm, e.g. ``algorithms.RigL(sparsity=0.9)``.
        optimizer: a Keras 3 optimizer; the trainer wraps it in a ``SparseOptimizer`` with
            ``algorithm`` (or give a ``SparseOptimizer`` of that algorithm).
        loss: a Keras loss, a loss name, or a function ``loss(y_true, y_pred)``.
        metrics: what ``evaluate`` and the per-epoch validation report besides the loss, as
            ``model.compile`` takes them (``["accuracy"]``, Keras metric objects, functions).
        jit_compile: run the train step XLA-compiled (True), as a plain TensorFlow graph (False),
            or (``"auto"``, the default) the faster of the two, timed on the first calls of
            ``fit`` (``tuning.XlaChoice``; its choice goes to ``summary()``).
        logdir: if set, checkpoints (``logdir/checkpoints``) and TensorBoard events go there,
            and ``fit`` resumes from the latest checkpoint it finds.
        progress: print a line per epoch (``callbacks.ProgressLogger``).
        log_every_steps: how often the training loss is read (progress bar, TensorBoard, NaN check).
        strategy: a ``tf.distribute`` strategy; build and wrap the model inside its scope.
            Batches are global batches; mask updates use the all-reduced gradients, so every
            replica holds the same masks. Several replicas run without XLA (it cannot compile a
            step whose variables live on several devices).
        steps_per_execution: up to this many steps per compiled call (one loop over batches
            stacked K at a time; one device only; a call ends at each mask update). Callbacks'
            ``on_step_end`` then runs once per call; results equal one step a call up to float
            rounding. ``"auto"`` (the default): 20, fewer where 20 batches would pass 64 MiB,
            and 1 under a strategy with several replicas.
    """

    def __init__(self, model: keras.Model, algorithm: SparseAlgorithm | None,
                 optimizer: keras.optimizers.Optimizer, loss: keras.losses.Loss | str | Callable,
                 metrics: Sequence | None = None, jit_compile: bool | str = AUTO, logdir: str | None = None,
                 progress: bool = True, log_every_steps: int = 20, checkpoints_to_keep: int = 3,
                 strategy: tf.distribute.Strategy | None = None, steps_per_execution: int | str = AUTO):
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if steps_per_execution != AUTO:
            resolve_steps_per_execution(steps_per_execution, None, replicas)  # its one-line error, now
        if strategy is not None:
            check_built_in_scope(model, strategy)
        self.model = model
        self.kernels = masked_weights(model)
        with self.strategy.scope():  # the optimizer's variables are mirrored like the model's
            self.optimizer = optimizer = as_sparse_optimizer(optimizer, algorithm)
            optimizer.build(list(model.trainable_variables))
            optimizer.bind(self.kernels)
        self.algorithm = optimizer.algorithm
        self.loss = as_loss(loss)
        jit_compile = check_jit_compile(jit_compile)
        self.xla = XlaChoice(jit_compile if replicas == 1 else False, say=progress)
        self.steps_per_execution = steps_per_execution  # a number once ``fit`` resolves "auto"
        self.log_every_steps = max(1, int(log_every_steps))
        self.programs = StepPrograms(model, optimizer, self.loss, self.kernels, self.strategy, self.xla)
        self._evaluators = {jit: Evaluator(model, self.loss, metrics, self.strategy, jit) for jit in (True, False)}
        self.epoch_iterator: EpochIterator | None = None  # made by ``fit``, once steps_per_execution is known
        # The masks are not among the model's tracked variables (``MaskState``): name them.
        self.checkpoint = None if not logdir else RunCheckpoint(
            os.path.join(logdir, "checkpoints"), checkpoints_to_keep, model=model, optimizer=optimizer,
            masks=[k.mask for k in self.kernels], masks_initialized=mask_state(model).initialized)
        self.cost = TrainingCost()
        self._before_user = [TerminateOnNaN(), self.cost]  # the NaN check first: nothing diverged is saved
        self._after_user = ([ProgressLogger()] if progress else []) + ([TensorBoard(logdir)] if logdir else [])

        # Where training is, for callbacks; ``step`` mirrors the optimizer's step counter on the
        # host, so the loop never waits on the device to know it.
        self.step = self.epoch = self.epochs = self.epoch_step = self.steps_per_epoch = 0
        self.log_point = False  # whether the last call crossed a log_every_steps boundary or ended an epoch
        self.history: list[dict[str, Any]] = []
        self._set_up = False
        self._boundaries: set[int] = set()

    def configure(self, epochs: int, steps_per_epoch: int) -> None:
        """Gives the algorithm the length of training; its checks (a per-layer map naming a
        missing layer, a freeze step after the end, …) raise here, before anything is read from
        or written to the logdir. ``fit`` calls it. Once training has started the schedule stays:
        a later, longer ``fit`` call says once (on stderr) that it trains past the schedule's end."""
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        if not self._set_up:
            self.optimizer.set_schedule(epochs * steps_per_epoch, steps_per_epoch)
            self.optimizer.prepare(initialize=False)
        else:
            self.optimizer.say_past_schedule(epochs * steps_per_epoch)

    def fit(self, train_data: tf.data.Dataset | Callable[[int], tf.data.Dataset] | tuple, epochs: int,
            validation_data: tf.data.Dataset | tuple | None = None, steps_per_epoch: int | None = None,
            callbacks: Sequence[Callback] = (), batch_size: int = 32) -> list[dict[str, Any]]:
        """Trains for ``epochs`` epochs of ``train_data``: batches of ``(x, y)``, NumPy arrays
        ``(x, y)`` (batched by ``batch_size``), or a function ``epoch -> batches`` (such as
        ``Data.train_epoch``), which makes a resumed run see the same batches as an
        uninterrupted one.

        Returns the per-epoch history (train loss, ``val_`` loss and metrics, sparsity, costs).
        With a ``logdir``, a checkpoint is written after every epoch and a rerun resumes from
        it. SIGTERM or SIGINT (Ctrl-C) stop at the next step boundary with a checkpoint and
        raise ``TrainingInterrupted``.
        """
        train_data, validation_data = as_dataset(train_data, batch_size), as_dataset(validation_data, batch_size)
        epoch_data = train_data if callable(train_data) else (lambda epoch: train_data)
        self.configure(epochs, steps_per_epoch or cardinality(epoch_data(0)))
        if self.epoch_iterator is None:
            first = epoch_data(0)
            self.steps_per_execution = resolve_steps_per_execution(
                self.steps_per_execution, first.element_spec, self.strategy.num_replicas_in_sync,
                first_batch=lambda: next(iter(first.take(1))))
            self.epoch_iterator = EpochIterator(self.strategy, self.steps_per_execution)
        callbacks = CallbackList([*self._before_user, *callbacks, *self._after_user])
        self._boundaries = callbacks.step_boundaries(self)
        self._set_up_masks(epoch_data(0), callbacks)
        callbacks.on_train_begin(self)
        with stop_requests() as stop_signal:
            first_epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            for epoch in range(first_epoch, epochs):
                # A run resumed from a mid-epoch checkpoint skips the batches it had done.
                self.epoch, self.epoch_step = epoch, done_in_epoch if epoch == first_epoch else 0
                callbacks.on_epoch_begin(self, epoch)
                started = time.perf_counter()
                batches = self.epoch_iterator.batches(epoch_data(epoch), self.epoch_step, self.steps_per_epoch)
                losses = self._train_epoch(batches, callbacks, stop_signal)
                if stop_signal() is not None:
                    raise TrainingInterrupted.at_step(stop_signal(), self.step, self._save(callbacks))
                record = {"epoch": epoch + 1, "step": self.step,
                          "train_loss": float(np.mean(np.concatenate([np.reshape(loss, -1) for loss in losses]))),
                          "seconds": time.perf_counter() - started, "sparsity": self.sparsity()}
                if validation_data is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(validation_data).items()})
                self.history.append(record)
                callbacks.on_epoch_end(self, record)
                self._save(callbacks)
        callbacks.on_train_end(self)
        return self.history

    def _set_up_masks(self, first_epoch: tf.data.Dataset, callbacks: CallbackList) -> None:
        """Once per trainer: the latest checkpoint of the logdir if there is one, else the
        algorithm's initial masks (SNIP scores the first batches of epoch 0)."""
        if self._set_up:
            return
        self._set_up = True
        history = self.checkpoint.restore([*callbacks, self.xla]) if self.checkpoint is not None else None
        if history is not None:
            self.step, self.history = int(self.optimizer.iterations.numpy()), history
            print(f"Resuming from step {self.step} of {self.epochs * self.steps_per_epoch} "
                  f"({self.checkpoint.restored_from}).", flush=True)
        elif self.step == 0 and not self.optimizer.masks_initialized:
            n = self.algorithm.scoring_batches
            scores = (lambda: self.programs.summed_kernel_gradients(first_epoch.take(n))) if n else None
            self.optimizer.initialize_masks(gradients=scores)
            callbacks.on_masks_initialized(self, n)

    def _train_epoch(self, batches, callbacks: CallbackList, stop_signal: Callable[[], int | None]) -> list:
        """Runs the rest of the epoch; returns the losses (one tensor per compiled call)."""
        losses = []
        stacked = self.steps_per_execution > 1
        for x, y in batches:
            staged = tf.nest.flatten(y)[0].shape[0] if stacked else 1
            start = 0
            while start < staged:
                count, update = self._next_call(staged - start)
                if update:
                    callbacks.on_mask_update_begin(self)
                loss, counts = self.programs.call(x, y, start if stacked else None, count, update)
                every = self.log_every_steps
                self.log_point = ((self.step + count) // every > self.step // every
                                  or self.epoch_step + count == self.steps_per_epoch)
                self.step += count
                self.epoch_step += count
                start += count
                losses.append(loss)
                callbacks.on_step_end(self, loss)
                if update:
                    callbacks.on_mask_update_end(self, np.asarray(counts))
                if stop_signal() is not None:
                    return losses
        return losses

    def _next_call(self, most: int) -> tuple[int, bool]:
        """Steps for the next compiled call, and whether its last one updates the masks: up to
        ``most`` steps, ending at the next mask update, so callbacks see each update's masks
        before the next one (FLOPs and summaries stay exact), and after any step a callback
        asked for (``Callback.step_boundaries``)."""
        for n in range(1, most + 1):
            if self.algorithm.is_update_step(self.step + n - 1):
                return n, True
            if self.step + n in self._boundaries:
                return n, False
        return most, False

    def _save(self, callbacks: CallbackList) -> str | None:
        """Writes a checkpoint (model, optimizer, masks, history, callbacks' state) if there is a logdir."""
        if self.checkpoint is None:
            return None
        callbacks.on_checkpoint(self)
        return self.checkpoint.save(self.step, self.history, [*callbacks, self.xla])

    def evaluate(self, data: tf.data.Dataset | tuple, batch_size: int = 32) -> dict[str, float]:
        """Mean loss and the trainer's ``metrics`` over ``data``."""
        return self._evaluators[self.xla.current()].evaluate(as_dataset(data, batch_size))

    def sparsity(self) -> float:
        """Current overall sparsity of the masked weights."""
        return self.programs.sparsity()

    def summary(self) -> dict[str, Any]:
        """Counters for ``metrics.json``: steps, dense-gradient steps, FLOPs, per-layer sparsity and
        sparsity type (with whether its pattern holds)."""
        report = sparsity_report(self.model)
        total = report.pop("total")
        return {"steps": self.step, "dense_gradient_steps": self.cost.dense_gradient_steps,
                "training_flops_relative_to_dense": self.cost.relative_flops(self.step), "sparsity": self.sparsity(),
                "layer_sparsity": {key: layer["sparsity"] for key, layer in report.items()},
                "layer_structure": {key: {"type": layer["type"], "pattern_holds": layer["pattern_holds"]}
                                    for key, layer in report.items()},
                "sparsity_of_all_parameters": total["sparsity_of_all_parameters"],
                "algorithm": self.algorithm.config(), "steps_per_execution": self.steps_per_execution,
                **self.xla.summary()}
