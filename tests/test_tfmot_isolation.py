"""keras-sparse must not leak tfmot's TF_USE_LEGACY_KERAS=1 (BRIEF, "Pitfalls").

Each check runs in a fresh interpreter: the pytest process has long resolved ``tf.keras``.
"""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import json, os, subprocess, sys
    import keras_sparse as ks
    from keras_sparse import algorithms

    algo = algorithms.MagnitudePruning(0.8, "uniform", begin_step=0, end_step=10, frequency=2)
    algo.setup({"dense/kernel": (4, 4)}, total_steps=20, steps_per_epoch=10)
    assert "tensorflow_model_optimization" in sys.modules, "the schedule did not come from tfmot"
    should, sparsity = algo._schedule(10)
    assert bool(should) and abs(float(sparsity) - 0.8) < 1e-6

    import tensorflow as tf
    child = subprocess.run(
        [sys.executable, "-c",
         "import tensorflow as tf; print(getattr(tf.keras, '__version__', 'none: ' + tf.keras.__name__))"],
        capture_output=True, text=True, check=True)
    print(json.dumps({
        "env": os.environ.get("TF_USE_LEGACY_KERAS"),
        "tf_keras_version": getattr(tf.keras, "__version__", "none"),
        "tf_keras_module": tf.keras.__name__,
        "child_tf_keras_version": child.stdout.strip().splitlines()[-1],
    }))
""")


def _run(env_value):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if env_value is not None:
        env["TF_USE_LEGACY_KERAS"] = env_value
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# conftest.BackgroundRuns starts the child process when the session starts, beside the in-process tests.
BACKGROUND = {"test_tfmot_schedule_does_not_switch_keras": {"unset": lambda directory: _run(None)}}


def test_tfmot_schedule_does_not_switch_keras(background):
    # Unset is the case a leak would change (tfmot sets TF_USE_LEGACY_KERAS=1 when it is unset).
    result = background.result(__name__, "unset")[1]
    assert result["env"] is None  # unset stays unset
    assert result["env"] != "1"
    assert result["tf_keras_version"].startswith("3")
    assert not result["tf_keras_module"].startswith("tf_keras")
    assert result["child_tf_keras_version"].startswith("3")
