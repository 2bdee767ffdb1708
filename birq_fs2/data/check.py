"""Up-front corpus checks: everything the training pipeline would skip, found first."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile

from birq_fs2.frames import SAMPLE_RATE, num_fbank_frames

from .alignments import (
    END_TOLERANCE,
    AlignmentError,
    alignment_files_next_to,
    find_alignment_files,
    parse_line,
)
from .audio import AudioError, AudioLoader
from .corpus import AUDIO_SUFFIXES, Utterance


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # unreadable | corrupt | empty | truncated | too_short | wrong_rate | stereo | missing_transcript
    # | bad_alignment | orphan_alignment | alignment_length (path: <file>:<line> for a line)
    message: str

    def __str__(self) -> str:
        return f"{self.kind:18s} {self.path}: {self.message}"


def check_utterances(
    utterances: Sequence[Utterance],
    *,
    min_frames: int = 100,
    need_transcripts: bool = True,
    on_progress: Callable[[], None] | None = None,
) -> list[Problem]:
    """Decode every file with the pipeline's own loader and report each problem."""
    loader = AudioLoader(cached_fd_count=1)
    problems: list[Problem] = []
    for u in utterances:
        path = str(u.path)
        if need_transcripts and not (u.text or "").strip():
            problems.append(Problem(path, "missing_transcript", "no transcript line for this file"))
        try:
            decoded = loader(u.path)
        except AudioError as ex:
            problems.append(Problem(path, ex.kind, ex.problem))
        else:
            try:
                header = soundfile.info(path).frames
            except RuntimeError:
                header = decoded.source_samples
            if decoded.source_samples < header:
                problems.append(
                    Problem(
                        path,
                        "truncated",
                        f"header says {header} samples, {decoded.source_samples} decode",
                    )
                )
            if decoded.source_rate != SAMPLE_RATE:
                problems.append(
                    Problem(
                        path,
                        "wrong_rate",
                        f"{decoded.source_rate} Hz (the pipeline resamples to {SAMPLE_RATE})",
                    )
                )
            if decoded.source_channels > 1:
                problems.append(
                    Problem(
                        path,
                        "stereo",
                        f"{decoded.source_channels} channels (the pipeline averages them)",
                    )
                )
            frames = num_fbank_frames(len(decoded.waveform))
            if frames < min_frames:
                problems.append(
                    Problem(path, "too_short", f"{frames} fbank frames < min_frames = {min_frames}")
                )
            if u.num_samples is not None and u.num_samples != decoded.source_samples:
                problems.append(
                    Problem(
                        path,
                        "truncated",
                        f"manifest says {u.num_samples} samples, {decoded.source_samples} decode",
                    )
                )
        if on_progress is not None:
            on_progress()
    return problems


def header_problems(utterances: Sequence[Utterance]) -> list[Problem]:
    """Unreadable and empty files, from their headers alone (no decoding)."""
    problems = []
    for u in utterances:
        path = str(u.path)
        if not u.path.exists():
            problems.append(Problem(path, "unreadable", "cannot be read: no such file"))
        elif u.path.stat().st_size == 0:
            problems.append(Problem(path, "empty", "empty file (0 bytes)"))
        else:
            try:
                if soundfile.info(path).frames == 0:
                    problems.append(Problem(path, "empty", "no audio samples"))
            except RuntimeError as ex:
                problems.append(Problem(path, "corrupt", f"header cannot be read ({ex})"))
    return problems


def alignment_files(utterances: Iterable[Utterance], subset_dir: Path | None = None) -> list[Path]:
    """The ``*.phones.txt`` next to the utterances' audio, and under `subset_dir`
    (``<spk>/<chapter>/``) when it is a LibriSpeech subset; sorted."""
    files = set(alignment_files_next_to(u.path for u in utterances))
    if subset_dir is not None:
        files.update(find_alignment_files(subset_dir))
    return sorted(files)


def check_alignment_file(path: Path, *, tolerance: float = END_TOLERANCE) -> list[Problem]:
    """Every problem of one alignment file (format: `birq_fs2.data.alignments`), each
    named ``<file>:<line>``: a malformed or non-monotonic line, a duplicate or unsorted
    id, an utterance with no audio file next to it, a last END more than `tolerance`
    seconds from its audio's duration."""
    try:
        raw = path.read_bytes()
    except OSError as ex:
        return [Problem(str(path), "bad_alignment", f"unreadable ({ex.strerror})")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        lineno = raw[: ex.start].count(b"\n") + 1
        where = f"{path}:{lineno}"
        return [Problem(where, "bad_alignment", f"not UTF-8 ({ex.reason} at byte {ex.start})")]
    if not text:
        return [Problem(str(path), "bad_alignment", "empty file (write none for no alignment)")]
    problems: list[Problem] = []
    lines = text.splitlines()
    if not text.endswith("\n"):
        problems.append(Problem(f"{path}:{len(lines)}", "bad_alignment", "no newline at the end"))
    seen: dict[str, int] = {}
    previous = ""
    for lineno, line in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        try:
            utt_id, segments = parse_line(line, path, lineno)
        except AlignmentError as ex:
            problems.append(Problem(where, "bad_alignment", ex.problem))
            continue
        if utt_id in seen:
            problems.append(
                Problem(where, "bad_alignment", f"{utt_id}: duplicate id (line {seen[utt_id]})")
            )
            continue
        seen[utt_id] = lineno
        if utt_id < previous:
            problems.append(
                Problem(where, "bad_alignment", f"{utt_id}: after {previous} (unsorted)")
            )
        previous = max(previous, utt_id)
        audio = [path.parent / f"{utt_id}{suffix}" for suffix in AUDIO_SUFFIXES]
        audio = [a for a in audio if a.is_file()]
        if not audio:
            problems.append(
                Problem(
                    where,
                    "orphan_alignment",
                    f"{utt_id}: no audio file ({utt_id}.flac or .wav) next to it",
                )
            )
            continue
        try:
            info = soundfile.info(str(audio[0]))
        except RuntimeError:
            continue  # the audio check reports the file itself
        duration = info.frames / info.samplerate
        end = segments[-1].end
        if abs(end - duration) > tolerance:
            problems.append(
                Problem(
                    where,
                    "alignment_length",
                    f"{utt_id}: last phone ends at {end:.3f} s, the audio lasts {duration:.3f} s "
                    f"(more than {tolerance * 1000:.0f} ms apart)",
                )
            )
    return problems


def check_alignments(files: Iterable[Path], *, tolerance: float = END_TOLERANCE) -> list[Problem]:
    return [p for f in files for p in check_alignment_file(Path(f), tolerance=tolerance)]
