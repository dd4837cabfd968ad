"""``Callback``: the hooks ``Trainer.fit`` calls on the host, between compiled calls.

The loop itself only runs steps and keeps the resume position; progress lines, TensorBoard,
training-cost accounting and the NaN check are callbacks like the ones a user adds, each in its
own module (modelled on Keras's ``keras.callbacks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from keras_sparse.errors import ConfigError

if TYPE_CHECKING:
    from keras_sparse.trainer import Trainer


class Callback:
    """Hooks into ``Trainer.fit``; override the ones you need. The trainer's public attributes
    (``step``, ``epoch``, ``epoch_step``, ``steps_per_epoch``, ``epochs``, ``model``,
    ``kernels``, ``log_point``, …) say where training is; ``trainer.programs`` counts the masks
    (``layer_densities()``, ``active_counts()``).

    A callback with counters that must survive a restart returns them (JSON-able) from
    ``get_state`` and takes them back in ``set_state``: they are saved with every checkpoint.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """After the masks are initialized (or restored), before the first step."""

    def on_masks_initialized(self, trainer: Trainer, scoring_steps: int) -> None:
        """After the algorithm's initial masks, which scored ``scoring_steps`` batches (SNIP)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of epoch ``epoch`` (0-based; a resumed epoch starts mid-way)."""

    def on_step_end(self, trainer: Trainer, losses: tf.Tensor) -> None:
        """After each compiled call: one step, or up to ``steps_per_execution`` steps whose
        losses ``losses`` holds (a device tensor: reading it waits for the call to finish)."""

    def step_boundaries(self, trainer: Trainer) -> Iterable[int]:
        """Steps after which a compiled call must end, so that ``on_step_end`` runs right after
        each of them (a call of several steps ends only at mask updates and stack ends
        otherwise). Asked once, when ``fit`` starts."""
        return ()

    def on_mask_update_begin(self, trainer: Trainer) -> None:
        """Before a call whose last step updates the masks."""

    def on_mask_update_end(self, trainer: Trainer, active_counts: np.ndarray) -> None:
        """After that call (after ``on_step_end``), with each masked weight's active count."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After each epoch, with its history record; a callback may add entries to it."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """Before a checkpoint is written (at each epoch end, and when a signal stops training)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def get_state(self) -> Any:
        """JSON-able state saved with each checkpoint (None: nothing to save)."""
        return None

    def set_state(self, state: Any) -> None:
        """Takes back the state ``get_state`` returned, when a run resumes."""


class CallbackList(Callback):
    """Callbacks called as one, in order, each hook on each of them (as Keras's ``CallbackList``).
    Iterating gives the callbacks; ``step_boundaries`` joins theirs."""

    def __init__(self, callbacks: Sequence[Callback]):
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"{type(callback).__name__} is not a keras_sparse.Callback: Trainer.fit takes "
                                  "subclasses of ks.Callback; Keras callbacks go to model.fit with a SparseOptimizer.")
        self.callbacks = list(callbacks)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_train_begin(self, trainer):
        self._each("on_train_begin", trainer)

    def on_masks_initialized(self, trainer, scoring_steps):
        self._each("on_masks_initialized", trainer, scoring_steps)

    def on_epoch_begin(self, trainer, epoch):
        self._each("on_epoch_begin", trainer, epoch)

    def on_step_end(self, trainer, losses):
        self._each("on_step_end", trainer, losses)

    def step_boundaries(self, trainer) -> set[int]:
        return {int(step) for callback in self.callbacks for step in callback.step_boundaries(trainer)}

    def on_mask_update_begin(self, trainer):
        self._each("on_mask_update_begin", trainer)

    def on_mask_update_end(self, trainer, active_counts):
        self._each("on_mask_update_end", trainer, active_counts)

    def on_epoch_end(self, trainer, record):
        self._each("on_epoch_end", trainer, record)

    def on_checkpoint(self, trainer):
        self._each("on_checkpoint", trainer)

    def on_train_end(self, trainer):
        self._each("on_train_end", trainer)


def last_loss(losses: tf.Tensor) -> float:
    """The last step's loss of a call (NumPy reads it faster than an eager slice)."""
    return float(np.asarray(losses).reshape(-1)[-1])
