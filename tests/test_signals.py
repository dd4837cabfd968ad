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


def test_the_interruption_says_where_it_stopped_and_how_to_resume():
    from keras_sparse.errors import TrainingInterrupted

    saved = TrainingInterrupted.at_step(signal.SIGTERM, 7, "/r/checkpoints/ckpt-7")
    assert str(saved) == ("Stopped by SIGTERM at step 7; checkpoint /r/checkpoints/ckpt-7 written: rerun the same "
                          "command to resume.")
    assert saved.exit_code == 128 + signal.SIGTERM
    assert str(TrainingInterrupted.at_step(signal.SIGINT, 3, None)) == (
        "Stopped by SIGINT at step 3 (no logdir: nothing was saved).")
