"""``Trainer``: the custom training loop for masked models.

One train step is one ``tf.function`` compiled with XLA: forward, gradients, then the
``SparseOptimizer``'s step (the core ``model.fit`` uses too): gradients masked, optimizer step,
weights re-masked, so pruned weights are exactly zero after every step. Steps at which the
algorithm changes masks run a second compiled program (the optimizer's mask update, decided
while tracing), so neither program is ever retraced. With
``steps_per_execution=K`` the loop stages K batches at a time and runs them in one compiled
program (an XLA while loop), ending a call at each mask-update step, which that program runs
in-graph. The loop asks the algorithm only through its hooks; it never branches on which
algorithm it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_sparse import flops as flops_lib
from keras_sparse.algorithms.base import SparseAlgorithm
from keras_sparse.errors import ConfigError, TrainingDivergedError
from keras_sparse.masking import mask_state, masked_weights, sparsity_report
from keras_sparse.optimizer import SparseOptimizer


class Callback:
    """Hooks into ``Trainer.fit``; override the ones you need. Called outside the compiled step."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        """After the masks are initialized (or restored), before the first step."""

    def on_step_end(self, trainer: "Trainer") -> None:
        """After each training step; ``trainer.step`` counts the steps done."""

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """After each epoch, with its history record."""


class Trainer:
    """Trains a model made by ``keras_sparse.wrap`` with a ``SparseAlgorithm``.

    Args:
        model: a wrapped model (``keras_sparse.wrap``).
        algorithm: the sparse-training algorithm, e.g. ``algorithms.RigL(sparsity=0.9)``.
        optimizer: a Keras 3 optimizer; the trainer wraps it in a ``SparseOptimizer`` with
            ``algorithm`` (or give a ``SparseOptimizer`` of that algorithm).
        loss: a Keras loss (or callable ``loss(y_true, y_pred)``).
        jit_compile: compile the train step with XLA (default on).
        logdir: if set, checkpoints (``logdir/checkpoints``) and TensorBoard events go there,
            and ``fit`` resumes from the latest checkpoint it finds.
        progress: print a line per epoch, and a Keras progress bar while it runs when the
            output is a terminal (a log file gets the epoch lines only).
        log_every_steps: how often the training loss goes to TensorBoard / the progress bar.
        strategy: a ``tf.distribute`` strategy; build and wrap the model (and make the optimizer)
            inside ``strategy.scope()``. Batches are global batches, split over the replicas;
            mask updates use the all-reduced gradients, so every replica holds the same masks.
            With more than one replica the step is not XLA-compiled: XLA cannot compile a step
            whose variables live on several devices.
        steps_per_execution: run up to this many training steps per compiled call (like Keras's
            ``steps_per_execution``): batches are stacked K at a time and looped over inside
            one XLA program, which removes TensorFlow's per-step dispatch cost on small models.
            Mask updates stay on schedule (a call ends at each update step). Batches must have a
            fixed shape (``drop_remainder=True``); one device only. Callbacks' ``on_step_end``
            then runs once per call, and the loss is logged at the first call end after each
            ``log_every_steps``. The arithmetic is the same as one step a call up to float
            rounding (XLA may fuse the loop body differently), so, as with XLA on against off,
            a long run is not bit-for-bit the run with one step a call.
    """

    def __init__(self, model: keras.Model, algorithm: SparseAlgorithm, optimizer: keras.optimizers.Optimizer,
                 loss: Callable, jit_compile: bool = True, logdir: str | None = None, progress: bool = True,
                 log_every_steps: int = 20, checkpoints_to_keep: int = 3,
                 strategy: tf.distribute.Strategy | None = None, steps_per_execution: int = 1):
        self.model = model
        if isinstance(optimizer, SparseOptimizer):
            if algorithm is not None and algorithm is not optimizer.algorithm:
                raise ConfigError("Trainer: the SparseOptimizer runs another algorithm than the one given: pass "
                                  "the plain optimizer, or algorithm=None.")
        else:
            with (strategy or tf.distribute.get_strategy()).scope():  # its step counter is mirrored like the model
                optimizer = SparseOptimizer(optimizer, algorithm)
        self.algorithm = optimizer.algorithm
        self.optimizer = optimizer
        # A name or a plain function gets Keras's Loss around it, which matches y's rank to the
        # predictions' (a (batch,) label against (batch, 1) logits) as model.compile does.
        self.loss = loss if isinstance(loss, keras.losses.Loss) else _FunctionLoss(
            keras.losses.get(loss) if isinstance(loss, str) else loss)
        self.strategy = strategy or tf.distribute.get_strategy()
        self._replicas = self.strategy.num_replicas_in_sync
        self.jit_compile = jit_compile and self._replicas == 1
        self.logdir = logdir
        self.progress = progress
        self.log_every_steps = max(1, int(log_every_steps))
        if int(steps_per_execution) != steps_per_execution or steps_per_execution < 1:
            raise ConfigError(f"steps_per_execution={steps_per_execution} must be a positive whole number of steps.")
        if steps_per_execution > 1 and self._replicas > 1:
            raise ConfigError(f"steps_per_execution={steps_per_execution} needs a single device, but the strategy "
                              f"has {self._replicas} replicas: use steps_per_execution=1 with a distribution strategy.")
        self.steps_per_execution = int(steps_per_execution)
        self.kernels = masked_weights(model)

        if strategy is not None and not all(self.strategy.extended.variable_created_in_scope(getattr(v, "value", v))
                                            for v in model.weights):
            raise ConfigError("The model's variables were not created under the strategy: build and wrap the "
                              "model inside `with strategy.scope():`.")
        self.step = 0  # Python mirror of the step counter, so the loop never waits on the device
        self.dense_gradient_steps = 0
        self.training_flops = 0.0  # in units of one dense training step (per example)
        self.history: list[dict[str, Any]] = []
        with self.strategy.scope():  # the trainer's variables are mirrored like the model's
            self._state = {
                "dense_gradient_steps": tf.Variable(0, dtype=tf.int64, trainable=False),
                "training_flops": tf.Variable(0.0, dtype=tf.float64, trainable=False),
            }
            self._variables = list(model.trainable_variables)
            self.optimizer.build(self._variables)
            self.optimizer.bind(self.kernels)
            # First step whose loss was NaN/inf (-1: none). Not checkpointed: it only stops this process.
            self._nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        # Outside the scope: strategies cannot mirror strings (collectives broadcast numbers only).
        self._state["history"] = tf.Variable("[]", dtype=tf.string, trainable=False)
        self._forward_flops: dict[str, float] | None = None
        self._densities: dict[str, float] = {}
        self._set_up = False
        self._configured: tuple[int, int] | None = None
        # The masks are not among the model's tracked variables (``MaskState``): name them.
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                               masks=[k.mask for k in self.kernels],
                                               masks_initialized=mask_state(model).initialized, **self._state)
        self._manager = None  # opened by restore(): the logdir may change until training starts
        self._checkpoints_to_keep = checkpoints_to_keep
        self._writer = None  # created at the first summary: a failed start leaves the logdir alone
        self._pipeline: tuple | None = None  # the last epoch's batches and what they were built from
        self._eval_pipeline: tuple | None = None  # the last evaluation data and its pipeline
        self._train_step = self._compile(self._train_step_fn, tf.distribute.ReduceOp.MEAN)
        self._update_step = self._compile(self._update_step_fn, tf.distribute.ReduceOp.MEAN)
        self._eval_step = self._compile(self._eval_step_fn, tf.distribute.ReduceOp.SUM)
        self._multi_step = _SignatureDispatch(tf.function(self._multi_step_fn, jit_compile=self.jit_compile))
        self._active_counts = tf.function(self._active_counts_fn, jit_compile=self.jit_compile)
        self._scalars_cache: dict[Any, tf.Tensor] = {}

    # ------------------------------------------------------------ compiled parts
    def _compile(self, step_fn, reduce_op):
        """One ``tf.function``: XLA-compiled on one device; ``strategy.run`` on several, with
        the per-replica results reduced by ``reduce_op``."""
        if self._replicas == 1:
            return _SignatureDispatch(tf.function(step_fn, jit_compile=self.jit_compile))

        def distributed(x, y):
            results = self.strategy.run(step_fn, args=(x, y))
            return tf.nest.map_structure(lambda r: self.strategy.reduce(reduce_op, r, axis=None), results)

        return tf.function(distributed)

    def _all_reduce(self, value):
        """Sum over replicas (identity on one device)."""
        if self._replicas == 1:
            return value
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)

    def _gradients(self, x, y, replicas: int = 1):
        """The loss (mean over the batch), the predictions, and the gradients of this replica's
        share of the global batch.

        Under a strategy the optimizer sums gradients over replicas, so each replica's loss is
        divided by the replica count; Keras losses (``self.loss`` is one) do that themselves.
        """
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=True)
            loss = self.loss(y, predictions)
            if self.model.losses:
                loss = loss + tf.add_n(self.model.losses) / replicas
        return loss * replicas, predictions, tape.gradient(loss, self._variables)

    def _watch_loss(self, loss) -> None:
        """Records the first step with a NaN/inf loss (read by the loop at its next check)."""
        loss = self._all_reduce(loss)  # the same verdict on every replica
        first = tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), self._nonfinite_step < 0)
        self._nonfinite_step.assign(tf.where(first, tf.cast(self.optimizer.iterations, tf.int64), self._nonfinite_step))

    def _step(self, x, y, update_masks: bool | tf.Tensor):
        """One training step: gradients, then the optimizer's step with the mask update decided
        (a Python bool while tracing, or a boolean tensor in-graph). Returns the loss, the
        predictions and the masks' active counts after an update (see ``sparse_apply``)."""
        loss, predictions, gradients = self._gradients(x, y, self._replicas)
        self._watch_loss(loss)
        return loss, predictions, self.optimizer.sparse_apply(gradients, self._variables, update=update_masks)

    def _train_step_fn(self, x, y):
        return self._step(x, y, update_masks=False)[0]

    def _update_step_fn(self, x, y):
        """The loss, and the masks' active counts after the update."""
        loss, _, counts = self._step(x, y, update_masks=True)
        return loss, counts

    def _multi_step_fn(self, xs, ys, start, count, update_last):
        """Steps ``start .. start + count - 1`` of a staged chunk (``xs``/``ys`` hold batches
        stacked on a new leading axis) in one while loop; if ``update_last``, the last one is the
        optimizer's mask-update step instead, after the loop. Returns the chunk's losses (zeros
        where no step ran) and the masks' active counts after the update (zeros without one)."""
        size = tf.nest.flatten(ys)[0].shape[0]

        def one_step(i, losses, update):
            # tf.gather, not t[i]: XLA compiles a slice's start as a constant where it can, and the
            # last step's index is a function of the call's arguments: one compilation per value.
            x, y = (tf.nest.map_structure(lambda t: tf.gather(t, i), staged) for staged in (xs, ys))
            loss, _, counts = self._step(x, y, update)
            return tf.tensor_scatter_nd_update(losses, [[i]], [tf.cast(loss, tf.float32)]), counts

        def body(i, losses):
            return i + 1, one_step(i, losses, False)[0]

        last = start + count - 1
        plain_end = tf.where(update_last, last, start + count)  # an updating last step runs after the loop
        _, losses = tf.while_loop(lambda i, _: i < plain_end, body, (start, tf.zeros([size], tf.float32)))
        # The update step runs after the loop, not in its body: XLA copies a conditional's operands
        # every time it runs, which cost every step when the loop held one.
        return tf.cond(update_last, lambda: one_step(last, losses, True),
                       lambda: (losses, tf.zeros([len(self.kernels)], tf.int64)))

    def _eval_step_fn(self, x, y):
        predictions = self.model(x, training=False)
        loss = tf.reduce_mean(self.loss(y, predictions))
        if self._replicas > 1:
            loss = loss * self._replicas  # Keras losses divide by the replica count under a strategy
        batch = tf.cast(tf.shape(predictions)[0], tf.float32)
        return loss * batch, _correct(y, predictions), batch

    # ---------------------------------------------------------------- set-up
    def configure(self, epochs: int, steps_per_epoch: int) -> None:
        """Gives the algorithm the model's kernels and the length of training; its checks (a
        per-layer map naming a missing layer, a freeze step after the end, …) raise here,
        before anything is read from or written to the logdir."""
        if self._configured == (epochs, steps_per_epoch):
            return
        self.optimizer.set_schedule(epochs * steps_per_epoch, steps_per_epoch)
        self.optimizer.prepare(initialize=False)
        self._forward_flops = {k.key: 2.0 * macs for k, macs in zip(self.kernels, flops_lib.forward_macs(self.model, self.kernels))}
        self._configured = (epochs, steps_per_epoch)

    def setup(self, train_data: tf.data.Dataset | Callable[[int], tf.data.Dataset], epochs: int,
              steps_per_epoch: int | None = None) -> None:
        """Prepares training (``fit`` calls it): ``configure``, then the latest checkpoint of the
        logdir if there is one, else the algorithm's initial masks (SNIP scores the first
        batches of epoch 0)."""
        if self._set_up:
            return
        first_epoch = train_data(0) if callable(train_data) else train_data
        self.configure(epochs, steps_per_epoch or _cardinality(first_epoch))
        if not self.restore() and self.step == 0 and not self.optimizer.masks_initialized:
            self._initialize_masks(first_epoch)
        self._refresh_densities()
        self._set_up = True

    def _initialize_masks(self, train_data) -> None:
        n = self.algorithm.scoring_batches

        def dense_gradients() -> dict[str, np.ndarray]:
            total = {k.key: np.zeros(k.kernel.shape, np.float32) for k in self.kernels}
            index = {id(v): i for i, v in enumerate(self._variables)}
            # Scoring runs in training mode (batch statistics), but must not move BatchNorm's
            # moving averages: that would be training on the scoring batches.
            saved = [v.numpy() for v in self.model.non_trainable_variables]
            for x, y in train_data.take(n):
                _, _, gradients = self._gradients(x, y)
                for k in self.kernels:
                    total[k.key] += gradients[index[id(k.kernel)]].numpy()
            for variable, value in zip(self.model.non_trainable_variables, saved):
                variable.assign(value)
            return total

        self.optimizer.initialize_masks(gradients=dense_gradients if n else None)
        self.dense_gradient_steps += n
        self.training_flops += n  # a dense forward + backward per scoring batch: one dense step each

    def _refresh_densities(self, counts: tf.Tensor | None = None) -> None:
        """Updates the densities the FLOPs count uses from each mask's active count, as the
        update program returned them, or counted on the device now (no copy of the masks is
        kept on the host)."""
        counts = (self._active_counts() if counts is None else counts).numpy()
        self._densities = {k.key: float(count) / float(np.prod(k.mask.shape)) for k, count in zip(self.kernels, counts)}

    def _active_counts_fn(self) -> tf.Tensor:
        # One compiled call and one read-back for all masks (one eager count per mask cost
        # ~0.3 ms more after every LeNet-300-100 mask update).
        return tf.stack([tf.math.count_nonzero(k.mask, dtype=tf.int64) for k in self.kernels])

    def _host_masks(self) -> dict[str, np.ndarray]:
        return {k.key: k.mask.numpy() for k in self.kernels}

    # ------------------------------------------------------------ checkpoints
    def save(self) -> str | None:
        """Writes a checkpoint (model, optimizer, masks, counters) to ``logdir/checkpoints``."""
        if self._manager is None:
            return None
        self._state["dense_gradient_steps"].assign(self.dense_gradient_steps)
        self._state["training_flops"].assign(self.training_flops)
        self._state["history"].assign(json.dumps(self.history))
        return self._manager.save(checkpoint_number=self.step)

    def restore(self) -> bool:
        """Restores the newest readable checkpoint in ``logdir``; returns whether there was one.

        A corrupt or truncated checkpoint is reported by name and the previous one is tried;
        if none can be read, a ``ConfigError`` names the newest.
        """
        if not self.logdir:
            return False
        self._manager = tf.train.CheckpointManager(self._checkpoint, os.path.join(self.logdir, "checkpoints"),
                                                   max_to_keep=self._checkpoints_to_keep)
        if not self._manager.checkpoints:
            return False
        for path in reversed(self._manager.checkpoints):
            try:
                self._checkpoint.restore(path).assert_existing_objects_matched()
                break
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError) as error:
                print(f"warning: checkpoint {path} cannot be read ({type(error).__name__}); trying the previous one.",
                      file=sys.stderr, flush=True)
        else:
            raise ConfigError(f"No readable checkpoint in {os.path.dirname(self._manager.checkpoints[-1])} "
                              f"(newest: {self._manager.checkpoints[-1]}): restore it from a backup, or use "
                              "another logdir / --overwrite to start again.")
        self.step = int(self.optimizer.iterations.numpy())
        self.dense_gradient_steps = int(self._state["dense_gradient_steps"].numpy())
        self.training_flops = float(self._state["training_flops"].numpy())
        self.history = json.loads(self._state["history"].numpy().decode())
        return True

    # ------------------------------------------------------------- main API
    def fit(self, train_data: tf.data.Dataset | Callable[[int], tf.data.Dataset] | tuple, epochs: int,
            validation_data: tf.data.Dataset | tuple | None = None, steps_per_epoch: int | None = None,
            callbacks: Sequence[Callback] = (), batch_size: int = 32) -> list[dict[str, Any]]:
        """Trains for ``epochs`` epochs of ``train_data``: batches of ``(x, y)``, or a function
        ``epoch -> batches`` (such as ``Data.train_epoch``), which makes a resumed run see the
        same batches as an uninterrupted one.

        Returns the per-epoch history (train loss, validation loss/accuracy, sparsity). With a
        ``logdir``, a checkpoint is written after every epoch and a rerun resumes from it.
        ``callbacks`` (``Callback`` objects) are called at train begin, step end and epoch end.
        tf.data's autotuning is turned off for both data sets unless their options set it
        (``without_autotune`` says why).
        """
        train_data, validation_data = as_dataset(train_data, batch_size), as_dataset(validation_data, batch_size)
        epoch_data = train_data if callable(train_data) else (lambda epoch: train_data)
        steps_per_epoch = steps_per_epoch or _cardinality(epoch_data(0))
        self.setup(epoch_data, epochs, steps_per_epoch)
        for callback in callbacks:
            callback.on_train_begin(self)
        with _sigterm_flag() as preempted:
            first_epoch, done_in_epoch = divmod(self.step, steps_per_epoch)
            for epoch in range(first_epoch, epochs):
                if self.progress:
                    print(f"Epoch {epoch + 1}/{epochs}", flush=True)
                # A run resumed from a mid-epoch checkpoint (SIGTERM) skips the batches it had done.
                skip = done_in_epoch if epoch == first_epoch else 0
                started = time.perf_counter()
                losses = self._train_epoch(self._epoch_batches(epoch_data(epoch), skip, steps_per_epoch), skip,
                                           steps_per_epoch, callbacks, preempted)
                if preempted():
                    self._check_finite()
                    path = self.save()
                    raise SystemExit(f"Stopped by SIGTERM at step {self.step}"
                                     + (f"; checkpoint {path} written: rerun the same command to resume." if path else "."))
                record = {"epoch": epoch + 1, "step": self.step,
                          # NumPy: an eager reshape per call took 6.3 ms of a 300-step epoch, NumPy 1.0 ms.
                          "train_loss": float(np.mean(np.concatenate([np.reshape(l, -1) for l in losses]))),
                          "seconds": time.perf_counter() - started, "sparsity": self.sparsity()}
                if validation_data is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(validation_data).items()})
                self.history.append(record)
                for callback in callbacks:
                    callback.on_epoch_end(self, record)
                self._epoch_summaries(record)
                self.save()
                if self.progress:
                    print("  " + ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                                           if isinstance(v, float) and k != "seconds"), flush=True)
        return self.history

    def _epoch_batches(self, source: tf.data.Dataset, done: int, steps_per_epoch: int):
        """The rest of one epoch of ``source`` (its first ``done`` steps were run before), as the
        loop takes it: distributed over the replicas, or stacked ``steps_per_execution`` at a time.

        Reused while ``source`` is the same object: TensorFlow optimizes a tf.data pipeline the
        first time it is iterated and keeps the result on the dataset object, so a pipeline
        built afresh each epoch paid that again every epoch (4.4 ms for an in-memory
        LeNet-300-100 data set, 1.5% of a 300-step epoch at K = 20). tf.data's autotuning is
        turned off unless ``source`` sets it (``without_autotune``).
        """
        key = (done, steps_per_epoch)
        if self._pipeline is None or self._pipeline[0] is not source or self._pipeline[1] != key:
            batches = without_autotune(source.skip(done).take(steps_per_epoch - done))
            stack_in_python = False
            if self._replicas > 1:
                batches = self.strategy.experimental_distribute_dataset(batches)
            elif self.steps_per_execution > 1:
                if all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(batches.element_spec)):
                    batches = batches.batch(self.steps_per_execution)  # every batch alike: tf.data stacks them
                else:
                    stack_in_python = True  # a short last batch must start a stack of its own
            self._pipeline = (source, key, batches, stack_in_python)
        _, _, batches, stack_in_python = self._pipeline
        return _stacked(batches, self.steps_per_execution) if stack_in_python else batches

    def _train_epoch(self, batches, done: int, steps_per_epoch: int,
                     callbacks: Sequence[Callback], preempted: Callable[[], bool]) -> list:
        """Runs the rest of one epoch (its first ``done`` steps were run before) over
        ``batches`` from ``_epoch_batches``; returns the losses (one tensor per compiled call)."""
        bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if self.progress and sys.stdout.isatty() else 0,
                                  stateful_metrics=["loss"], unit_name="step")
        losses = []
        position = done
        for x, y in batches:
            staged = 1 if self.steps_per_execution == 1 else tf.nest.flatten(y)[0].shape[0]
            start = 0
            while start < staged:
                count, update = self._next_call(staged - start)
                # Only TensorBoard's drop-fraction/IoU summaries need the masks before an update.
                before = self._host_masks() if update and self.logdir else None
                self._count_costs(count)
                if self.steps_per_execution > 1:
                    loss, counts = self._multi_step(x, y, self._scalar(start), self._scalar(count),
                                                    self._scalar(update))
                    if count < staged:
                        loss = loss[start:start + count]
                elif update:
                    loss, counts = self._update_step(x, y)
                else:
                    loss = self._train_step(x, y)
                if update:
                    self._refresh_densities(counts)
                    if before is not None:
                        self._mask_change_summaries(before, self._host_masks())
                logged = (self.step + count) // self.log_every_steps > self.step // self.log_every_steps
                self.step += count
                position += count
                start += count
                losses.append(loss)
                for callback in callbacks:
                    callback.on_step_end(self)
                if logged or position == steps_per_epoch:
                    self._check_finite()
                    value = float(np.asarray(loss).reshape(-1)[-1])  # numpy: an eager slice costs ~50 µs
                    bar.update(position, values=[("loss", value)])
                    self._scalars("train", {"loss": value})
                if preempted():
                    return losses
        return losses

    def _next_call(self, most: int) -> tuple[int, bool]:
        """Steps for the next compiled call, and whether its last one updates the masks: up to
        ``most`` steps, ending at the next mask update, so the host reads each update's masks
        before the next one (FLOPs and summaries stay exact)."""
        for n in range(1, most + 1):
            if self.algorithm.is_update_step(self.step + n - 1):
                return n, True
        return most, False

    def _scalar(self, value: int | bool) -> tf.Tensor:
        """``tf.constant(value)``, made once per value (the loop passes the same few each call)."""
        key = (type(value), value)
        if key not in self._scalars_cache:
            self._scalars_cache[key] = tf.constant(value)
        return self._scalars_cache[key]

    def _count_costs(self, count: int) -> None:
        """Adds the dense-gradient steps and training FLOPs of the next ``count`` steps."""
        dense_cost = flops_lib.dense_step_cost(self._forward_flops)
        for step in range(self.step, self.step + count):
            uses_dense = self.algorithm.uses_dense_gradient(step)
            self.training_flops += flops_lib.step_cost(self._forward_flops, self._densities, uses_dense) / dense_cost
            self.dense_gradient_steps += int(uses_dense)

    def evaluate(self, data: tf.data.Dataset | tuple, batch_size: int = 32) -> dict[str, float]:
        """Mean loss and accuracy of the model over ``data``."""
        data = as_dataset(data, batch_size)
        loss_sum = correct = count = 0.0
        if self._eval_pipeline is None or self._eval_pipeline[0] is not data:  # reused: see _epoch_batches
            self._eval_pipeline = (data, without_autotune(data))
        data = self._eval_pipeline[1]
        if self._replicas > 1:
            data = self.strategy.experimental_distribute_dataset(data)
        for x, y in data:
            loss, right, batch = self._eval_step(x, y)
            loss_sum, correct, count = loss_sum + float(loss), correct + float(right), count + float(batch)
        return {"loss": loss_sum / count, "accuracy": correct / count}

    def trace_counts(self) -> dict[str, int]:
        """How often each compiled program was traced: once per input signature, else every call
        would pay for compiling (tests and benchmarks check it)."""
        programs = {"train": self._train_step, "update": self._update_step, "staged": self._multi_step}
        return {name: getattr(p, "function", p).experimental_get_tracing_count() for name, p in programs.items()}

    def sparsity(self) -> float:
        """Current overall sparsity of the masked kernels."""
        sizes = {k.key: float(np.prod(k.mask.shape)) for k in self.kernels}
        return 1.0 - sum(self._densities[key] * sizes[key] for key in sizes) / sum(sizes.values())

    def summary(self) -> dict[str, Any]:
        """Counters for ``metrics.json``: steps, dense-gradient steps, FLOPs, per-layer sparsity."""
        report = sparsity_report(self.model)
        return {
            "steps": self.step,
            "dense_gradient_steps": self.dense_gradient_steps,
            "training_flops_relative_to_dense": self.training_flops / max(self.step, 1),
            "sparsity": self.sparsity(),
            "layer_sparsity": {key: value["sparsity"] for key, value in report.items() if key != "total"},
            "sparsity_of_all_parameters": report["total"]["sparsity_of_all_parameters"],
            "algorithm": self.algorithm.config(),
        }

    # --------------------------------------------------------------- logging
    def _check_finite(self) -> None:
        step = int(self._nonfinite_step.numpy())
        if step >= 0:
            kept = self._manager.latest_checkpoint if self._manager is not None else None
            raise TrainingDivergedError(
                f"The loss became NaN or infinite at step {step}: lower the learning rate or check the data; "
                + (f"the last good checkpoint {kept} is kept." if kept else "no checkpoint was written."))

    def _scalars(self, prefix: str, values: dict[str, float]) -> None:
        if not self.logdir:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default(step=self.step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", value)

    def _mask_change_summaries(self, before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
        """At a mask update: per layer, the fraction of its active weights dropped (for SET and
        RigL, the drop fraction the schedule applied) and the IoU with the previous mask."""
        dropped, overlap = {}, {}
        for key, old in before.items():
            new = after[key]
            active = max(int(np.count_nonzero(old)), 1)
            dropped[key] = float(np.count_nonzero(old & ~new)) / active
            overlap[key] = float(np.count_nonzero(old & new)) / max(int(np.count_nonzero(old | new)), 1)
        self._scalars("drop_fraction", dropped)
        self._scalars("mask_iou_with_previous", overlap)

    def _epoch_summaries(self, record: dict[str, Any]) -> None:
        self._scalars("epoch", {k: v for k, v in record.items() if isinstance(v, float)})
        self._scalars("sparsity", {key: 1.0 - d for key, d in self._densities.items()})
        self._scalars("epoch", {"dense_gradient_steps": float(self.dense_gradient_steps),
                                "training_flops_relative_to_dense": self.training_flops / max(self.step, 1)})
        if self._writer is None:
            return
        with self._writer.as_default(step=self.step):
            for key, mask in self._host_masks().items():
                # A kernel as a 2-D picture: rows = all input positions, columns = outputs.
                picture = mask.reshape(-1, mask.shape[-1]) if mask.ndim > 1 else mask[None, :]
                tf.summary.image(f"masks/{key}", picture[None, :, :, None].astype(np.uint8) * 255)
        self._writer.flush()


@contextlib.contextmanager
def _sigterm_flag():
    """Within the block, SIGTERM (preemption) only sets a flag, which the loop checks after
    every step to write a checkpoint and stop. Outside the main thread, signals cannot be
    caught: the flag then stays False."""
    caught = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
    try:
        yield lambda: bool(caught)
    finally:
        signal.signal(signal.SIGTERM, previous)


class _SignatureDispatch:
    """Calls a ``tf.function`` through its concrete function for the arguments' shapes and
    dtypes. ``tf.function`` matches its arguments against every traced signature at each call,
    45–75 µs on 2 CPU cores (BENCHMARKS.md), up to a tenth of a LeNet-300-100 step; this looks
    the concrete function up in a dict. Arguments other than tensors go through the
    ``tf.function``."""

    def __init__(self, function):
        self.function = function
        self._concrete: dict[Any, Any] = {}

    def __call__(self, *args):
        flat = tf.nest.flatten(args)
        if not all(isinstance(t, tf.Tensor) for t in flat):
            return self.function(*args)
        key = (repr(tf.nest.map_structure(lambda _: 0, args)), tuple((t.shape, t.dtype) for t in flat))
        concrete = self._concrete.get(key)
        if concrete is None:
            concrete = self._concrete[key] = self.function.get_concrete_function(*args)
        return concrete(*args)


def _correct(y, predictions):
    predicted = tf.argmax(predictions, axis=-1, output_type=tf.int64)
    if y.shape.rank == predictions.shape.rank:  # one-hot labels
        y = tf.argmax(y, axis=-1, output_type=tf.int64)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(tf.reshape(y, tf.shape(predicted)), tf.int64)), tf.float32))


def _stacked(batches: tf.data.Dataset, size: int):
    """Batches stacked ``size`` at a time on a new leading axis, in order, for batches whose
    shapes vary: a batch of another shape (a short last batch) starts a new stack, so stacks
    can be shorter."""
    def stack(chunk: list):
        return tf.nest.map_structure(lambda *parts: tf.stack(parts), *chunk)

    def shapes(batch) -> list:
        return [tuple(t.shape) for t in tf.nest.flatten(batch)]

    chunk: list = []
    for batch in batches:
        if chunk and (len(chunk) == size or shapes(batch) != shapes(chunk[0])):
            yield stack(chunk)
            chunk = []
        chunk.append(batch)
    if chunk:
        yield stack(chunk)


class _FunctionLoss(keras.losses.Loss):
    """A loss function as a Keras ``Loss`` (mean over the batch, scaled for replicas), with the
    labels' and predictions' ranks matched first as ``model.compile`` does: a size-1 last axis
    of the one with one more dimension is dropped."""

    def __init__(self, function: Callable):
        super().__init__(name=getattr(function, "__name__", "loss"))
        self.function = function

    def call(self, y_true, y_pred):
        if y_pred.shape.rank == y_true.shape.rank + 1 and y_pred.shape[-1] == 1:
            y_pred = tf.squeeze(y_pred, -1)
        elif y_true.shape.rank == y_pred.shape.rank + 1 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, -1)
        return self.function(y_true, y_pred)


def as_dataset(data, batch_size: int):
    """``data`` as batches: a tf.data data set or a function of the epoch as it is, NumPy arrays
    ``(x, y)`` batched by ``batch_size`` in order (as ``model.fit(x, y, shuffle=False)``)."""
    if data is None or callable(data) or isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices(tuple(data)).batch(int(batch_size))
    raise ConfigError(f"Trainer takes a tf.data.Dataset, a function epoch -> Dataset, or arrays (x, y); got "
                      f"{type(data).__name__}.")


def without_autotune(data: tf.data.Dataset) -> tf.data.Dataset:
    """``data`` with tf.data's autotuning turned off, unless ``data``'s options set it.

    Every epoch ends by destroying its iterator, and destroying an iterator over an autotuned
    pipeline can wait for the autotuner to wake: on a 2-core machine, epochs then ended at
    fixed times after their iterator was made (~0.15, 0.22, 0.31 or 0.63 s), whatever the
    work, adding up to 0.3 s to a quarter-second epoch; with autotuning off, no epoch
    waited (BENCHMARKS.md). ``AUTOTUNE`` parallelism then runs one call per core, and
    ``prefetch(AUTOTUNE)`` sizes its buffer with its own simpler tuner. Set
    ``options.autotune.enabled = True`` on the data set to keep autotuning.
    """
    if data.options().autotune.enabled is not None:
        return data
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)


def _cardinality(data: tf.data.Dataset) -> int:
    n = int(data.cardinality())
    if n <= 0:
        raise ConfigError("The training data has unknown or infinite length: pass steps_per_epoch to fit().")
    return n
