"""``birq-transcribe --model CARD_OR_DIR FILE...``: audio files (any sample rate, mono or
stereo, WAV/FLAC) to text on stdout, one line per file (``FILE<TAB>TEXT`` with several
files). A file that cannot be read is reported on stderr and the others go on; the exit
status is then 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from birq_fs2.cli import run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birq-transcribe", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--model",
        required=True,
        help="fine-tuned model: asset card, birq-export or birq-finetune folder",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("birq-transcribe", args, lambda: _transcribe(args))


def _transcribe(args: argparse.Namespace) -> int:
    from birq_fs2.inference import Transcriber

    transcriber = Transcriber(args.model, device=torch.device(args.device))
    failed = 0
    for t in transcriber.transcribe(args.files):
        if t.error is not None:
            failed += 1
            print(f"birq-transcribe: error: {t.error}", file=sys.stderr)
        elif len(args.files) == 1:
            print(t.text, flush=True)
        else:
            print(f"{t.path}\t{t.text}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
