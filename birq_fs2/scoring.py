"""Word and character error rates with jiwer, after LibriSpeech-style normalisation
(upper case, letters and apostrophes, single spaces) of both sides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from birq_fs2.data.vocab import normalize_transcript


@dataclass
class ErrorCounts:
    """Edit counts that add up across batches and processes; rates in percent."""

    word_errors: int = 0
    ref_words: int = 0
    char_errors: int = 0
    ref_chars: int = 0

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.word_errors + other.word_errors,
            self.ref_words + other.ref_words,
            self.char_errors + other.char_errors,
            self.ref_chars + other.ref_chars,
        )

    @property
    def wer(self) -> float:
        return 100.0 * self.word_errors / max(self.ref_words, 1)

    @property
    def cer(self) -> float:
        return 100.0 * self.char_errors / max(self.ref_chars, 1)


def alignments(
    refs: Sequence[str], hyps: Sequence[str]
) -> tuple[jiwer.WordOutput, jiwer.CharacterOutput]:
    """jiwer's word and character alignments of normalised (reference, hypothesis) pairs;
    pairs whose normalised reference is empty cannot be scored and raise ValueError."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses.")
    refs = [normalize_transcript(r) for r in refs]
    hyps = [normalize_transcript(h) for h in hyps]
    if not all(refs):
        raise ValueError("A reference transcript is empty after normalisation.")
    return jiwer.process_words(refs, hyps), jiwer.process_characters(refs, hyps)


def count_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word and character edit counts of `alignments`; no pairs: no errors."""
    if not refs and not hyps:
        return ErrorCounts()
    words, chars = alignments(refs, hyps)
    return ErrorCounts(
        word_errors=words.substitutions + words.deletions + words.insertions,
        ref_words=words.hits + words.substitutions + words.deletions,
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        ref_chars=chars.hits + chars.substitutions + chars.deletions,
    )
