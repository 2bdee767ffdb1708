"""Plots and a markdown summary of a pretraining run, from fairseq2's JSONL metrics.

python -m birq_fs2.report RUN_DIR      # writes RUN_DIR/report/{curves.png,REPORT.md}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from birq_fs2.metrics import PRETRAIN_METRICS, display, series

PANELS = (
    ("Loss (bits)", ("anchor_loss", "enhanced_loss")),
    ("Accuracy", ("anchor_accuracy", "enhanced_accuracy")),
    ("Codebook perplexity", ("anchor_perplexity", "enhanced_perplexity")),
    ("Label agreement (NMI)", ("label_nmi",)),
)
TABLE_KEYS = ("loss", "anchor_loss", "enhanced_loss", "anchor_accuracy", "enhanced_accuracy",
              "anchor_perplexity", "enhanced_perplexity", "label_nmi", "mask_rate", "tau")  # fmt: skip


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {row["Step"]: row for row in rows}  # a resumed run may repeat a step
    return [by_step[s] for s in sorted(by_step)]


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
        for title, keys in PANELS
    ]  # fmt: skip
    plot_panels(panels, out, "step")


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    train = read_metrics(run_dir / "metrics" / "train.jsonl")
    valid = read_metrics(run_dir / "metrics" / "valid" / "valid.jsonl")
    if not train:
        raise FileNotFoundError(f"{run_dir / 'metrics' / 'train.jsonl'}: no training metrics yet.")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    plot_curves(train, valid, out / "curves.png")
    keys = [display(k) for k in TABLE_KEYS]
    lines = [f"# Pretraining run `{run_dir}`", "", "![curves](curves.png)", "",
             "| split | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]  # fmt: skip
    for split, rows in (("train", train), ("valid", valid)):
        for row in rows[:1] + rows[-1:] if len(rows) > 1 else rows:
            cells = [f"{row[k]:.3f}" if isinstance(row.get(k), (int, float)) else "" for k in keys]
            lines.append(f"| {split} | {row['Step']} | " + " | ".join(cells) + " |")
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    return out / "REPORT.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birq_fs2.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        print(write_report(args.run_dir))
    except Exception as ex:  # noqa: BLE001
        print(f"report: error: {ex}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
