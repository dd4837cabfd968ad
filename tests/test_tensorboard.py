"""What a run shows in TensorBoard, and the progress switch of the train binary."""

import glob
import math
import os

import gin
import pytest
import tensorflow as tf

from keras_sparse import experiment
from keras_sparse.config import parse_gin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(logdir):
    scalars, images = {}, set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "images":
                    images.add(value.tag)
                else:
                    scalars.setdefault(value.tag, []).append((event.step, float(tensor)))
    return scalars, images


@pytest.fixture(scope="module")
def rigl_run(tmp_path_factory):
    gin.clear_config()
    logdir = str(tmp_path_factory.mktemp("tb") / "run")
    parse_gin([os.path.join(ROOT, "gin_configs", "rigl.gin")],
                         ["training.epochs = 2", "training.batch_size = 500", "model.width = 8",
                          "RigL.update_frequency = 2", "training.progress = False", "training.export = False",
                          "training.jit_compile = False"])  # what is logged, not the compiled step
    experiment.train(logdir, seed=0)
    gin.clear_config()
    return read_events(logdir)


def test_learning_curves_sparsity_and_counters(rigl_run):
    scalars, _ = rigl_run
    for tag in ("train/loss", "epoch/train_loss", "epoch/val_accuracy", "epoch/val_loss", "epoch/dense_gradient_steps",
                "epoch/training_flops_relative_to_dense", "sparsity/conv2/kernel", "sparsity/logits/kernel"):
        assert tag in scalars, tag
    assert [step for step, _ in scalars["epoch/val_accuracy"]] == [7, 14]  # 3600 of 4000 examples train: 7 steps
    assert scalars["epoch/dense_gradient_steps"][-1][1] == 5  # RigL updates at 0, 2, …, 8 (< int(75% of 14) = 10)


def test_drop_fraction_and_overlap_at_each_update(rigl_run):
    scalars, _ = rigl_run
    # The sparsest layer (ERK keeps small layers of this narrow net dense: nothing to drop there).
    key = max((tag.split("/", 1)[1] for tag in scalars if tag.startswith("sparsity/")),
              key=lambda k: scalars[f"sparsity/{k}"][-1][1])
    assert scalars[f"sparsity/{key}"][-1][1] > 0.5
    drops = scalars[f"drop_fraction/{key}"]
    assert [step for step, _ in drops] == [0, 2, 4, 6, 8]  # RigL's update steps (end: int(75% of 14) = 10)
    for step, value in drops:
        scheduled = 0.5 * 0.3 * (1 + math.cos(math.pi * step / 12))
        # Weights that leave the mask (a just-dropped weight grown back does not count), rounded
        # to whole weights: these layers have at least 16 active, so within 1/32 of the schedule.
        assert 0 <= value <= scheduled + 1 / 32
    assert drops[0][1] > 0 and drops[-1][1] < drops[0][1]  # the cosine decay
    iou = dict(scalars[f"mask_iou_with_previous/{key}"])
    assert all(0.5 < v <= 1.0 for v in iou.values()) and min(iou.values()) < 1.0


def test_mask_images(rigl_run):
    _, images = rigl_run
    assert {"masks/conv1/kernel", "masks/conv2/kernel", "masks/logits/kernel"} <= images
