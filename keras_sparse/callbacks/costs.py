"""``TrainingCost``: dense-gradient steps and training FLOPs, as the RigL paper counts them
(Evci et al. 2020, Appendix H; ``keras_sparse.flops``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_sparse import flops
from keras_sparse.callbacks.base import Callback


class TrainingCost(Callback):
    """Counts the steps that needed a dense gradient and the training FLOPs, in units of one
    dense training step, from each step's mask densities. ``Trainer`` always includes one
    (``trainer.cost``); its counters go into every epoch record and ``metrics.json``."""

    def __init__(self):
        self.dense_gradient_steps = 0
        self.training_flops = 0.0  # in dense training steps
        self._counted = 0  # steps counted so far
        self._forward: dict[str, float] = {}
        self._step_cost = {False: 0.0, True: 0.0}  # a step's cost in dense steps, by dense-gradient use

    def relative_flops(self, steps: int) -> float:
        """Training FLOPs per step relative to dense training, over ``steps`` steps."""
        return self.training_flops / max(steps, 1)

    def on_masks_initialized(self, trainer, scoring_steps: int) -> None:
        # A dense forward and backward per scoring batch: one dense step each.
        self.dense_gradient_steps += scoring_steps
        self.training_flops += scoring_steps

    def on_train_begin(self, trainer) -> None:
        macs = flops.forward_macs(trainer.model, trainer.kernels)
        self._forward = {k.key: 2.0 * m for k, m in zip(trainer.kernels, macs)}
        self._set_densities(trainer.programs.layer_densities())
        self._counted = trainer.step

    def _set_densities(self, densities: dict[str, float]) -> None:
        # A step's cost depends only on the densities and on whether it needs the dense gradient:
        # both costs are worked out once per mask change, not once per step.
        dense_step = flops.dense_step_cost(self._forward)
        self._step_cost = {uses_dense: flops.step_cost(self._forward, densities, uses_dense) / dense_step
                           for uses_dense in (False, True)}

    def on_step_end(self, trainer, losses) -> None:
        # Steps are costed at the densities before this call's mask update (if any).
        for step in range(self._counted, trainer.step):
            uses_dense = trainer.algorithm.uses_dense_gradient(step)
            self.training_flops += self._step_cost[uses_dense]
            self.dense_gradient_steps += int(uses_dense)
        self._counted = trainer.step

    def on_mask_update_end(self, trainer, active_counts: np.ndarray) -> None:
        self._set_densities(trainer.programs.layer_densities(active_counts))

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        record["dense_gradient_steps"] = self.dense_gradient_steps
        record["training_flops_relative_to_dense"] = self.relative_flops(trainer.step)

    def get_state(self) -> dict[str, Any]:
        return {"dense_gradient_steps": self.dense_gradient_steps, "training_flops": self.training_flops}

    def set_state(self, state: dict[str, Any]) -> None:
        self.dense_gradient_steps = int(state["dense_gradient_steps"])
        self.training_flops = float(state["training_flops"])
