"""Scoring a fine-tuned CTC model on a labelled split (the work behind ``birq-evaluate``):
greedy CTC decoding, WER and CER with jiwer after LibriSpeech-style normalisation (upper
case, punctuation removed).

Files that cannot be decoded and utterances without a transcript are listed in the
summary and left out of the score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from birq_fs2.data.corpus import CorpusError, Utterance, find_splits, load_split
from birq_fs2.frames import fbank_seconds
from birq_fs2.inference import Transcriber
from birq_fs2.scoring import ErrorCounts, count_errors


def resolve_split(data: Path, split: str | None) -> tuple[str, list[Utterance]]:
    """(split name, utterances) of `split`, or of the only split, of a manifest directory,
    a LibriSpeech root or a LibriSpeech subset folder."""
    if not data.is_dir():
        raise CorpusError(f"{data}: no such data directory.")
    if split is not None:
        return split, load_split(data, split)
    root, splits = find_splits(data)
    if len(splits) != 1:
        raise CorpusError(
            f"{data}: name the split to evaluate with --split (found: {', '.join(splits) or 'none'})."
        )
    return splits[0], load_split(root, splits[0])


def evaluate(
    model: str,
    data: Path,
    split: str | None,
    out_dir: Path | None,
    device: torch.device,
    *,
    progress: bool = False,
) -> tuple[dict, int]:
    """Score `model` on a split; returns (summary, number of utterances left out). Writes
    ``hypotheses.tsv`` and ``summary.json`` under `out_dir` when given."""
    started = time.perf_counter()
    split, utts = resolve_split(data, split)
    transcriber = Transcriber(model, device=device)
    problems: list[dict[str, str]] = []
    labelled = []
    for u in utts:
        if u.text is None or not u.text.strip():
            problems.append({"path": str(u.path), "problem": "no transcript"})
        else:
            labelled.append(u)
    rows, total, audio_frames = [], ErrorCounts(), 0
    by_path = {str(u.path): u for u in labelled}
    # Longest first: batches of similar lengths pad little, and a too-large batch fails early.
    order = sorted(labelled, key=lambda u: -(u.num_samples or _file_size(u.path)))
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        job = bar.add_task(f"decoding {split}", total=len(order))
        transcripts = list(
            _advancing(transcriber.transcribe([str(u.path) for u in order]), bar, job)
        )
    for t in transcripts:
        if t.error is not None:
            problems.append({"path": t.path, "problem": t.error.removeprefix(f"{t.path}: ")})
            continue
        u = by_path[t.path]
        counts = count_errors([u.text], [t.text])
        rows.append((u.id, counts.word_errors, counts.ref_words, u.text, t.text))
        total += counts  # jiwer's corpus counts are the sums of its per-utterance ones
        audio_frames += t.num_frames
    if not rows:
        raise CorpusError(f"{data} ({split}): no utterance could be scored.")
    seconds = time.perf_counter() - started
    summary = {
        "model": model, "data": str(data), "split": split, "num_utterances": len(rows),
        "wer": round(total.wer, 2), "cer": round(total.cer, 2),
        "word_errors": total.word_errors, "ref_words": total.ref_words,
        "char_errors": total.char_errors, "ref_chars": total.ref_chars,
        "audio_hours": round(fbank_seconds(audio_frames) / 3600, 4), "seconds": round(seconds, 1),
        "skipped": problems,
    }  # fmt: skip
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "hypotheses.tsv").open("w", encoding="utf-8") as f:
            f.write("id\tword_errors\tref_words\treference\thypothesis\n")
            for row in sorted(rows):
                f.write("\t".join(map(str, row)) + "\n")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, len(problems)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _advancing(items, bar, job):
    for item in items:
        bar.advance(job)
        yield item
