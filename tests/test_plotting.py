"""keras_sparse.plotting and binaries/plot.py: PNG plots from a run's metrics.json."""

from __future__ import annotations

import json
import os
import runpy
import sys

import gin
import matplotlib.image
import numpy as np
import pytest

from keras_sparse import experiment, plotting
from keras_sparse.config import parse_gin
from keras_sparse.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A metrics.json written by hand: three masked kernels, four epochs with per-epoch per-layer
# sparsities (gradual pruning), and one NaN written as a string, as experiment.train writes it.
METRICS = {
    "test_accuracy": 0.8, "test_loss": 0.6, "sparsity": 0.85, "seed": 4, "model": "mlp", "data": "digits",
    "algorithm": {"name": "magnitude", "sparsity": 0.9},
    "layer_sparsity": {"fc1/kernel": 0.9, "fc2/kernel": 0.8, "logits/kernel": 0.5},
    "history": [
        {"epoch": e + 1, "step": 10 * (e + 1), "train_loss": loss, "val_loss": val, "val_accuracy": acc,
         "sparsity": s, "layer_sparsity": {"fc1/kernel": s, "fc2/kernel": 0.9 * s, "logits/kernel": 0.5 * s}}
        for e, (loss, val, acc, s) in enumerate([(2.0, 1.9, 0.3, 0.0), (1.2, "nan", 0.5, 0.4),
                                                  (0.8, 0.9, 0.7, 0.8), (0.6, 0.7, 0.79, 0.85)])
    ],
}


def write_metrics(logdir, metrics=METRICS) -> str:
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    return str(logdir)


def assert_real_png(path: str, min_size: tuple[int, int] = (300, 300)) -> None:
    """A decodable PNG of a drawn plot: large enough, and far from one flat colour."""
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_size[1] and image.shape[1] >= min_size[0], image.shape
    rgb = image[..., :3].reshape(-1, 3)
    not_white = np.mean(np.any(rgb < 0.95, axis=1))
    assert 0.02 < not_white < 0.9, not_white
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20  # text, lines, bars: many colours


def test_figures_show_the_numbers_of_metrics_json():
    bars_figure = plotting.layer_sparsity_figure(METRICS)
    ax = bars_figure.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([90.0, 80.0, 50.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1/kernel", "fc2/kernel", "logits/kernel"]
    assert ax.lines[0].get_ydata()[0] == pytest.approx(85.0)  # overall sparsity, dashed

    loss_ax, accuracy_ax, sparsity_ax = plotting.curves_figure(METRICS).axes
    lines = {line.get_label(): line for ax in (loss_ax, accuracy_ax, sparsity_ax) for line in ax.lines}
    np.testing.assert_allclose(lines["train"].get_xdata(), [1, 2, 3, 4])
    train_loss = [line for line in loss_ax.lines if line.get_label() == "train"][0]
    np.testing.assert_allclose(train_loss.get_ydata(), [2.0, 1.2, 0.8, 0.6])
    val_loss = [line for line in loss_ax.lines if line.get_label() == "validation"][0]
    np.testing.assert_allclose(val_loss.get_ydata(), [1.9, np.nan, 0.9, 0.7])  # "nan" is a gap
    val_accuracy = [line for line in accuracy_ax.lines if line.get_label() == "validation"][0]
    np.testing.assert_allclose(val_accuracy.get_ydata(), [30.0, 50.0, 70.0, 79.0])
    assert lines["test 80.0%"].get_ydata()[0] == pytest.approx(80.0)
    np.testing.assert_allclose(lines["overall"].get_ydata(), [0.0, 40.0, 80.0, 85.0])
    np.testing.assert_allclose(lines["logits/kernel"].get_ydata(), [0.0, 20.0, 40.0, 42.5])


def test_binary_writes_pngs_to_out_dir_and_reports_a_missing_metrics_file(tmp_path, monkeypatch, capsys):
    """binaries/plot.py itself, run in this process (TensorFlow is already imported; the installed
    keras-sparse-plot runs in a process of its own in test_commands)."""
    logdir = write_metrics(tmp_path / "run")
    out = tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", ["binaries/plot.py", logdir, "--out", str(out)])
    runpy.run_path(os.path.join(ROOT, "binaries", "plot.py"), run_name="__main__")  # exits only on an error
    assert sorted(os.listdir(out)) == ["layer_sparsity.png", "training_curves.png"]
    assert sorted(os.listdir(logdir)) == ["metrics.json"]  # --out: nothing written into the logdir
    assert capsys.readouterr().out.split() == [str(out / "layer_sparsity.png"), str(out / "training_curves.png")]
    assert_real_png(str(out / "layer_sparsity.png"))
    assert_real_png(str(out / "training_curves.png"), min_size=(1000, 300))

    with pytest.raises(ConfigError, match="No metrics.json"):
        plotting.plot_run(str(tmp_path / "empty"))
    write_metrics(tmp_path / "no_history", {**METRICS, "history": []})
    with pytest.raises(ConfigError, match="history"):
        plotting.plot_run(str(tmp_path / "no_history"))
    assert sorted(os.listdir(tmp_path / "no_history")) == ["metrics.json"]  # a failed plot writes nothing


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_plot_a_real_run(tmp_path, clean_gin):
    """A two-epoch RigL run through keras_sparse.experiment, plotted into its logdir (7 steps an
    epoch, no XLA: the plots need a real metrics.json, not a long or compiled run)."""
    parse_gin([os.path.join(ROOT, "gin_configs", "rigl.gin")],
                         ["training.epochs = 2", "model.width = 8", "training.progress = False",
                          "training.export = False", "training.batch_size = 500", "training.jit_compile = False"])
    logdir = str(tmp_path / "run")
    metrics = experiment.train(logdir, seed=1)
    paths = plotting.plot_run(logdir)
    assert paths == {"layer_sparsity": os.path.join(logdir, "layer_sparsity.png"),
                     "curves": os.path.join(logdir, "training_curves.png")}
    assert_real_png(paths["layer_sparsity"])
    assert_real_png(paths["curves"], min_size=(1000, 300))
    bars = plotting.layer_sparsity_figure(metrics).axes[0].patches
    assert [p.get_height() for p in bars] == pytest.approx([100 * s for s in metrics["layer_sparsity"].values()])
    assert len(bars) == 5  # mnist1d_cnn: conv1..conv4 and logits
    loss_ax = plotting.curves_figure(metrics).axes[0]
    assert [list(line.get_xdata()) for line in loss_ax.lines] == [[1, 2], [1, 2]]  # train and validation


def _text_boxes(figure):
    """The drawn extent of every visible text of ``figure`` (titles, tick labels, value labels,
    the overall line's name) and of every legend, in display pixels."""
    renderer = figure.canvas.get_renderer()
    texts = list(figure.texts)
    for ax in figure.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            texts += [tick.label1 for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    for ax in figure.axes:
        if ax.get_legend() is not None:
            boxes.append(("legend", ax.get_legend().get_window_extent(renderer)))
    return boxes


@pytest.mark.parametrize("last_layer", [0.0, 0.5, 1.0])
def test_layer_sparsity_texts_do_not_overlap(last_layer):
    """The overall sparsity's legend covered the last bar's value label (a 0% layer's, at the
    bottom right); now no text covers another, and every text is inside the image."""
    metrics = {**METRICS, "layer_sparsity": {**METRICS["layer_sparsity"], "logits/kernel": last_layer}}
    figure = plotting.layer_sparsity_figure(metrics)
    figure.canvas.draw()
    boxes = _text_boxes(figure)
    width, height = figure.canvas.get_width_height()
    for text, box in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, f"{text!r} is cut off"
    for i, (text, box) in enumerate(boxes):
        for other, other_box in boxes[i + 1:]:
            assert not box.overlaps(other_box), f"{text!r} overlaps {other!r}"
    assert "overall 85.0%" in [text for text, _ in boxes]  # named at the line's end


def test_curves_texts_do_not_overlap():
    figure = plotting.curves_figure(METRICS)
    figure.canvas.draw()
    boxes = _text_boxes(figure)
    for i, (text, box) in enumerate(boxes):
        for other, other_box in boxes[i + 1:]:
            assert not box.overlaps(other_box), f"{text!r} overlaps {other!r}"


def test_plot_interval_draws_the_mean_and_its_interval_as_a_band_or_error_bars():
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    samples = [[0.90, 0.92, 0.94], [0.80, 0.82, 0.84], []]  # 3 seeds: min–max; the last point not done
    axes = Figure().subplots(1, 2)
    stats = plotting.plot_interval(axes[0], [0.5, 0.9, 0.95], samples, scale=100, label="rigl", marker="o")
    assert [(s.low, s.high) for s in stats[:2]] == [pytest.approx((90, 94)), pytest.approx((80, 84))]
    [line] = axes[0].get_lines()
    assert list(line.get_xdata()) == [0.5, 0.9] and list(line.get_ydata()) == pytest.approx([92, 82])
    [band] = [c for c in axes[0].collections if isinstance(c, PolyCollection)]
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(80) and max(ys) == pytest.approx(94)

    plotting.plot_interval(axes[1], [0.5, 0.9], samples[:2], scale=100, style="bars", label="static")
    caps = [c for c in axes[1].collections]  # the error bars: one vertical segment per point
    segments = caps[0].get_segments()
    assert [tuple(s[:, 1]) for s in segments] == [pytest.approx((90, 94)), pytest.approx((80, 84))]
    with pytest.raises(ValueError):
        plotting.plot_interval(axes[1], [0.5], [[1.0]], style="dots")
