"""tuning: the XLA setting timed on the first calls, and steps per call from a batch's size."""

import keras
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse import algorithms
from keras_sparse.errors import ConfigError
from keras_sparse.tuning import XlaChoice, check_jit_compile, steps_per_execution


def _decide(choice: XlaChoice, xla_ms: float, graph_ms: float) -> list:
    """Feeds calls of 10 steps at the given ms a step (each setting's first call compiles) until
    the choice is made; returns the settings in the order the choice asked for them."""
    asked = []
    while choice.deciding:
        jit = choice.next()
        asked.append(jit)
        compiled = asked.count(jit) == 1
        choice.record(jit, 10 * (xla_ms if jit else graph_ms) / 1e3, 10, compiled)
    return asked


@pytest.mark.parametrize("xla_ms, graph_ms, expected", [(1.0, 2.0, True), (3.0, 2.0, False), (2.0, 2.0, True)])
def test_auto_alternates_skips_compiling_calls_and_keeps_the_faster(xla_ms, graph_ms, expected):
    choice = XlaChoice("auto", timed_calls=3)
    assert choice.deciding and choice.current() is False  # evaluation runs as a graph meanwhile
    asked = _decide(choice, xla_ms, graph_ms)
    assert asked == [True, False] * 4  # one compiling call and three timed calls each
    assert choice.choice is expected and choice.next() is expected and choice.current() is expected
    assert choice.seconds_per_step == {True: [xla_ms / 1e3] * 3, False: [graph_ms / 1e3] * 3}
    assert choice.summary()["xla"] is expected and choice.summary()["jit_compile"] == "auto"


def test_the_note_names_the_choice_and_both_timings():
    choice = XlaChoice("auto", timed_calls=1)
    notes = []
    for jit, ms, compiled in [(True, 5, True), (False, 9, True), (True, 2.5, False), (False, 4, False)]:
        notes.append(choice.record(jit, 10 * ms / 1e3, 10, compiled))
    assert notes[:3] == [None, None, None]
    assert notes[3] == ("keras-sparse: XLA on for this run: 2.50 ms a step with XLA, 4.00 ms without "
                        "(medians of 1/1 timed calls).")


def test_slow_steps_decide_on_fewer_calls():
    """Calls of 20 steps of 0.4 s: one timed call each is 8 s, enough to decide on."""
    choice = XlaChoice("auto", timed_calls=3, enough_seconds=2.0)
    assert _decide(choice, 400.0, 300.0) == [True, False, True, False]
    assert choice.choice is False and choice.summary()["ms_per_step"] == {"xla": [400.0], "graph": [300.0]}


def test_a_setting_twice_as_slow_over_long_enough_calls_decides_at_once():
    """Calls of 10 steps; a clear difference needs half a second of timed calls on each side."""
    fast_graph = XlaChoice("auto", timed_calls=3, enough_seconds=100.0)
    assert _decide(fast_graph, 200.0, 60.0) == [True, False] * 2  # 2 s and 0.6 s calls, 3.3× apart
    assert fast_graph.choice is False
    short_calls = XlaChoice("auto", timed_calls=3, enough_seconds=100.0)
    assert _decide(short_calls, 60.0, 25.0) == [True, False] * 3  # 0.25 s calls: two needed to reach 0.5 s
    assert short_calls.choice is False
    close = XlaChoice("auto", timed_calls=3, enough_seconds=100.0)
    assert _decide(close, 60.0, 40.0) == [True, False] * 4  # 1.5× apart: all three timed calls each
    assert close.choice is False


def test_a_fixed_setting_never_times_and_saves_nothing():
    for setting in (True, False):
        choice = XlaChoice(setting)
        assert not choice.deciding and choice.next() is setting and choice.current() is setting
        assert choice.record(setting, 1.0, 10, False) is None
        assert choice.get_state() is None and choice.summary() == {"jit_compile": setting, "xla": setting}


def test_state_round_trip_mid_decision_and_after():
    choice = XlaChoice("auto")
    choice.record(True, 0.01, 10, True)
    choice.record(False, 0.02, 10, True)
    choice.record(True, 0.01, 10, False)
    resumed = XlaChoice("auto")
    resumed.set_state(choice.get_state())
    assert resumed.next() is False and resumed.seconds_per_step == {True: [0.001], False: []}
    _decide(choice, 1.0, 2.0)
    done = XlaChoice("auto")
    done.set_state(choice.get_state())
    assert not done.deciding and done.choice is True


def test_bad_jit_compile_is_one_line_error():
    with pytest.raises(ConfigError, match=r"jit_compile='yes': use True, False or \"auto\""):
        check_jit_compile("yes")


def _spec(*shapes_and_types):
    return tuple(tf.TensorSpec(shape, dtype) for shape, dtype in shapes_and_types)


@pytest.mark.parametrize("spec, replicas, expected", [
    (_spec(([128, 28, 28, 1], tf.float32), ([128], tf.int64)), 1, 20),         # 0.4 MB a batch: the most
    (_spec(([16, 256, 256, 3], tf.float32), ([16], tf.int64)), 1, 5),          # 12.6 MB: 5 fit in 64 MiB
    (_spec(([256, 224, 224, 3], tf.float32), ([256], tf.int64)), 1, 1),        # 154 MB: one a call
    (_spec(([128, 28, 28, 1], tf.float32), ([128], tf.int64)), 2, 1),         # several replicas stage nothing
])
def test_auto_steps_per_execution_from_the_batch_size(spec, replicas, expected):
    assert steps_per_execution("auto", spec, replicas) == expected


def test_auto_steps_per_execution_measures_a_batch_of_unknown_size():
    spec = _spec(([None, 16, 256, 256], tf.float32),)  # 4 MiB a batch of 1
    assert steps_per_execution("auto", spec, 1, first_batch=lambda: tf.zeros([2, 16, 256, 256])) == 8
    assert steps_per_execution(7, spec, 1) == 7


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "fast"])
def test_bad_steps_per_execution_is_one_line_error(value):
    with pytest.raises(ConfigError, match="steps_per_execution="):
        steps_per_execution(value, None, 1)


def test_trainer_auto_decides_on_training_calls_and_resumes_with_the_choice(mlp, dataset, tmp_path, capsys):
    """The default trainer times both settings on its first calls, says what it chose, reports
    it in ``summary()``, and a run resumed from its checkpoint keeps the choice without timing."""
    data = dataset(64, (8,), 4, batch=8)  # 8 steps an epoch

    def trainer():
        return ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True), logdir=str(tmp_path),
                          steps_per_execution=1)

    first = trainer()
    assert first.xla.deciding and first.steps_per_execution == 1
    first.fit(data, epochs=1)
    assert not first.xla.deciding and first.step == 8
    summary = first.summary()
    assert summary["jit_compile"] == "auto" and summary["xla"] is first.xla.choice
    assert [len(summary["ms_per_step"][k]) for k in ("xla", "graph")] == [3, 3]
    assert "keras-sparse: XLA o" in capsys.readouterr().out
    resumed = trainer()
    resumed.fit(data, epochs=2)
    assert resumed.step == 16 and resumed.xla.choice is first.xla.choice
    assert resumed.programs.trace_counts()["train"] == 1  # only the chosen setting ran


def test_trainer_auto_steps_per_execution_stages_twenty(mlp, dataset):
    trainer = ks.Trainer(ks.wrap(mlp(seed=0)), algorithms.StaticSparse(0.5), keras.optimizers.SGD(0.1),
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True), progress=False,
                         jit_compile=True)
    trainer.fit(dataset(8 * 25, (8,), 4, batch=8), epochs=1)  # 25 steps: calls of 20 and 5
    assert trainer.steps_per_execution == 20 and trainer.step == 25
    assert trainer.summary()["steps_per_execution"] == 20


@pytest.mark.parametrize("say", [True, False])
def test_run_times_calls_while_deciding_but_not_those_that_compiled(say, capsys):
    choice = XlaChoice("auto", timed_calls=1, say=say)
    traces = {"train": 0}

    def call(jit):
        if len(asked) < 2:
            traces["train"] += 1  # the first call of each setting compiles
        asked.append(jit)
        return tf.constant([1.0, 2.0])

    asked = []
    for _ in range(5):
        losses = choice.run(call, 2, lambda: dict(traces))
        assert losses.numpy().tolist() == [1.0, 2.0]
    # Two compiling calls (untimed), one timed call of each setting, then the chosen one only.
    assert asked[:4] == [True, False, True, False] and not choice.deciding
    assert asked[4:] == [choice.choice]
    assert [len(choice.seconds_per_step[jit]) for jit in (True, False)] == [1, 1]
    assert ("keras-sparse: XLA " in capsys.readouterr().out) is say


def test_run_with_a_fixed_setting_calls_it_and_times_nothing():
    choice = XlaChoice(False)
    assert choice.run(lambda jit: jit, 3, lambda: {}) is False
    assert choice.seconds_per_step == {True: [], False: []}


def test_several_steps_a_call_need_a_single_device():
    with pytest.raises(ConfigError, match="steps_per_execution=4 needs a single device"):
        steps_per_execution(4, None, 2)
    assert steps_per_execution(1, None, 2) == 1
