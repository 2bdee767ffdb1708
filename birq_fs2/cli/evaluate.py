"""``birq-evaluate --model CARD_OR_DIR --data MANIFEST_OR_LIBRISPEECH_DIR [--split S]``:
greedy CTC decoding of a labelled split, WER and CER with jiwer after LibriSpeech-style
normalisation (upper case, punctuation removed).

Writes ``hypotheses.tsv`` (id, word errors, reference words, reference, hypothesis) and
``summary.json`` under --out, and prints the summary. Files that cannot be decoded and
utterances without a transcript are listed in the summary, named on stderr, and left
out of the score; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from birq_fs2.cli import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-evaluate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", required=True, help="asset card, birq-export or birq-finetune folder"
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="manifest dir, LibriSpeech root or subset"
    )
    parser.add_argument("--split", help="split to score (needed when the data has several)")
    parser.add_argument("--out", type=Path, help="output folder (default: birq-eval/<split>)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    return run_command("birq-evaluate", args, lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from birq_fs2.evaluation import evaluate

    out = args.out if args.out is not None else Path("birq-eval") / (args.split or args.data.name)
    summary, num_problems = evaluate(
        args.model, args.data, args.split, out, torch.device(args.device), progress=not args.quiet
    )
    for p in summary["skipped"]:
        print(f"birq-evaluate: skipped {p['path']}: {p['problem']}", file=sys.stderr)
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "skipped"}
            | {"skipped": len(summary["skipped"])}
        )
    )
    print(f"birq-evaluate: {out / 'hypotheses.tsv'}, {out / 'summary.json'}", file=sys.stderr)
    return 1 if num_problems else 0


if __name__ == "__main__":
    sys.exit(main())
