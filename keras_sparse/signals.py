"""Stopping a training run cleanly: SIGTERM (a preemption) and SIGINT (Ctrl-C) set a flag that
the loop reads after every compiled call, so it can write a checkpoint at a step boundary."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], int | None]]:
    """Within the block, SIGTERM and SIGINT only record themselves; yields a function returning
    the first signal's number (None before one). After the first signal the previous handlers
    are back, so a second Ctrl-C stops at once. Outside the main thread signals cannot be caught:
    the function then always returns None."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    caught: list[int] = []
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def record(number, frame):
        caught.append(number)
        for other, handler in previous.items():
            signal.signal(other, handler)

    for number in STOP_SIGNALS:
        signal.signal(number, record)
    try:
        yield lambda: caught[0] if caught else None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
