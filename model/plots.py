"""Training curves as a PNG, read back from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def plot_curves(metrics_file: Path, out: Path, title: str = "") -> None:
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("train_loss", "train loss"),
        ("valid_logloss", "valid logloss"),
        ("valid_auc", "valid AUC"),
    ]
    for axis, (key, label) in zip(axes, panels, strict=True):
        axis.plot(epochs, [r[key] for r in records], marker="o")
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
