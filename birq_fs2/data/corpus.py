"""Where utterances come from: LibriSpeech directories and wav2vec2/fairseq manifests.

Both resolve to a list of `Utterance` records (absolute path, sample count, transcript,
speaker) that the fairseq2 pipeline (`pipeline.py`) reads.

- LibriSpeech: ``<root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac`` with
  ``<speaker>-<chapter>.trans.txt`` next to the audio.
- Manifests: ``<dir>/<split>.tsv`` (line 1: absolute audio root; then
  ``relative/path<TAB>num_samples``), ``<split>.wrd`` (one transcript per row) and
  ``<split>.ltr`` (letters, ``|`` between words), ``dict.ltr.txt`` (the vocabulary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile

from .vocab import WORD_BOUNDARY, CharVocabulary, normalize_transcript

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")


class CorpusError(ValueError):
    """A corpus that cannot be read as asked; the message names the path."""


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    num_samples: int | None = None
    text: str | None = None
    speaker: str | None = None


def _read_transcripts(path: Path, problems: list[tuple[str, str]] | None) -> dict[str, str]:
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as ex:
        msg = f"not UTF-8 ({ex.reason} at byte {ex.start}); decoded with replacement characters"
        log.warning("%s: %s", path, msg)
        if problems is not None:
            problems.append((str(path), msg))
        raw = path.read_bytes().decode("utf-8", errors="replace")
    out = {}
    for line in raw.splitlines():
        if line.strip():
            utt_id, _, text = line.strip().partition(" ")
            out[utt_id] = text
    return out


def is_librispeech_subset(path: Path) -> bool:
    return any(path.glob("*/*/*.trans.txt")) or any(path.glob("*/*/*.flac"))


def find_splits(path: Path) -> tuple[Path, list[str]]:
    """(root, split names) of a manifest directory (its ``*.tsv``), a LibriSpeech subset
    folder (its parent and its own name) or a LibriSpeech root (its subset folders): the
    arguments `load_split` takes."""
    path = Path(path)
    manifests = sorted(p.stem for p in path.glob("*.tsv"))
    if manifests:
        return path, manifests
    if is_librispeech_subset(path):
        return path.parent, [path.name]
    if not path.is_dir():
        return path, []
    return path, sorted(p.name for p in path.iterdir() if p.is_dir() and is_librispeech_subset(p))


def scan_librispeech(
    subset_dir: Path, *, problems: list[tuple[str, str]] | None = None
) -> list[Utterance]:
    """All audio files of one LibriSpeech subset, with their transcripts (None if missing).
    Unreadable transcript files are appended to `problems` as (path, message)."""
    subset_dir = Path(subset_dir).resolve()
    if not subset_dir.is_dir():
        raise CorpusError(f"{subset_dir}: not a directory.")
    utts = []
    for chapter_dir in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
        speaker = chapter_dir.parent.name
        trans_file = chapter_dir / f"{speaker}-{chapter_dir.name}.trans.txt"
        texts = _read_transcripts(trans_file, problems) if trans_file.exists() else {}
        for audio in sorted(p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            utts.append(Utterance(audio.stem, audio, None, texts.get(audio.stem), speaker))
    if not utts:
        raise CorpusError(f"{subset_dir}: no .flac/.wav files in <speaker>/<chapter>/ folders.")
    return utts


def header_num_samples(path: Path) -> int:
    """Sample count from the file header (no decoding)."""
    return soundfile.info(str(path)).frames


def write_manifest(utts: Sequence[Utterance], dest: Path, split: str, root: Path) -> None:
    """``<split>.tsv`` (+ ``.wrd``/``.ltr`` when every utterance has a transcript)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    lines = [str(root)]
    for u in utts:
        n = u.num_samples if u.num_samples is not None else header_num_samples(u.path)
        lines.append(f"{u.path.resolve().relative_to(root)}\t{n}")
    (dest / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if all(u.text is not None for u in utts):
        words = [normalize_transcript(u.text or "") for u in utts]
        (dest / f"{split}.wrd").write_text("".join(w + "\n" for w in words), encoding="utf-8")
        letters = [" ".join(w.replace(" ", WORD_BOUNDARY)) + f" {WORD_BOUNDARY}" for w in words]
        (dest / f"{split}.ltr").write_text("".join(s + "\n" for s in letters), encoding="utf-8")


def read_manifest(manifest_dir: Path, split: str) -> list[Utterance]:
    tsv = Path(manifest_dir) / f"{split}.tsv"
    if not tsv.exists():
        splits = sorted(p.stem for p in Path(manifest_dir).glob("*.tsv"))
        raise CorpusError(f"{tsv}: no such manifest (splits here: {', '.join(splits) or 'none'}).")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise CorpusError(f"{tsv}: empty manifest (line 1 must be the audio root).")
    root = Path(lines[0].strip())
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    texts: list[str | None] = [None] * len(rows)
    wrd = tsv.with_suffix(".wrd")
    if wrd.exists():
        words = wrd.read_text(encoding="utf-8").splitlines()
        if len(words) != len(rows):
            raise CorpusError(
                f"{wrd}: {len(words)} transcripts for {len(rows)} rows of {tsv.name}."
            )
        texts = list(words)
    utts = []
    for lineno, (row, text) in enumerate(zip(rows, texts, strict=True), start=2):
        if len(row) != 2 or not row[1].strip().isdigit():
            raise CorpusError(
                f"{tsv}:{lineno}: expected 'relative/path<TAB>num_samples', got {row!r}."
            )
        path = root / row[0]
        utts.append(Utterance(Path(row[0]).stem, path, int(row[1]), text, path.parent.parent.name))
    return utts


def load_split(path: Path, split: str) -> list[Utterance]:
    """One split of a manifest directory (``<split>.tsv``) or of a LibriSpeech root
    (``<split>/`` subset folder, or the subset folder itself)."""
    path = Path(path)
    if (path / f"{split}.tsv").exists():
        return read_manifest(path, split)
    if (path / split).is_dir() and is_librispeech_subset(path / split):
        return scan_librispeech(path / split)
    if path.is_dir() and is_librispeech_subset(path) and path.name == split:
        return scan_librispeech(path)
    raise CorpusError(
        f"{path}: found neither a manifest '{split}.tsv' nor a LibriSpeech subset folder '{split}/'."
    )


def load_vocabulary(path: Path, vocabulary_split: str = "train") -> CharVocabulary:
    """The vocabulary saved with the data (``dict.ltr.txt``), or built from the training
    transcripts of a LibriSpeech root and saved there when the folder is writable."""
    path = Path(path)
    saved = path / "dict.ltr.txt"
    if saved.exists():
        return CharVocabulary.load(saved)
    utts = load_split(path, vocabulary_split)
    texts = [u.text for u in utts if u.text is not None]
    if not texts:
        raise CorpusError(
            f"{path}: no transcripts in split '{vocabulary_split}' to build a vocabulary from."
        )
    vocab = CharVocabulary.build(texts)
    try:
        vocab.save(saved)
    except OSError:
        log.warning(
            "%s is not writable; the vocabulary is rebuilt from transcripts each time.", path
        )
    return vocab
