"""keras-sparse: sparse training (magnitude pruning, SNIP, SET, RigL, early-frozen RigL) for Keras 3.

Quick use::

    import keras, keras_sparse as ks
    model = ks.wrap(my_keras_model)
    algo = ks.algorithms.RigL(sparsity=0.9, distribution="erdos_renyi_kernel")
    trainer = ks.Trainer(model, algo, optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    trainer.fit(train_ds, epochs=3, validation_data=test_ds)
    ks.export_saved_model(model, "/tmp/exported")
"""

from keras_sparse import algorithms, distributions, schedules, sparsity_types
from keras_sparse.callbacks import Callback, SparsityCallback
from keras_sparse.fused_steps import fuse_steps
from keras_sparse.masking import (
    export_saved_model,
    get_masks,
    load_model,
    masked_kernels,
    masked_weights,
    set_masks,
    sparsity,
    sparsity_report,
    strip,
    wrap,
)
from keras_sparse.optimizer import SparseOptimizer
from keras_sparse.shrink import shrink_channels
from keras_sparse.sparse_matmul import export_sparse_matmul, sparse_matmul_model
from keras_sparse.trainer import Trainer

__version__ = "0.1.0"

__all__ = ["algorithms", "distributions", "schedules", "sparsity_types", "wrap", "get_masks", "set_masks",
           "masked_weights", "masked_kernels", "sparsity", "sparsity_report", "strip", "export_saved_model",
           "load_model", "shrink_channels", "fuse_steps", "export_sparse_matmul", "sparse_matmul_model",
           "SparseOptimizer", "SparsityCallback", "Trainer", "Callback"]
