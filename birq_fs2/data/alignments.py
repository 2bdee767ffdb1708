"""Phone alignments of a corpus: ``<spk>-<chapter>.phones.txt`` next to the transcript.

``birq-data synth`` writes one file per chapter, next to ``<spk>-<chapter>.trans.txt``,
holding the phone segmentation of every utterance whose engine gave one; a chapter with
no aligned utterance has no file. The format, line-oriented UTF-8::

    UTT_ID PHONE:START:END PHONE:START:END ...

- one line per aligned utterance, lines sorted by utterance id, no duplicate id, no empty
  line; the file ends with a newline; tokens are separated by single spaces;
- START and END are seconds with exactly 3 decimals (``%.3f``); the segments are
  contiguous and in order: the first START is ``0.000``, each START is the previous END,
  and START < END (no zero-length segment);
- the last END is the duration of the utterance's audio (its sample count / 16000,
  rounded; ``birq-data check`` allows 20 ms);
- PHONE is the engine's phone name: silences (flite's ``pau``, espeak-ng's ``_``
  pauses, ...) are ``sil``; flite gives lower-case CMU phones (``hh``, ``ax``);
  espeak-ng gives its phoneme mnemonics (case matters: ``D`` is not ``d``) with the
  length mark ``:`` written ``ː`` (``i:`` -> ``iː``). A name is never empty and holds
  no space and no ``:``. The two engines' inventories differ; ``SPEAKERS.TXT`` says
  which engine spoke each speaker.

`read_alignments` checks all of this except the tie to the audio duration, which
``birq-data check`` tests against the audio files (`birq_fs2.data.check`).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from birq_fs2.data.corpus import CorpusError, load_split

ALIGNMENT_SUFFIX = ".phones.txt"
SILENCE = "sil"
END_TOLERANCE = 0.020
"""Seconds the last END may differ from the audio's duration (``birq-data check``)."""

_TIME = re.compile(r"\d+\.\d{3}")


@dataclass(frozen=True)
class PhoneSegment:
    phone: str
    start: float  # seconds
    end: float  # seconds


class AlignmentError(ValueError):
    """A malformed alignment file; the message is ``<path>:<line>: <problem>``."""

    def __init__(self, path: str | Path, lineno: int, problem: str) -> None:
        super().__init__(f"{path}:{lineno}: {problem}")
        self.path = str(path)
        self.lineno = lineno
        self.problem = problem


def _check_phone(phone: str) -> str | None:
    if not phone:
        return "empty phone name"
    if ":" in phone or any(c.isspace() for c in phone):
        return f"phone name {phone!r} holds ':' or a space"
    return None


def format_line(utt_id: str, segments: Sequence[PhoneSegment]) -> str:
    """One line (without its newline) for `segments`, which must already be contiguous,
    start at 0 and have positive lengths at millisecond resolution."""
    if not segments:
        raise ValueError(f"{utt_id}: no segments")
    if not utt_id or any(c.isspace() for c in utt_id):
        raise ValueError(f"bad utterance id {utt_id!r}")
    tokens = [utt_id]
    previous = "0.000"
    for seg in segments:
        if (problem := _check_phone(seg.phone)) is not None:
            raise ValueError(f"{utt_id}: {problem}")
        start, end = f"{seg.start:.3f}", f"{seg.end:.3f}"
        if start != previous or float(end) <= float(start):
            raise ValueError(f"{utt_id}: segment {seg} does not follow {previous} or is empty")
        tokens.append(f"{seg.phone}:{start}:{end}")
        previous = end
    return " ".join(tokens)


def parse_line(line: str, path: str | Path = "<string>", lineno: int = 1):
    """(utterance id, segments) of one line; AlignmentError names `path` and `lineno`."""
    line = line.rstrip("\n")
    utt_id, sep, body = line.partition(" ")
    if not utt_id:
        raise AlignmentError(path, lineno, "empty line" if not line else "line starts with a space")
    if not sep or not body:
        raise AlignmentError(path, lineno, f"{utt_id}: no phone segments")
    segments: list[PhoneSegment] = []
    previous = "0.000"
    for i, token in enumerate(body.split(" "), 1):
        parts = token.split(":")
        if len(parts) != 3:
            raise AlignmentError(
                path, lineno, f"{utt_id}: token {i} {token!r} is not PHONE:START:END"
            )
        phone, start, end = parts
        if (problem := _check_phone(phone)) is not None:
            raise AlignmentError(path, lineno, f"{utt_id}: token {i} {token!r}: {problem}")
        if not (_TIME.fullmatch(start) and _TIME.fullmatch(end)):
            raise AlignmentError(
                path, lineno, f"{utt_id}: token {i} {token!r}: times need 3 decimals (%.3f)"
            )
        if start != previous:
            what = "overlaps" if float(start) < float(previous) else "leaves a gap after"
            raise AlignmentError(
                path,
                lineno,
                f"{utt_id}: token {i} {token!r} starts at {start}, {what} the previous "
                f"end {previous}" + (" (the first START must be 0.000)" if i == 1 else ""),
            )
        if float(end) <= float(start):
            raise AlignmentError(
                path, lineno, f"{utt_id}: token {i} {token!r}: times not increasing"
            )
        segments.append(PhoneSegment(phone, float(start), float(end)))
        previous = end
    return utt_id, segments


def read_alignments(path: str | Path) -> dict[str, list[PhoneSegment]]:
    """Every line of one ``*.phones.txt``: utterance id -> its segments."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as ex:
        lineno = path.read_bytes()[: ex.start].count(b"\n") + 1
        raise AlignmentError(path, lineno, f"not UTF-8 ({ex.reason})") from None
    out: dict[str, list[PhoneSegment]] = {}
    seen_at: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        utt_id, segments = parse_line(line, path, lineno)
        if utt_id in out:
            raise AlignmentError(
                path, lineno, f"{utt_id}: duplicate utterance id (first on line {seen_at[utt_id]})"
            )
        out[utt_id] = segments
        seen_at[utt_id] = lineno
    return out


def write_alignments(path: str | Path, mapping: Mapping[str, Sequence[PhoneSegment]]) -> None:
    """One file, lines sorted by utterance id (the same mapping gives the same bytes)."""
    lines = [format_line(utt_id, mapping[utt_id]) for utt_id in sorted(mapping)]
    if not lines:
        raise ValueError(f"{path}: no aligned utterance (a chapter without one gets no file)")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def find_alignment_files(split_dir: str | Path) -> list[Path]:
    """The ``*.phones.txt`` of a LibriSpeech-layout subset (``<spk>/<chapter>/``), sorted."""
    return sorted(Path(split_dir).glob(f"*/*/*{ALIGNMENT_SUFFIX}"))


def alignment_files_next_to(audio_files: Iterable[str | Path]) -> list[Path]:
    """The ``*.phones.txt`` in the folders of `audio_files` (a chapter's file lies next
    to its audio), sorted."""
    folders = {Path(f).parent for f in audio_files}
    return sorted(f for d in folders for f in d.glob(f"*{ALIGNMENT_SUFFIX}"))


def load_alignments(files: Iterable[str | Path]) -> dict[str, list[PhoneSegment]]:
    """All alignments of `files`; AlignmentError on a bad file or an id in two files."""
    out: dict[str, list[PhoneSegment]] = {}
    where: dict[str, Path] = {}
    for f in map(Path, files):
        for lineno, (utt_id, segments) in enumerate(read_alignments(f).items(), 1):
            if utt_id in out:
                raise AlignmentError(f, lineno, f"{utt_id}: also aligned in {where[utt_id]}")
            out[utt_id] = segments
            where[utt_id] = f
    return out


def load_split_alignments(split_dir: str | Path) -> dict[str, list[PhoneSegment]]:
    """All alignments of a subset; AlignmentError on a bad file or an id in two files."""
    return load_alignments(find_alignment_files(split_dir))


def frame_phones(
    segments: Sequence[PhoneSegment], frame_seconds: float, num_frames: int
) -> list[str]:
    """The phone of each of `num_frames` frames of `frame_seconds`: the segment that
    covers the frame's centre ``(i + 0.5) * frame_seconds`` (a segment covers
    [start, end)). A centre at or past the last END (rounding at the end of the audio)
    gets the last segment's phone, which is ``sil`` when the engine ends on a pause."""
    if not segments:
        raise ValueError("no segments")
    ends = [s.end for s in segments]
    last = len(segments) - 1
    return [
        segments[min(bisect_right(ends, (i + 0.5) * frame_seconds), last)].phone
        for i in range(num_frames)
    ]


def segments_from_ends(phones: Iterable[str], ends: Sequence[float]) -> list[PhoneSegment]:
    """Segments at millisecond resolution from phone names and their end times in seconds
    (the first phone starts at 0): ends are rounded to ``%.3f``, a segment that rounds to
    zero length (or ends before its start) is dropped and its neighbours meet, and
    adjacent silences merge into one."""
    phones = list(phones)
    if len(ends) != len(phones):
        raise ValueError(f"{len(phones)} phones but {len(ends)} end times")
    ms = [round(t * 1000) for t in ends]
    out: list[tuple[str, int, int]] = []
    for phone, b in zip(phones, ms, strict=True):
        a = out[-1][2] if out else 0
        if b <= a:
            continue
        if out and phone == SILENCE and out[-1][0] == SILENCE:
            out[-1] = (SILENCE, out[-1][1], b)
        else:
            out.append((phone, a, b))
    return [PhoneSegment(p, a / 1000, b / 1000) for p, a, b in out]


def aligned_utterances(data: Path, split: str, limit: int | None = None) -> tuple[list, dict]:
    """The utterances of a split that have phone alignments (at most `limit`, in the
    split's order) and every alignment of their chapters; CorpusError naming the corpus
    when there are none."""
    utterances = load_split(data, split)
    alignments = load_alignments(alignment_files_next_to(u.path for u in utterances))
    aligned = [u for u in utterances if u.id in alignments][:limit]
    if not aligned:
        raise CorpusError(
            f"{data}: no phone alignments (*.phones.txt next to the audio) in split '{split}'; "
            "birq-data synth writes them."
        )
    return aligned, alignments
