"""``birq-data``: corpus tools (manifest, check, synth)."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

from birq_fs2.cli import run_command
from birq_fs2.data.corpus import (
    CorpusError,
    find_splits,
    header_num_samples,
    is_librispeech_subset,
    load_split,
    scan_librispeech,
    write_manifest,
)
from birq_fs2.data.vocab import CharVocabulary

UNUSABLE = ("unreadable", "corrupt", "empty", "truncated")
"""Problems (birq_fs2.data.check's names) that keep a file out of a manifest."""


def _manifest(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from birq_fs2.data.check import check_utterances, header_problems

    src: Path = args.librispeech_dir.resolve()
    if not is_librispeech_subset(src):
        raise CorpusError(f"{src}: not a LibriSpeech subset folder (<speaker>/<chapter>/*.flac).")
    problems: list[tuple[str, str]] = []
    utts = scan_librispeech(src, problems=problems)
    # Every file is looked at before anything is written: all the bad ones are named in
    # one run (decoding finds truncated files too; --header-only reads headers alone).
    if args.header_only:
        found = header_problems(utts)
    else:
        with Progress(disable=args.quiet) as bar:
            job = bar.add_task(f"decoding {src.name}", total=len(utts))
            found = check_utterances(
                utts, min_frames=0, need_transcripts=False, on_progress=lambda: bar.advance(job)
            )
    unusable = [p for p in found if p.kind in UNUSABLE]
    bad = {p.path for p in unusable}
    utts = [
        replace(u, num_samples=header_num_samples(u.path)) for u in utts if str(u.path) not in bad
    ]
    if not utts:
        raise CorpusError(f"{src}: no readable audio file ({len(bad)} unusable).")
    split = args.split or src.name
    if args.valid_percent > 0:
        rng = random.Random(args.seed)
        order = list(range(len(utts)))
        rng.shuffle(order)
        n_valid = round(len(utts) * args.valid_percent / 100)
        valid = set(order[:n_valid])
        write_manifest([u for i, u in enumerate(utts) if i not in valid], args.dest, split, src)
        write_manifest([u for i, u in enumerate(utts) if i in valid], args.dest, "valid", src)
        print(f"{args.dest}: {split}.tsv ({len(utts) - n_valid}) and valid.tsv ({n_valid})")
    else:
        write_manifest(utts, args.dest, split, src)
        print(f"{args.dest}: {split}.tsv ({len(utts)} files)")
    texts = [u.text for u in utts if u.text is not None]
    if texts and not (args.dest / "dict.ltr.txt").exists():
        CharVocabulary.build(texts).save(args.dest / "dict.ltr.txt")
    missing = sum(u.text is None for u in utts)
    if missing:
        print(
            f"warning: {missing} files have no transcript (no .wrd/.ltr written)", file=sys.stderr
        )
    for path, message in problems:
        print(f"warning: {path}: {message}", file=sys.stderr)
    for p in unusable:
        print(p)
    if unusable:
        counts = Counter(p.kind for p in unusable)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(
            f"{len(bad)} of {len(bad) + len(utts)} files left out of the manifest ({summary}).",
            file=sys.stderr,
        )
    return 1 if unusable else 0


def _check(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from birq_fs2.data.check import Problem, alignment_files, check_alignments, check_utterances

    path: Path = args.path
    if args.splits:
        splits = args.splits
    else:
        path, splits = find_splits(path)
    if not splits:
        raise CorpusError(f"{args.path}: no manifests (*.tsv) or LibriSpeech subsets found.")
    problems: list = []
    total = 0
    aligned: set[Path] = set()  # *.phones.txt, each checked once (splits may share chapters)
    for split in splits:
        if (path / split).is_dir() and not (path / f"{split}.tsv").exists():
            notes: list[tuple[str, str]] = []
            utts = scan_librispeech(path / split, problems=notes)
            problems += [Problem(file, "bad_transcript", message) for file, message in notes]
            files = alignment_files(utts, path / split)
        else:
            utts = load_split(path, split)
            files = alignment_files(utts)
        problems += check_alignments(f for f in files if f not in aligned)
        aligned.update(files)
        total += len(utts)
        with Progress(disable=args.quiet) as bar:
            job = bar.add_task(f"checking {split}", total=len(utts))
            problems += check_utterances(
                utts, min_frames=args.min_frames, need_transcripts=not args.audio_only,
                on_progress=lambda job=job: bar.advance(job),
            )  # fmt: skip
    for p in problems:
        print(p)
    counts = Counter(p.kind for p in problems)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no problems"
    alignments = f" ({len(aligned)} alignment files)" if aligned else ""
    print(f"{total} files in {', '.join(splits)}{alignments}: {summary}", file=sys.stderr)
    return 1 if problems else 0


def _synth(args: argparse.Namespace) -> int:
    from birq_fs2.data.synth import summary_dict, synthesize_corpus

    summary = synthesize_corpus(
        args.out, hours=args.hours, num_speakers=args.speakers, seed=args.seed, text=args.text,
        jobs=args.jobs, use_flite=False if args.no_flite else None, progress=not args.quiet,
    )  # fmt: skip
    print(json.dumps(summary_dict(summary), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birq-data", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("manifest", help="write fairseq manifests for a LibriSpeech subset")
    p.add_argument("librispeech_dir", type=Path, help="e.g. LibriSpeech/train-clean-100")
    p.add_argument("--dest", type=Path, required=True)
    p.add_argument("--split", help="manifest name (default: the subset folder's name)")
    p.add_argument("--valid-percent", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--header-only", action="store_true",
        help="read file headers only (faster; does not find truncated files)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_manifest)

    p = sub.add_parser(
        "check", help="report every unusable file, missing transcript and bad phone alignment"
    )
    p.add_argument("path", type=Path, help="manifest directory, LibriSpeech root or subset")
    p.add_argument("--splits", nargs="*")
    p.add_argument("--min-frames", type=int, default=100)
    p.add_argument("--audio-only", action="store_true", help="do not require transcripts")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_check)

    p = sub.add_parser("synth", help="synthesise a labelled corpus (LibriSpeech layout)")
    p.add_argument("out", type=Path)
    p.add_argument("--hours", type=float, default=1.0, help="hours of training audio")
    p.add_argument("--speakers", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", choices=("grammar", "pydoc", "wordnet"), default="grammar")
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--no-flite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_command(f"birq-data {args.command}", args, lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
