"""Fast by default: the training loop's settings chosen for the model and the device.

``XlaChoice`` decides whether the training step runs XLA-compiled or as a plain TensorFlow graph
by timing both on the run's own first calls: neither wins everywhere (on this project's CPU
machine XLA is faster on MLPs, transformers and the MNIST-1D CNN, slower on ResNet-20, whose
convolutions TensorFlow's own kernels run faster; BENCHMARKS.md, "Fast by default").
``steps_per_execution`` picks how many steps a compiled call runs from the size of a batch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError

AUTO = "auto"

#: Most steps a call that ``steps_per_execution="auto"`` stages: a call of 20 steps amortizes
#: the call's fixed cost on small models, and more gained nothing measurable.
MOST_STEPS_PER_EXECUTION = 20
#: Most bytes of input that ``steps_per_execution="auto"`` stages for one call.
STAGED_BYTES = 64 * 2**20


def check_jit_compile(jit_compile: bool | str) -> bool | str:
    """``jit_compile`` as the loop takes it: True, False or ``"auto"``; a one-line error otherwise."""
    if jit_compile == AUTO or isinstance(jit_compile, (bool, np.bool_)):
        return jit_compile if jit_compile == AUTO else bool(jit_compile)
    raise ConfigError(f"jit_compile={jit_compile!r}: use True, False or \"auto\" (time both on the first steps).")


def steps_per_execution(setting: int | str, element_spec: Any, replicas: int, first_batch=None) -> int:
    """The steps a compiled call runs: ``setting`` when it is a number, else (``"auto"``) as
    many batches as fit in ``STAGED_BYTES``, at most ``MOST_STEPS_PER_EXECUTION``, and one
    under a strategy with several replicas (which stages nothing).

    ``element_spec`` is the training data's; where its batch size is unknown (a last batch may be
    short) ``first_batch()`` gives a batch to measure.
    """
    if setting != AUTO:
        if not isinstance(setting, (int, float, np.integer)) or isinstance(setting, bool) \
                or int(setting) != setting or setting < 1:
            raise ConfigError(f"steps_per_execution={setting!r} must be a positive whole number of steps or "
                              "\"auto\".")
        if setting > 1 and replicas > 1:
            raise ConfigError(f"steps_per_execution={setting} needs a single device, but the strategy has "
                              f"{replicas} replicas: use steps_per_execution=1 with a distribution strategy.")
        return int(setting)
    if replicas > 1:
        return 1
    specs = tf.nest.flatten(element_spec)
    if all(spec.shape.is_fully_defined() for spec in specs):
        size = sum(spec.shape.num_elements() * spec.dtype.size for spec in specs)
    elif first_batch is not None:
        size = sum(int(np.prod(t.shape)) * t.dtype.size for t in tf.nest.flatten(first_batch()))
    else:
        return 1
    return int(max(1, min(MOST_STEPS_PER_EXECUTION, STAGED_BYTES // max(size, 1))))


class XlaChoice:
    """Runs the training step XLA-compiled or not: as set, or (``"auto"``) the faster of the two
    by the median time a step over the run's first calls, alternating, ``timed_calls`` each (or
    fewer once a setting's timed calls add up to ``enough_seconds``: a slow step's long calls
    average out the machine's noise themselves, and the slower setting trains meanwhile; or
    once one setting is twice as slow as the other over calls of half a second or more).

    The timed calls are training steps like any other (both programs compute the same step, up
    to float rounding). A call that compiled or traced a program is not timed. The decision is
    saved with checkpoints (``get_state``), so a resumed run keeps it; a run resumed before the
    decision was made times afresh, and may decide otherwise (which changes float rounding only).
    """

    def __init__(self, jit_compile: bool | str = AUTO, timed_calls: int = 3, enough_seconds: float = 2.0,
                 say: bool = True):
        jit_compile = check_jit_compile(jit_compile)
        self.say = say  # print the decision
        self.auto = jit_compile == AUTO
        self.choice: bool | None = None if self.auto else jit_compile
        self.timed_calls = int(timed_calls)
        self.enough_seconds = float(enough_seconds)
        self.seconds_per_step: dict[bool, list[float]] = {True: [], False: []}
        self._seconds = {True: 0.0, False: 0.0}
        self._calls = {True: 0, False: 0}

    @property
    def deciding(self) -> bool:
        """Whether calls are still being timed."""
        return self.choice is None

    def next(self) -> bool:
        """Whether the next call runs XLA-compiled: the choice, or while deciding the setting with
        fewer calls so far (XLA first)."""
        if self.choice is not None:
            return self.choice
        return self._calls[True] <= self._calls[False]

    def current(self) -> bool:
        """The setting for programs outside the timed loop (evaluation): the choice, or while
        deciding the plain graph, which costs nothing to compile."""
        return bool(self.choice)

    def run(self, call: Callable[[bool], Any], steps: int, trace_counts: Callable[[], Any]) -> Any:
        """``call(jit)`` with the next setting. While deciding, the call is waited for and timed as
        ``steps`` steps (untimed if ``trace_counts()`` changed: it compiled), and the note that
        completes the decision is printed (if ``say``)."""
        jit = self.next()
        if not self.deciding:
            return call(jit)
        traces, started = trace_counts(), time.perf_counter()
        result = call(jit)
        np.asarray(result)  # wait for the call
        note = self.record(jit, time.perf_counter() - started, steps, compiled=trace_counts() != traces)
        if note and self.say:
            print(note, flush=True)
        return result

    def record(self, jit: bool, seconds: float, steps: int, compiled: bool) -> str | None:
        """Takes the time of a call of ``steps`` steps with ``jit``; returns a one-line note when
        this call completes the decision."""
        if self.choice is not None:
            return None
        self._calls[jit] += 1
        if compiled or steps < 1:
            return None
        self.seconds_per_step[jit].append(seconds / steps)
        self._seconds[jit] += seconds
        if not (all(self._timed_enough(j) for j in (True, False)) or self._clear_already()):
            return None
        xla, graph = (statistics.median(self.seconds_per_step[j]) for j in (True, False))
        self.choice = xla <= graph
        calls = "/".join(str(len(self.seconds_per_step[j])) for j in (True, False))
        return (f"keras-sparse: XLA {'on' if self.choice else 'off'} for this run: "
                f"{1e3 * xla:.2f} ms a step with XLA, {1e3 * graph:.2f} ms without "
                f"(medians of {calls} timed calls).")

    def _clear_already(self) -> bool:
        """One setting at least twice as slow over calls of half a second or more each: more
        calls would only train longer with it (depthwise convolutions under XLA on CPU, e.g.)."""
        if not all(self.seconds_per_step[j] and self._seconds[j] >= 0.5 for j in (True, False)):
            return False
        xla, graph = (statistics.median(self.seconds_per_step[j]) for j in (True, False))
        return max(xla, graph) >= 2 * min(xla, graph)

    def _timed_enough(self, jit: bool) -> bool:
        timed = len(self.seconds_per_step[jit])
        return timed >= self.timed_calls or (timed >= 1 and self._seconds[jit] >= self.enough_seconds)

    def summary(self) -> dict[str, Any]:
        """What was chosen and from which timings, for ``metrics.json``."""
        result: dict[str, Any] = {"jit_compile": AUTO if self.auto else self.choice, "xla": self.choice}
        if self.auto:
            result["ms_per_step"] = {("xla" if jit else "graph"): [round(1e3 * t, 4) for t in times]
                                     for jit, times in self.seconds_per_step.items()}
        return result

    def get_state(self) -> dict[str, Any] | None:
        if not self.auto:
            return None
        return {"choice": self.choice, "calls": [self._calls[True], self._calls[False]],
                "seconds": [self._seconds[True], self._seconds[False]],
                "seconds_per_step": [self.seconds_per_step[True], self.seconds_per_step[False]]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.choice = state["choice"]
        self._calls = dict(zip((True, False), state["calls"]))
        self._seconds = dict(zip((True, False), state["seconds"]))
        self.seconds_per_step = dict(zip((True, False), (list(t) for t in state["seconds_per_step"])))
