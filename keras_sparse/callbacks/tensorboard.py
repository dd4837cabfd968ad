"""``TensorBoard``: training curves, per-layer sparsity, mask pictures and how much each mask
update changed the masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from keras_sparse.callbacks.base import Callback, last_loss
from keras_sparse.masking import get_masks


class TensorBoard(Callback):
    """Writes TensorBoard events to ``logdir``: ``train/loss`` at the trainer's log points;
    ``epoch/*`` (the epoch record's numbers), ``sparsity/<weight>`` and ``masks/<weight>``
    images at each epoch end; at each mask update, per weight, ``drop_fraction`` (the share of
    its active weights the update removed: for SET and RigL, the drop fraction the schedule
    applied) and ``mask_iou_with_previous``. ``Trainer`` adds one when given a ``logdir``."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writer = None  # made at the first summary: a run that fails its checks writes nothing
        self._before: dict[str, np.ndarray] | None = None

    def _scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", value)

    def on_step_end(self, trainer, losses) -> None:
        if trainer.log_point:
            self._scalars(trainer.step, "train", {"loss": last_loss(losses)})

    def on_mask_update_begin(self, trainer) -> None:
        self._before = get_masks(trainer.model)

    def on_mask_update_end(self, trainer, active_counts) -> None:
        dropped, overlap = {}, {}
        for key, new in get_masks(trainer.model).items():
            old = self._before[key]
            dropped[key] = float(np.count_nonzero(old & ~new)) / max(int(np.count_nonzero(old)), 1)
            overlap[key] = float(np.count_nonzero(old & new)) / max(int(np.count_nonzero(old | new)), 1)
        update_step = trainer.step - 1  # the call's last step updated the masks: tag it with that step
        self._scalars(update_step, "drop_fraction", dropped)
        self._scalars(update_step, "mask_iou_with_previous", overlap)

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and k not in ("epoch", "step")}
        self._scalars(trainer.step, "epoch", numbers)
        self._scalars(trainer.step, "sparsity", {k: 1.0 - d for k, d in trainer.programs.layer_densities().items()})
        with self._writer.as_default(step=trainer.step):
            for key, mask in get_masks(trainer.model).items():
                # A kernel as a 2-D picture: rows = all input positions, columns = outputs.
                picture = mask.reshape(-1, mask.shape[-1]) if mask.ndim > 1 else mask[None, :]
                tf.summary.image(f"masks/{key}", picture[None, :, :, None].astype(np.uint8) * 255)
        self._writer.flush()

    def on_train_end(self, trainer) -> None:
        if self._writer is not None:
            self._writer.flush()
