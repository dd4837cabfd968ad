"""The Trainer's built-in callbacks, driven hook by hook on a stand-in trainer: exact outputs,
no training. (TensorBoard's events are checked on a real run in test_tensorboard.py.)"""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sparse as ks
from keras_sparse.callbacks import Callback, CallbackList, ProgressLogger, TerminateOnNaN, TrainingCost
from keras_sparse.callbacks.progress import epoch_line
from keras_sparse.errors import TrainingDivergedError


def stand_in(**attributes):
    defaults = dict(step=0, epoch=0, epochs=2, epoch_step=0, steps_per_epoch=10, log_point=False, checkpoint=None)
    return types.SimpleNamespace(**{**defaults, **attributes})


def test_progress_prints_the_epoch_and_a_line_with_its_metrics_time_and_speed(capsys):
    trainer = stand_in(step=10)
    progress = ProgressLogger(bar=False)
    progress.on_epoch_begin(trainer, 1)
    trainer.step = 30  # 20 steps ran in this epoch
    progress.on_epoch_end(trainer, {"epoch": 2, "step": 30, "train_loss": 0.5, "seconds": 4.0, "sparsity": 0.9,
                                    "val_accuracy": 0.875, "dense_gradient_steps": 3})
    assert capsys.readouterr().out.splitlines() == [
        "Epoch 2/2", "  train_loss=0.5000, sparsity=0.9000, val_accuracy=0.8750 — 4.0 s, 5 steps/s"]


def test_an_epoch_line_without_time_has_no_speed():
    assert epoch_line({"train_loss": 1.0, "seconds": 0.0}, 0) == "train_loss=1.0000 — 0.0 s"


class RecordedSteps:
    """A stand-in for ``StepPrograms``' record of the first non-finite step, counting its reads."""

    def __init__(self, step=None):
        self.step, self.reads = step, 0

    def first_nonfinite_step(self):
        self.reads += 1
        return self.step


def test_nan_check_names_the_recorded_step_and_the_kept_checkpoint():
    check = TerminateOnNaN()
    trainer = stand_in(step=8, programs=RecordedSteps(5))
    trainer.checkpoint = types.SimpleNamespace(latest="/run/checkpoints/ckpt-4")
    with pytest.raises(TrainingDivergedError, match=r"at step 5: .*ckpt-4 is kept"):
        check.on_checkpoint(trainer)  # nothing diverged is saved
    with pytest.raises(TrainingDivergedError, match="at step 5: .*no checkpoint was written"):
        check.on_epoch_end(stand_in(programs=RecordedSteps(5)), {})


def test_nan_check_reads_the_device_only_at_log_points_and_passes_finite_runs():
    check = TerminateOnNaN()
    programs = RecordedSteps()
    trainer = stand_in(step=1, log_point=False, programs=programs)
    check.on_step_end(trainer, tf.constant(0.5))
    assert programs.reads == 0  # no wait on the device between log points
    trainer.log_point = True
    check.on_step_end(trainer, tf.constant(0.5))
    check.on_epoch_end(trainer, {})
    check.on_checkpoint(trainer)
    assert programs.reads == 3
    programs.step = 1
    with pytest.raises(TrainingDivergedError, match="at step 1: "):
        check.on_step_end(trainer, tf.constant(np.nan))


def test_training_cost_counts_dense_gradient_steps_and_flops_at_each_steps_densities():
    model = ks.wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]), quiet=True)
    kernels = ks.masked_weights(model)
    densities = {"fc/kernel": 0.5}
    programs = stand_in(  # as StepPrograms.layer_densities: now, or from counts
        layer_densities=lambda counts=None: dict(densities) if counts is None else {"fc/kernel": float(counts[0]) / 12})
    trainer = stand_in(model=model, kernels=kernels, step=0, programs=programs,
                       algorithm=types.SimpleNamespace(uses_dense_gradient=lambda step: step == 0))
    cost = TrainingCost()
    cost.on_masks_initialized(trainer, 2)  # two dense scoring batches (SNIP)
    cost.on_train_begin(trainer)
    trainer.step = 4
    cost.on_step_end(trainer, None)  # step 0 with the dense gradient, steps 1-3 sparse at density 0.5
    cost.on_mask_update_end(trainer, np.array([3]))  # 3 of 12 weights active: density 0.25
    trainer.step = 6
    cost.on_step_end(trainer, None)
    # A sparse step costs 3 d F, a dense-gradient step 2 d F + F, out of a dense step's 3 F.
    expected = 2 + (2 * 0.5 + 1) / 3 + 3 * 0.5 + 2 * 0.25
    assert cost.dense_gradient_steps == 3 and cost.training_flops == pytest.approx(expected, rel=1e-12)
    record = {}
    cost.on_epoch_end(trainer, record)
    assert record == {"dense_gradient_steps": 3, "training_flops_relative_to_dense": pytest.approx(expected / 6)}
    restored = TrainingCost()
    restored.set_state(cost.get_state())
    assert restored.get_state() == cost.get_state()


def test_a_callback_list_calls_each_hook_on_each_callback_in_order_and_joins_their_boundaries():
    calls = []

    class Recorder(Callback):
        def __init__(self, name, boundaries):
            self.name, self.boundaries = name, boundaries

        def step_boundaries(self, trainer):
            return self.boundaries

        def on_epoch_end(self, trainer, record):
            calls.append((self.name, "on_epoch_end", record["epoch"]))

        def on_mask_update_end(self, trainer, active_counts):
            calls.append((self.name, "on_mask_update_end", list(active_counts)))

    first, second = Recorder("first", [3, 5]), Recorder("second", (np.int64(5), 8))
    callbacks = CallbackList([first, second])
    trainer = stand_in()
    callbacks.on_epoch_end(trainer, {"epoch": 2})
    callbacks.on_mask_update_end(trainer, np.array([4]))
    callbacks.on_step_end(trainer, None)  # hooks a callback leaves alone do nothing
    assert calls == [("first", "on_epoch_end", 2), ("second", "on_epoch_end", 2),
                     ("first", "on_mask_update_end", [4]), ("second", "on_mask_update_end", [4])]
    assert callbacks.step_boundaries(trainer) == {3, 5, 8}
    assert list(callbacks) == [first, second]
    with pytest.raises(ks.errors.ConfigError, match="EarlyStopping is not a keras_sparse.Callback: Trainer.fit takes "):
        CallbackList([first, keras.callbacks.EarlyStopping()])
    hooks = [name for name in vars(Callback) if name.startswith("on_")]
    assert all(name in vars(CallbackList) for name in hooks)  # a new hook must be passed on too
