"""Plots and a markdown summary of a pretraining run, from fairseq2's JSONL metrics.

birq-report RUN_DIR      # writes RUN_DIR/report/{curves.png,REPORT.md}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from birq_fs2.cli import run_command
from birq_fs2.experiments.plots import plot_curves
from birq_fs2.experiments.runs import read_metrics
from birq_fs2.metrics import display

TABLE_KEYS = ("loss", "anchor_loss", "enhanced_loss", "anchor_accuracy", "enhanced_accuracy",
              "anchor_perplexity", "enhanced_perplexity", "label_nmi", "mask_rate", "tau")  # fmt: skip


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
    parser = argparse.ArgumentParser(prog="birq-report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def report() -> int:
        print(write_report(args.run_dir))
        return 0

    return run_command("birq-report", args, report)


if __name__ == "__main__":
    sys.exit(main())
