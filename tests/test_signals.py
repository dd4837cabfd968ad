"""SIGTERM and SIGINT inside ``stop_requests`` only record themselves; the handlers come back after."""

import os
import signal

import pytest

from keras_sparse.signals import stop_requests


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_recorded_and_the_previous_handlers_return(number):
    before = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    with stop_requests() as stop_signal:
        assert stop_signal() is None
        os.kill(os.getpid(), number)
        assert stop_signal() == number
        # After the first signal the previous handlers are back: a second Ctrl-C stops at once.
        assert {n: signal.getsignal(n) for n in before} == before
    assert {n: signal.getsignal(n) for n in before} == before


def test_a_second_ctrl_c_raises_keyboard_interrupt():
    with stop_requests() as stop_signal:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop_signal() == signal.SIGINT
