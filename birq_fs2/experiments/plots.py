"""Plots of run metrics (matplotlib, Agg): rows of panels of (step, value) series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from birq_fs2.metrics import PRETRAIN_METRICS, series

PRETRAIN_PANELS = (
    ("Loss (bits)", ("anchor_loss", "enhanced_loss")),
    ("Accuracy", ("anchor_accuracy", "enhanced_accuracy")),
    ("Codebook perplexity", ("anchor_perplexity", "enhanced_perplexity")),
    ("Label agreement (NMI)", ("label_nmi",)),
)


Series = tuple[str, str, list[tuple[int, float]]]
"""(legend label, matplotlib line style, (step, value) points)."""


def plot_panels(panels: Sequence[tuple[str, Sequence[Series]]], out: Path, xlabel: str) -> None:
    """One row of panels, each a title and its series, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels, strict=True):
        for label, style, points in lines:
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=label, markersize=3)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_curves(train: list[dict], valid: list[dict], out: Path) -> None:
    panels = [
        (title, [
            (f"{key.split('_')[0]} ({split})", style, series(rows, key, PRETRAIN_METRICS))
            for rows, style, split in ((train, "-", "train"), (valid, "o--", "valid"))
            for key in keys
        ])
        for title, keys in PRETRAIN_PANELS
    ]  # fmt: skip
    plot_panels(panels, out, "step")
