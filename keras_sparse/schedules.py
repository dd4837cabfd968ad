"""Schedules: when masks change and by how much.

Gradual magnitude pruning reuses tfmot's ``PolynomialDecay`` (the Zhu & Gupta 2017 formula
s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3); RigL and SET use the cosine drop fraction
f(t) = α/2 (1 + cos(π t / T_end)) of Evci et al. 2020.
"""

from __future__ import annotations

import math

import tensorflow as tf

from keras_sparse import _tfmot


def periodic_update_step(step: int, frequency: int, begin_step: int, end_step: int) -> bool:
    """True at ``begin_step``, ``begin_step + frequency``, … up to and including ``end_step``.

    The same rule as tfmot's ``PruningSchedule._should_prune_in_step``, evaluated in Python so
    the training loop can pick the update program without a device round trip.
    """
    return begin_step <= step <= end_step and (step - begin_step) % frequency == 0


def polynomial_decay(initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                     frequency: int, power: float = 3.0):
    """tfmot's ``PolynomialDecay`` schedule (Zhu & Gupta 2017), imported without the Keras leak."""
    return _tfmot.pruning_schedule().PolynomialDecay(
        initial_sparsity=initial_sparsity, final_sparsity=final_sparsity, begin_step=begin_step,
        end_step=end_step, power=power, frequency=frequency)


def cosine_drop_fraction(step: tf.Tensor | int, initial_fraction: float, end_step: int) -> tf.Tensor:
    """RigL's drop fraction α/2 · (1 + cos(π · step / end_step)), as a float32 tensor."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(max(end_step, 1)), 1.0)
    return 0.5 * initial_fraction * (1.0 + tf.cos(math.pi * progress))
