"""The paper's figures for a vendor model: channel activations (Fig. 4) and prune curves (Fig. 6).

matplotlib with the non-interactive Agg backend: plots render on servers without
a display, and files are written atomically like every other output.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fp_onnx.outputs import write_with  # noqa: E402


def plot_activations(
    path: str | os.PathLike,
    clean_mean: np.ndarray,
    triggered_mean: np.ndarray | None,
    *,
    title: str,
) -> Path:
    """Mean activation per channel, channels sorted by clean activation (most dormant left)."""
    order = np.argsort(clean_mean, kind="stable")
    panels = [("clean inputs", clean_mean[order], "tab:blue")]
    if triggered_mean is not None:
        panels.append(("triggered inputs", triggered_mean[order], "tab:red"))
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True, squeeze=False)
    for axis, (label, values, colour) in zip(axes[:, 0], panels):
        axis.bar(np.arange(len(values)), values, width=1.0, color=colour)
        axis.set_ylabel("mean activation")
        axis.set_title(label, fontsize=10)
    axes[-1, 0].set_xlabel("channel, sorted by mean activation on clean inputs")
    figure.suptitle(title, fontsize=11)
    return save_figure(figure, path)


def plot_prune_curve(
    path: str | os.PathLike,
    fraction_pruned: Sequence[float],
    clean_accuracy: Sequence[float],
    attack_success: Sequence[float] | None,
    *,
    title: str,
    stop_fraction: float | None = None,
) -> Path:
    """Clean accuracy and attack success versus the fraction of channels pruned (Fig. 6)."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(fraction_pruned, clean_accuracy, color="tab:blue", label="clean accuracy")
    if attack_success is not None:
        axis.plot(fraction_pruned, attack_success, color="tab:red", linestyle="--", label="attack success rate")
    if stop_fraction is not None:
        axis.axvline(stop_fraction, color="grey", linestyle=":", label="defense stops")
    axis.set_xlabel("fraction of channels pruned")
    axis.set_ylabel("rate")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    axis.set_title(title, fontsize=11)
    return save_figure(figure, path)


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Lay out, write atomically as PNG and close `figure` (benchmarks use it too: a figure left open leaks)."""
    figure.tight_layout()
    try:
        return write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))
    finally:
        plt.close(figure)
