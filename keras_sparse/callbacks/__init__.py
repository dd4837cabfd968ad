"""Callbacks: ``SparsityCallback`` for Keras's ``model.fit``; ``Callback`` and the built-in
callbacks of ``keras_sparse.Trainer`` (progress, TensorBoard, training cost, NaN check)."""

from keras_sparse.callbacks.base import Callback, CallbackList
from keras_sparse.callbacks.costs import TrainingCost
from keras_sparse.callbacks.progress import ProgressLogger
from keras_sparse.callbacks.sparsity import SparsityCallback
from keras_sparse.callbacks.tensorboard import TensorBoard
from keras_sparse.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = ["Callback", "CallbackList", "ProgressLogger", "SparsityCallback", "TensorBoard", "TerminateOnNaN",
           "TrainingCost"]
