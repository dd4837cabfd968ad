"""Schedules: tfmot's PolynomialDecay and should-prune rule, and RigL's cosine drop fraction.

tfmot's schedule module is reached only through ``keras_sparse._tfmot`` (the library's own
leak-free import); the tf_keras pruning wrapper is compared in test_algorithms, in a subprocess.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_sparse import _tfmot, schedules


def zhu_gupta(step, s_i, s_f, t0, t_end):
    """s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3, clamped to [t0, t_end]."""
    progress = min(1.0, max(0.0, (step - t0) / (t_end - t0)))
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


@pytest.mark.parametrize("s_i, s_f, t0, t_end, frequency", [(0.0, 0.9, 10, 50, 5), (0.2, 0.75, 0, 7, 1)])
def test_polynomial_decay_matches_formula_and_tfmot(s_i, s_f, t0, t_end, frequency):
    ours = schedules.polynomial_decay(s_i, s_f, t0, t_end, frequency)
    reference = _tfmot.pruning_schedule().PolynomialDecay(
        initial_sparsity=s_i, final_sparsity=s_f, begin_step=t0, end_step=t_end, power=3, frequency=frequency)
    for step in range(0, t_end + 10):
        should, sparsity = ours(tf.constant(step, tf.int64))
        ref_should, ref_sparsity = reference(tf.constant(step, tf.int64))
        assert float(sparsity) == float(ref_sparsity)
        assert float(sparsity) == pytest.approx(zhu_gupta(step, s_i, s_f, t0, t_end), abs=1e-6)
        assert bool(should) == bool(ref_should)


@pytest.mark.parametrize("frequency, begin, end", [(1, 0, 5), (3, 2, 17), (4, 5, 5), (7, 0, 100)])
def test_periodic_update_step_matches_tfmot_should_prune(frequency, begin, end):
    schedule = _tfmot.pruning_schedule().ConstantSparsity(0.5, begin_step=begin, end_step=end, frequency=frequency)
    steps = list(range(0, end + 2 * frequency + 3))
    ours = [schedules.periodic_update_step(s, frequency, begin, end) for s in steps]
    theirs = [bool(schedule._should_prune_in_step(tf.constant(s, tf.int64), begin, end, frequency)) for s in steps]
    assert ours == theirs
    assert any(ours)


def test_periodic_update_step_hand_values():
    assert [s for s in range(20) if schedules.periodic_update_step(s, 4, 3, 12)] == [3, 7, 11]


@pytest.mark.parametrize("step, expected", [(0, 0.3), (50, 0.15), (100, 0.0), (150, 0.0),
                                            (25, 0.15 * (1 + math.cos(math.pi / 4)))])
def test_cosine_drop_fraction(step, expected):
    value = schedules.cosine_drop_fraction(step, 0.3, 100)
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(expected, abs=1e-6)


def test_cosine_drop_fraction_is_decreasing():
    values = [float(schedules.cosine_drop_fraction(tf.constant(s), 0.5, 40)) for s in range(0, 41)]
    assert np.all(np.diff(values) <= 0) and values[0] == pytest.approx(0.5) and values[-1] == pytest.approx(0.0)
