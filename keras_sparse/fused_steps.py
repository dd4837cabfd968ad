"""``model.fit`` with its ``steps_per_execution`` steps in one XLA program, as ``ks.Trainer`` runs them.

Keras's ``fit`` runs a graph function that pulls one batch at a time and calls the one-step XLA
program from inside it (with ``steps_per_execution=K``, K times in a graph ``while_loop``).
``ks.Trainer`` instead calls its XLA program directly, on one batch or on K batches staged
together, which is faster on small models (BENCHMARKS.md, "Any-model core" (b), (c)).
``fuse_steps(model)`` gives a compiled model's ``fit`` the Trainer's shape: with K > 1 its train
function runs K of the model's own ``train_step`` in one XLA ``while_loop`` on K batches stacked
together (a mask-update step in the one-step program, as the Trainer ends a call there; a step
with convolutions in a graph ``while_loop`` that calls the one-step XLA program, as the Trainer
runs it, since XLA's CPU compiler runs the convolutions of a loop body slowly), and a
background thread pulls and stacks the next K batches meanwhile (the Trainer's ``tf.data``
pipeline stacks its K batches when the loop reads them); with K = 1 it pulls the batch in Python
and calls the one-step XLA program directly, with no graph function around it. Everything else
of ``fit`` (callbacks, logs, metrics, validation, ``steps_per_epoch``) is Keras's.

Batches are trained on once each, in order. A chunk that cannot be stacked (the epoch's last,
shorter one, or batches of different shapes) runs step by step through the one-step XLA
program with the in-graph mask-update decision. Pulling ahead holds two chunks of K batches
in memory at once, and means that a ``fit`` which stops before its data ends
(``steps_per_epoch``, ``EarlyStopping``) has drawn up to K batches more than it trained on;
that matters only for a Python generator given to ``fit`` again, from which Keras's own
prefetching draws ahead too.
Data that is not a ``tf.data`` iterator of dense tensors (ragged or sparse inputs) goes to
Keras's own train function, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable

import keras
import tensorflow as tf

from keras_sparse.optimizer import find_sparse_optimizer
from keras_sparse.steps import IntConstants, has_convolutions

# can_fuse's reason where only jit_compile keeps the model's fit from fusing.
NOT_XLA = "the model is not compiled with jit_compile=True (fused steps are one XLA program)"


def can_fuse(model: keras.Model) -> str | None:
    """None if ``fuse_steps`` applies to the compiled ``model``, else the reason it does not."""
    if keras.backend.backend() != "tensorflow":
        return "it needs the TensorFlow backend"
    if getattr(model, "optimizer", None) is None:
        return "the model is not compiled"
    if model.run_eagerly:
        return "the model runs eagerly"
    if tf.distribute.has_strategy() or model.distribute_strategy is not tf.distribute.get_strategy():
        return "the model trains under a tf.distribute strategy"
    if model.jit_compile is not True:
        return NOT_XLA
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


_INDEX = tf.TensorSpec([], tf.int32)  # a step's place in a chunk, as the K-step program takes it


class _FusedTrainFunction:
    """``model.train_function`` for ``fit``: takes the epoch's iterator, returns the last step's logs
    and raises ``StopIteration`` when the iterator has no batch left (as Keras's own does).

    K = 1: the one-step XLA program, called with the batch pulled in Python; a ``SparseOptimizer``
    whose schedule updates masks decides them in-graph, as in Keras's own step. K > 1: the chunk
    of K batches that a background thread pulled during the last call (pulled now on an
    iterator's first call) runs through the K-step XLA program. With a ``SparseOptimizer`` the
    host knows which steps of the chunk update masks (``update_steps``): the steps between them
    run in the K-step program traced ``without_mask_updates`` (no in-graph conditional in the
    XLA loop), each update step in the one-step program, as ``ks.Trainer`` ends a call at each
    mask update. A step with convolutions makes the K-step program a graph loop that calls the
    one-step XLA program, as the Trainer runs it (``_find_convolutions``)."""

    def __init__(self, model: keras.Model, keras_function):
        self.model, self.keras_function = model, keras_function
        self.steps = int(model.steps_per_execution)
        self.optimizer = find_sparse_optimizer(model.optimizer)
        # Two sets of programs (each traces ``train_step`` on its own): the K-step XLA program and
        # the one-step one (at K = 1, and at K > 1 for chunks that cannot be stacked); the second
        # set is traced only inside without_mask_updates.
        self.fused, self.one_step = self._xla_programs()
        self.quiet_fused, self.quiet_one_step = self._xla_programs()
        self.pull = tf.function(self._pull, reduce_retracing=True)
        # (a weak reference to an iterator, the future of its next chunk)
        self.pulling: tuple[Callable[[], Any], Future | None] = (lambda: None, None)
        # (a weak reference to an iterator, its programs)
        self.iterator_programs: tuple[Callable[[], Any], _IteratorPrograms | None] = (lambda: None, None)
        self.worker: _Worker | None = None
        self.constants = IntConstants()  # the K-step program's first step and count
        self.convolutions: bool | None = None  # see _find_convolutions

    def _xla_programs(self):
        return tuple(tf.function(step, jit_compile=True, reduce_retracing=True)
                     for step in (functools.partial(self._steps_in_a_loop, self.model.train_step),
                                  self.model.train_step))

    def __call__(self, iterator) -> dict[str, Any]:
        programs = self._iterator_programs(iterator)
        if programs is None:
            return self.keras_function(iterator)
        if self.steps == 1:
            return programs.one_step(next(iterator))  # StopIteration at the end, as Keras's function
        first, last, stackable, stacked, batches = self._next_chunk(iterator, programs.pull)
        if not bool(first):
            raise StopIteration  # as Keras's own function, when the iterator has no batch left
        if bool(last):  # more may follow: pull them while this chunk trains
            self.worker = self.worker or _Worker()
            self.pulling = (weakref.ref(iterator), self.worker.submit(programs.pull, iterator))
        updates = self._updates_in_next(self.steps)
        if bool(stackable):
            del batches  # copied into the stack: let them go while the K steps run
            return self._run_stacked(programs, stacked, updates)
        # Step by step in the one-step program with the in-graph decision, unless the schedule has
        # no mask updates: one program for every batch shape, where the chunks at the end of
        # epochs (a short batch, say) would otherwise compile the quiet one too.
        one_step, logs = self._program(programs, self._never_updates_masks(), fused=False), None
        # The batches there come first, in order.
        for batch in tf.nest.pack_sequence_as(programs.chunk_spec, batches, expand_composites=True):
            if not batch.has_value():
                break
            logs = one_step(batch.get_value())
        return logs

    def _run_stacked(self, programs: _IteratorPrograms, stacked, updates: list[int] | None):
        """The K steps of a stacked chunk; ``updates``: the chunk's steps that update masks (None:
        not known on the host, decided in-graph at every step). Returns the last step's logs."""
        if updates is None:
            return self._program(programs, False, fused=True)(stacked, *self.constants(0, self.steps))
        logs, start = None, 0
        for update in [*updates, self.steps]:
            if update > start:
                logs = self._program(programs, True, fused=True)(stacked, *self.constants(start, update - start))
            if update < self.steps:
                batch = tf.nest.map_structure(lambda t: t[update], stacked)
                logs = self._program(programs, False, fused=False)(batch)
            start = update + 1
        return logs

    def _updates_in_next(self, steps: int) -> list[int] | None:
        """Which of the next ``steps`` steps update masks, counted from the first; None without a
        ``SparseOptimizer`` that is bound to its weights (Keras's step then decides in-graph).
        ``update_steps`` sets the optimizer up if the first step has not yet, so the first chunk can
        take the programs traced ``without_mask_updates`` too: a static mask never compiles the
        others."""
        optimizer = self.optimizer
        if optimizer is None or not optimizer.weights_:
            return None
        start = int(optimizer.iterations.numpy())
        return [step - start for step in optimizer.update_steps(start, start + steps)]

    def _never_updates_masks(self) -> bool:
        """Whether the schedule updates no masks at any step (static, dense), so that K = 1 can
        take the one-step program traced ``without_mask_updates``."""
        optimizer = self.optimizer
        return optimizer is not None and bool(optimizer.weights_) and not optimizer.updates_between(0, sys.maxsize)

    def _program(self, programs: _IteratorPrograms, quiet: bool, fused: bool):
        """The K-step (``fused``) or one-step program for an iterator's chunks, of the set for
        ``quiet`` chunks or of the other: its concrete function, traced at its first use."""
        if (quiet, fused) not in programs.found:
            function = ((self.quiet_fused if quiet else self.fused) if fused
                        else (self.quiet_one_step if quiet else self.one_step))
            with self._tracing(quiet):
                programs.found[quiet, fused] = (
                    function.get_concrete_function(programs.stacked_spec, _INDEX, _INDEX) if fused
                    else function.get_concrete_function(programs.element_spec))
        return programs.found[quiet, fused]

    def _tracing(self, quiet: bool):
        """The context in which the programs for ``quiet`` chunks trace (see ``__init__``)."""
        return self.optimizer.without_mask_updates() if quiet else contextlib.nullcontext()

    def _iterator_programs(self, iterator) -> _IteratorPrograms | None:
        """The programs for ``iterator``'s chunks, found once an iterator; None where Keras's own
        function takes them: batches that are not dense tensors."""
        known, programs = self.iterator_programs
        if known() is not iterator:
            programs = None
            if _dense_batches(iterator):
                programs = _IteratorPrograms(iterator.element_spec, self.steps)
                if self.steps == 1:  # a schedule that never updates masks (static, dense): no conditional
                    programs.one_step = self._program(programs, self._never_updates_masks(), fused=False)
                else:
                    self._find_convolutions(programs)
                    programs.pull = self.pull.get_concrete_function(iterator)
            self.iterator_programs = (weakref.ref(iterator), programs)
        return programs

    def _find_convolutions(self, programs: _IteratorPrograms) -> None:
        """Looks once, in the traced K-step XLA program (so custom layers count too), for
        convolutions in the model's step. Where there are some, the K-step programs become graph
        loops that call the one-step XLA programs, as ``ks.Trainer`` runs such steps
        (``keras_sparse.steps``): XLA's CPU compiler leaves the convolutions of a loop body in a
        layout its fast convolution does not take."""
        if self.convolutions is not None:
            return
        quiet = self._updates_in_next(self.steps) is not None
        self.convolutions = has_convolutions(self._program(programs, quiet, fused=True).graph)
        if self.convolutions:
            self.fused, self.quiet_fused = (
                tf.function(functools.partial(self._steps_in_a_loop, one_step), reduce_retracing=True)
                for one_step in (self.one_step, self.quiet_one_step))
            del programs.found[quiet, True]  # the XLA program traced to look

    def _next_chunk(self, iterator, pull):
        """The outputs of ``pull`` on ``iterator``: pulled in the background during the last call
        where that call had this iterator, else now."""
        known, pulled = self.pulling
        self.pulling = (lambda: None, None)
        return pulled.result() if known() is iterator else pull(iterator)

    @staticmethod
    def _steps_in_a_loop(step_fn, stacked, start, count):
        """Steps ``start .. start + count - 1`` (``count`` ≥ 1) of a stacked chunk in one
        ``while_loop`` (in the K-step XLA program; or in a graph, ``step_fn`` then being the
        one-step XLA program); the last step's logs."""
        def step(i):
            # tf.gather, not t[i]: XLA would compile the slice at ``start``, an argument, once per value.
            return step_fn(tf.nest.map_structure(lambda t: tf.gather(t, i), stacked))

        return tf.while_loop(lambda i, _: i < start + count, lambda i, _: (i + 1, step(i)), (start + 1, step(start)))[1]

    def _pull(self, iterator):
        """Whether the first and the last of the next K batches of ``iterator`` are there (the data
        may end), whether all K stack (all there, with the same shapes), the stack where they do
        (zeros of the element spec's shape where they do not) and the K batches as optionals'
        variant tensors (``_IteratorPrograms.chunk_spec``)."""
        batches = [iterator.get_next_as_optional() for _ in range(self.steps)]

        def same_shapes():
            values = [batch.get_value() for batch in batches]
            shapes = [tf.shape(t) for t in tf.nest.flatten(values[0])]
            same = [tf.reduce_all(tf.equal(tf.shape(t), shape))
                    for value in values[1:] for t, shape in zip(tf.nest.flatten(value), shapes)]
            return tf.reduce_all(same) if same else tf.constant(True)

        def stack():
            values = [batch.get_value() for batch in batches]
            return tf.nest.map_structure(lambda *ts: tf.stack(ts), *values)

        def zeros():
            return tf.nest.map_structure(
                lambda spec: tf.zeros([self.steps] + [d or 0 for d in spec.shape] if spec.shape.rank is not None
                                      else [self.steps], spec.dtype), iterator.element_spec)

        # Batches come in order, so the last one is there only if all are; batches of a fully
        # known shape all have it.
        last = batches[-1].has_value()
        known = all(spec.shape.is_fully_defined() for spec in tf.nest.flatten(iterator.element_spec))
        stackable = last if known else tf.cond(last, same_shapes, lambda: tf.constant(False))
        # The optionals go out as their variant tensors: K Optional objects would each be made in
        # Python at every pull (BENCHMARKS.md, "Any-model core" (b2)); the rare chunk that runs
        # step by step makes them again.
        return (batches[0].has_value(), last, stackable, tf.cond(stackable, stack, zeros),
                tf.nest.flatten(batches, expand_composites=True))


class _IteratorPrograms:
    """The concrete functions that one iterator's chunks run: found once an iterator, as calling a
    ``tf.function`` matches its arguments against its signatures at every call, a cost per call
    that weighs on small models (BENCHMARKS.md, "Any-model core" (b2))."""

    def __init__(self, element_spec, steps: int):
        self.element_spec = element_spec
        self.pull = None  # K > 1: pulls the next chunk
        self.one_step = None  # K = 1: the program of each step
        self.stacked_spec = tf.nest.map_structure(
            lambda spec: tf.TensorSpec([steps, *spec.shape] if spec.shape.rank is not None else None, spec.dtype),
            element_spec)
        self.chunk_spec = [tf.OptionalSpec(element_spec)] * steps  # the pull's K optionals
        self.found: dict[tuple[bool, bool], Any] = {}  # (quiet, fused) -> the program


class _Worker:
    """One daemon thread that runs the calls given to ``submit`` one after another: the pulls of
    the next chunk. A daemon, so that a pull which never returns (a generator that blocks after
    ``fit`` has ended) cannot keep Python from exiting."""

    def __init__(self):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_work, args=(self.tasks,), name="keras-sparse-pull", daemon=True).start()
        weakref.finalize(self, self.tasks.put, None)  # ends the thread with its owner

    def submit(self, call: Callable, *args) -> Future:
        future: Future = Future()
        self.tasks.put((future, call, args))
        return future


def _work(tasks: queue.SimpleQueue) -> None:
    """The worker thread's loop. Between tasks it holds only the queue: not the last task's
    iterator, nor its chunk (the future keeps its result)."""
    while True:
        task = tasks.get()
        if task is None:
            return
        _run(*task)
        del task


def _run(future: Future, call: Callable, args: tuple) -> None:
    try:
        future.set_result(call(*args))
    except BaseException as error:  # raised again where the chunk is taken, as Keras's loop would
        future.set_exception(error)
