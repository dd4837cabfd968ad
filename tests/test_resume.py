"""Exact resume: a run killed at a random step (SIGKILL) or preempted (SIGTERM) and rerun into
the same logdir ends bit for bit where an uninterrupted run of the same seed ends."""

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains RigL for 3 epochs of 7 steps (masks change every 2 steps) into argv[1]. Given a step
# and a signal (argv[3], argv[4]) it sends itself that signal after that step. At the end it
# dumps every weight, mask and optimizer variable, and its counters.
WORKER = r"""
import json, os, sys
import numpy as np
from keras_sparse import experiment
from keras_sparse.config import parse_gin
from keras_sparse.callbacks import Callback
from keras_sparse.errors import TrainingInterrupted

logdir, root = sys.argv[1], sys.argv[2]
kill = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else None
parse_gin([os.path.join(root, "gin_configs", "rigl.gin")],
                     ["training.epochs = 3", "training.batch_size = 500", "model.width = 8",
                      "training.progress = False", "RigL.update_frequency = 2", "training.export = False",
                      "training.jit_compile = True", "training.steps_per_execution = 1"])  # the documented claim

class Kill(Callback):
    def on_step_end(self, t, losses):
        if kill and t.step == kill[0]:
            os.kill(os.getpid(), kill[1])

run = experiment.build_run(0, logdir=logdir)
try:
    run.trainer.fit(run.data.train_epoch, 3, steps_per_epoch=run.data.steps_per_epoch, callbacks=[Kill()])
except TrainingInterrupted as stopped:  # as the binaries end
    sys.exit(print(stopped, file=sys.stderr) or stopped.exit_code)
state = {f"model_{i}": w.numpy() for i, w in enumerate(run.model.weights)}
state.update({f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(run.trainer.optimizer.variables)})
np.savez(os.path.join(logdir, "state.npz"), **state)
summary = run.trainer.summary()
json.dump({"steps": summary["steps"], "dense_gradient_steps": summary["dense_gradient_steps"],
           "flops": summary["training_flops_relative_to_dense"], "test": run.trainer.evaluate(run.data.test),
           "last_epoch_loss": run.trainer.history[-1]["train_loss"]},
          open(os.path.join(logdir, "summary.json"), "w"))
"""


def run_worker(logdir, kill_step=None, kill_signal=None):
    args = [sys.executable, "-c", WORKER, str(logdir), ROOT]
    if kill_step is not None:
        args += [str(kill_step), str(int(kill_signal))]
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def finished_state(logdir):
    with np.load(os.path.join(logdir, "state.npz")) as state:
        arrays = {k: state[k] for k in state.files}
    with open(os.path.join(logdir, "summary.json")) as f:
        return arrays, json.load(f)


KILL_STEP = random.Random().randint(1, 20)  # any step before the last (21); the result must not depend on which
STOP_STEP = 11  # mid-epoch 2, just after a mask update (RigL updates at even steps)


def stopped_then_rerun(logdir, step, stop, rerun):
    """Runs a worker that stops itself at ``step`` with ``stop``; if it ended as it should (killed,
    or exiting with 128 + the signal) and ``rerun``, reruns it into the same logdir."""
    stopped = run_worker(logdir, step, stop)
    ended_as_expected = stopped.returncode in (-stop, 128 + stop)
    return stopped, run_worker(logdir) if rerun and ended_as_expected else None


# Each test's worker processes (conftest.BackgroundRuns starts them when the session starts, beside
# the in-process tests); each test waits for its own and checks them as before.
BACKGROUND = {
    "test_sigkill_at_a_random_step_then_rerun_ends_identically": {
        "straight": run_worker, "sigkill": lambda d: stopped_then_rerun(d, KILL_STEP, signal.SIGKILL, True)},
    "test_sigterm_or_ctrl_c_writes_a_mid_epoch_checkpoint_and_the_rerun_ends_identically": {
        "SIGTERM": lambda d: stopped_then_rerun(d, STOP_STEP, signal.SIGTERM, False),
        "SIGINT": lambda d: stopped_then_rerun(d, STOP_STEP, signal.SIGINT, True), "straight": run_worker},
}


@pytest.fixture(scope="module")
def uninterrupted(background):
    logdir, result = background.result(__name__, "straight")
    assert result.returncode == 0, result.stderr[-3000:]
    return finished_state(logdir)


def assert_same_end(logdir, uninterrupted):
    arrays, summary = finished_state(logdir)
    expected_arrays, expected_summary = uninterrupted
    assert summary == expected_summary
    assert arrays.keys() == expected_arrays.keys()
    for key in arrays:  # weights, masks (bool weights) and optimizer state, bit for bit
        np.testing.assert_array_equal(arrays[key], expected_arrays[key], err_msg=key)


def test_sigkill_at_a_random_step_then_rerun_ends_identically(background, uninterrupted):
    step = KILL_STEP
    logdir, (killed, resumed) = background.result(__name__, "sigkill")
    assert killed.returncode == -signal.SIGKILL, f"killed at step {step}: {killed.stderr[-2000:]}"
    assert resumed.returncode == 0, f"killed at step {step}: {resumed.stderr[-3000:]}"
    assert_same_end(logdir, uninterrupted)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_writes_a_mid_epoch_checkpoint_and_the_rerun_ends_identically(background, request, stop):
    """Both signals take the same path in the loop; the rerun is compared after Ctrl-C only."""
    step = STOP_STEP
    logdir, (stopped, resumed) = background.result(__name__, stop.name)
    assert stopped.returncode == 128 + stop, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (f"Stopped by {stop.name} at step {step}; checkpoint "
                                                   f"{logdir / 'checkpoints' / f'ckpt-{step}'} written: rerun the "
                                                   "same command to resume.")
    assert any(name.startswith(f"ckpt-{step}.") for name in os.listdir(logdir / "checkpoints"))
    if stop == signal.SIGTERM:
        return
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end(logdir, request.getfixturevalue("uninterrupted"))
