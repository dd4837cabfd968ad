"""``model.fit`` with its ``steps_per_execution`` steps in one XLA program, as ``ks.Trainer`` runs them.

Keras's ``fit`` runs a graph function that pulls one batch at a time and calls the one-step XLA
program from inside it (with ``steps_per_execution=K``, K times in a graph ``while_loop``).
``ks.Trainer`` instead calls its XLA program directly, on one batch or on K batches staged
together, which is faster on small models (BENCHMARKS.md, "Any-model core" (b), (c)).
``fuse_steps(model)`` gives a compiled model's ``fit`` the Trainer's shape: with K > 1 its train
function pulls K batches, stacks them and runs K of the model's own ``train_step`` in one XLA
``while_loop``; with K = 1 it pulls the batch in Python and calls the one-step XLA program
directly, with no graph function around it. Everything else of ``fit`` (callbacks, logs,
metrics, validation, ``steps_per_epoch``) is Keras's.

A chunk that cannot be stacked (the epoch's last, shorter one, or batches of different shapes)
runs step by step through the one-step XLA program, so every batch is trained on once, in order.
Data that is not a ``tf.data`` iterator of dense tensors (ragged or sparse inputs) goes to
Keras's own train function, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import weakref
from typing import Any

import keras
import tensorflow as tf

from keras_sparse.optimizer import find_sparse_optimizer


def can_fuse(model: keras.Model) -> str | None:
    """None if ``fuse_steps`` applies to the compiled ``model``, else the reason it does not."""
    if keras.backend.backend() != "tensorflow":
        return "it needs the TensorFlow backend"
    if getattr(model, "optimizer", None) is None:
        return "the model is not compiled"
    if model.run_eagerly:
        return "the model runs eagerly"
    if model.jit_compile is not True:
        return "the model is not compiled with jit_compile=True (fused steps are one XLA program)"
    if tf.distribute.has_strategy() or model.distribute_strategy is not tf.distribute.get_strategy():
        return "the model trains under a tf.distribute strategy"
    return None


def fuse_steps(model: keras.Model) -> bool:
    """Makes ``model.fit`` run each ``steps_per_execution`` steps in one XLA program.

    Call it after ``model.compile(..., jit_compile=True, steps_per_execution=K)``; ``compile``
    again undoes it. Returns False, changing nothing, where it does not apply (``can_fuse`` says
    why): eager models, ``jit_compile`` off or ``"auto"`` left unresolved, a ``tf.distribute``
    strategy.
    """
    if can_fuse(model) is not None:
        return False
    model.make_train_function()  # returns the function only when it was made before
    current = model.train_function
    if not (isinstance(current, _FusedTrainFunction) and current.steps == model.steps_per_execution):
        model.train_function = _FusedTrainFunction(model, current)
    return True


def _dense_batches(iterator) -> bool:
    """Whether ``iterator`` is a ``tf.data`` iterator of dense tensors (not ragged or sparse)."""
    return isinstance(iterator, tf.data.Iterator) and all(
        isinstance(spec, tf.TensorSpec) for spec in tf.nest.flatten(iterator.element_spec))


class _FusedTrainFunction:
    """``model.train_function`` for ``fit``: takes the epoch's iterator, returns the last step's logs
    and raises ``StopIteration`` when the iterator has no batch left (as Keras's own does).

    K = 1: the one-step XLA program, called with the batch pulled in Python; a ``SparseOptimizer``
    whose schedule updates masks decides them in-graph, as in Keras's own step. K > 1: with a
    ``SparseOptimizer``, a chunk whose steps the schedule says update no masks runs a second set of
    programs traced ``without_mask_updates``: no in-graph conditional in the XLA loop."""

    def __init__(self, model: keras.Model, keras_function):
        self.model, self.keras_function = model, keras_function
        self.steps = int(model.steps_per_execution)
        self.optimizer = find_sparse_optimizer(model.optimizer)
        if self.steps == 1:
            self.one_step = tf.function(model.train_step, jit_compile=True)
            # Its concrete function for each element spec (specs with dicts do not hash: a list),
            # found once an iterator: calling the tf.function would match the batch against its
            # signatures at every step, a cost per step on small models.
            self.one_step_programs: list[tuple[Any, Any]] = []
            self.iterator_program = (lambda: None, None)  # (weak reference to an iterator, its program)
            return
        self.fused, self.chunk = self._programs()
        self.quiet_fused, self.quiet_chunk = self._programs()  # traced only inside without_mask_updates

    def _programs(self):
        """A fresh set of compiled programs (each traces ``train_step`` on its own): the K-step XLA
        program, and the chunk function that pulls K batches and runs them through it, or one by
        one through its own one-step XLA program."""
        one_step = tf.function(self.model.train_step, jit_compile=True, reduce_retracing=True)
        fused = tf.function(self._fused_steps, jit_compile=True, reduce_retracing=True)
        return fused, tf.function(functools.partial(self._chunk, one_step, fused), reduce_retracing=True)

    def __call__(self, iterator) -> dict[str, Any]:
        if self.steps == 1:
            known, program = self.iterator_program
            if known() is not iterator:  # checked once an iterator, not at every step
                if not _dense_batches(iterator):
                    return self.keras_function(iterator)
                program = self._one_step_program(iterator.element_spec)
                self.iterator_program = (weakref.ref(iterator), program)
            return program(next(iterator))  # StopIteration at the end, as Keras's function
        if not _dense_batches(iterator):
            return self.keras_function(iterator)
        if self.optimizer is not None and self.optimizer.weights_:
            start = int(self.optimizer.iterations.numpy())
            # updates_between sets the optimizer up if the first step has not yet, so the first
            # chunk can take the no-update programs too: a static mask never compiles the other set.
            if not self.optimizer.updates_between(start, start + self.steps):
                with self.optimizer.without_mask_updates():
                    return self._logs(*self.quiet_chunk(iterator))
        return self._logs(*self.chunk(iterator))

    def _one_step_program(self, spec):
        """The one-step program for batches of ``spec``; without the in-graph update decision where
        the schedule never updates masks (static sparsity, dense), as the K-step programs."""
        for known, program in self.one_step_programs:
            if known == spec:
                return program
        optimizer = self.optimizer
        quiet = optimizer is not None and optimizer.weights_ and not optimizer.updates_between(0, sys.maxsize)
        with optimizer.without_mask_updates() if quiet else contextlib.nullcontext():
            program = self.one_step.get_concrete_function(spec)
        self.one_step_programs.append((spec, program))
        return program

    @staticmethod
    def _logs(ran, logs):
        if not bool(ran):
            raise StopIteration
        return logs

    def _fused_steps(self, stacked):
        first = tf.nest.map_structure(lambda t: t[0], stacked)
        logs = self.model.train_step(first)

        def body(i, logs):
            return i + 1, self.model.train_step(tf.nest.map_structure(lambda t: t[i], stacked))

        return tf.while_loop(lambda i, _: i < self.steps, body, (tf.constant(1), logs))[1]

    def _chunk(self, one_step, fused, iterator):
        batches = [iterator.get_next_as_optional() for _ in range(self.steps)]
        # The logs' structure, for the branches in which a step does not run: the one-step
        # program's outputs, traced (not run) on the iterator's element spec.
        spec = one_step.get_concrete_function(iterator.element_spec).structured_outputs
        no_logs = tf.nest.map_structure(lambda t: tf.zeros(t.shape, t.dtype), spec)

        def step_by_step():
            logs = no_logs
            for batch in batches:
                logs = tf.cond(batch.has_value(), lambda batch=batch: one_step(batch.get_value()),
                               lambda logs=logs: logs)
            return logs

        def all_present():
            values = [batch.get_value() for batch in batches]
            shapes = [tf.shape(t) for t in tf.nest.flatten(values[0])]
            same = [tf.reduce_all(tf.equal(tf.shape(t), shape))
                    for value in values[1:] for t, shape in zip(tf.nest.flatten(value), shapes)]
            return tf.cond(tf.reduce_all(same) if same else tf.constant(True),
                           lambda: fused(tf.nest.map_structure(lambda *ts: tf.stack(ts), *values)),
                           step_by_step)

        # Batches come in order, so the last one is present only if all are.
        logs = tf.cond(batches[-1].has_value(), all_present, step_by_step)
        return batches[0].has_value(), logs
