"""Tables from run logdirs: reads each ``metrics.json`` and formats a Markdown table."""

from __future__ import annotations

import os
from typing import Sequence

from keras_sparse.files import read_metrics

COLUMNS = [
    ("run", lambda name, m: name),
    ("algorithm", lambda name, m: m["algorithm"]["name"]),
    ("test accuracy", lambda name, m: f"{100 * m['test_accuracy']:.1f}%"),
    ("sparsity", lambda name, m: f"{100 * m['sparsity']:.1f}%"),
    ("dense-gradient steps", lambda name, m: f"{m['dense_gradient_steps']} / {m['steps']}"),
    ("training FLOPs vs dense", lambda name, m: f"{m['training_flops_relative_to_dense']:.3f}"),
    ("train time", lambda name, m: f"{sum(h['seconds'] for h in m['history']):.0f} s"),
]


def markdown_table(logdirs: Sequence[str]) -> str:
    """One row per run: accuracy, sparsity, dense-gradient steps, FLOPs and training time."""
    rows = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for logdir in logdirs:
        metrics = read_metrics(logdir)
        name = os.path.basename(os.path.normpath(logdir))
        rows.append("| " + " | ".join(fn(name, metrics) for _, fn in COLUMNS) + " |")
    return "\n".join(rows)
