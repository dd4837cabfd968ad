"""RunCheckpoint: variables, history and callbacks' state come back; a corrupt newest checkpoint
falls back to the previous one."""

import pytest
import tensorflow as tf

from keras_sparse.callbacks import Callback
from keras_sparse.checkpointing import RunCheckpoint
from keras_sparse.errors import ConfigError


class Counter(Callback):
    def __init__(self, count=0):
        self.count = count

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        self.count = state["count"]


def test_variables_history_and_callback_states_round_trip(tmp_path, capsys):
    weight = tf.Variable([1.0, 2.0])
    checkpoint = RunCheckpoint(str(tmp_path), keep=2, weight=weight)
    assert checkpoint.restore() is None and checkpoint.latest is None
    checkpoint.save(3, [{"epoch": 1}], [Counter(5), Counter(7), Callback()])
    weight.assign([9.0, 9.0])
    checkpoint.save(6, [{"epoch": 1}, {"epoch": 2}], [Counter(6), Counter(8)])

    fresh = tf.Variable([0.0, 0.0])
    counters = [Counter(), Counter()]
    again = RunCheckpoint(str(tmp_path), weight=fresh)
    assert again.restore(counters) == [{"epoch": 1}, {"epoch": 2}]
    assert [c.count for c in counters] == [6, 8] and fresh.numpy().tolist() == [9.0, 9.0]
    assert again.restored_from.endswith("ckpt-6")

    # Truncate the newest: a warning names it and the one before is restored.
    data = next(p for p in tmp_path.iterdir() if p.name.startswith("ckpt-6.data"))
    data.write_bytes(data.read_bytes()[:10])
    counters = [Counter(), Counter()]
    assert RunCheckpoint(str(tmp_path), weight=fresh).restore(counters) == [{"epoch": 1}]
    assert [c.count for c in counters] == [5, 7] and fresh.numpy().tolist() == [1.0, 2.0]
    assert "ckpt-6 cannot be read" in capsys.readouterr().err


def test_no_readable_checkpoint_is_one_error_naming_the_newest(tmp_path):
    checkpoint = RunCheckpoint(str(tmp_path), weight=tf.Variable(1.0))
    checkpoint.save(1, [])
    for path in tmp_path.iterdir():
        if path.name.startswith("ckpt-1.data"):
            path.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"No readable checkpoint .*newest: .*ckpt-1"):
        RunCheckpoint(str(tmp_path), weight=tf.Variable(1.0)).restore()
