"""MultiWorkerMirroredStrategy: two local worker processes train one run together (TF_CONFIG)."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train_with_two_workers(directory):
    """Starts both workers on one logdir (``directory/run``); returns each one's return code and stderr."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    logdir = directory / "run"
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "binaries", "train.py"), "--gin_config=gin_configs/rigl.gin",
             f"--logdir={logdir}", "--strategy=multi_worker",
             "--gin_bindings=training.epochs = 2", "--gin_bindings=training.batch_size = 500",
             "--gin_bindings=model.width = 8", "--gin_bindings=RigL.update_frequency = 2",
             "--gin_bindings=training.progress = False"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=420) for p in processes]
    return [(p.returncode, err) for p, (_, err) in zip(processes, outputs)]


# conftest.BackgroundRuns starts the workers when the session starts, beside the in-process tests.
BACKGROUND = {"test_two_local_workers_train_one_run": {"workers": train_with_two_workers}}


def test_two_local_workers_train_one_run(background):
    directory, ended = background.result(__name__, "workers")
    logdir = directory / "run"
    for returncode, err in ended:
        assert returncode == 0, err[-3000:]
    chief = json.loads((logdir / "metrics.json").read_text())
    other = json.loads((logdir / "worker-1" / "metrics.json").read_text())
    assert (logdir / "saved_model").is_dir() and not (logdir / "worker-1" / "saved_model").exists()
    assert chief["steps"] == other["steps"] == 14  # 3600 training examples (10% held out), batches of 500
    # Both workers hold the same model: masks (per-layer sparsity) and test results agree.
    assert chief["layer_sparsity"] == other["layer_sparsity"]
    # 14 steps, RigL updates at 0, 2, …, 8 (before int(75% of training) = 10)
    assert chief["test_accuracy"] == other["test_accuracy"] and chief["dense_gradient_steps"] == 5
