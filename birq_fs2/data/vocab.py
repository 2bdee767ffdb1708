"""Character vocabulary for CTC: blank, padding, word boundary, apostrophe, letters.

Built from the training transcripts and saved next to the data (``dict.ltr.txt``, the
wav2vec2/fairseq format: one symbol and a count per line), so that fine-tuning and
decoding use the same indices. Index 0 is the CTC blank, as fairseq2's CTC loss expects.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

BLANK, PAD, WORD_BOUNDARY = "<blank>", "<pad>", "|"
_SPECIALS = (BLANK, PAD)
_NOT_ALLOWED = re.compile(r"[^A-Z' ]")
_SPACES = re.compile(r"\s+")
_ALPHABET = (*"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'", WORD_BOUNDARY)


def normalize_transcript(text: str) -> str:
    """LibriSpeech-style normalisation: upper case, letters and apostrophes, single spaces."""
    text = _NOT_ALLOWED.sub(" ", text.upper())
    return _SPACES.sub(" ", text).strip()


class CharVocabulary:
    """Letters + apostrophe + word boundary, with blank at 0 and padding at 1."""

    def __init__(self, symbols: Sequence[str]) -> None:
        if tuple(symbols[:2]) != _SPECIALS:
            raise ValueError(f"A vocabulary starts with {_SPECIALS}, got {tuple(symbols[:2])}.")
        if len(set(symbols)) != len(symbols):
            raise ValueError("Vocabulary symbols must be unique.")
        self.symbols = list(symbols)
        self._index = {s: i for i, s in enumerate(self.symbols)}

    blank_idx = 0
    pad_idx = 1

    def __len__(self) -> int:
        return len(self.symbols)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.symbols == other.symbols

    @classmethod
    def build(cls, transcripts: Iterable[str]) -> CharVocabulary:
        """Every symbol that normalisation can produce (A-Z, apostrophe, word boundary),
        not only those seen in `transcripts`: a letter missing from a small training set
        would otherwise make every dev or test utterance that has it unusable."""
        counts: Counter[str] = Counter(_ALPHABET)
        for text in transcripts:
            counts.update(normalize_transcript(text).replace(" ", WORD_BOUNDARY))
        return cls([*_SPECIALS, *sorted(counts)])

    def encode(self, text: str) -> torch.Tensor:
        """Normalised text -> int64 ids; characters outside the vocabulary raise."""
        chars = normalize_transcript(text).replace(" ", WORD_BOUNDARY)
        try:
            return torch.tensor([self._index[c] for c in chars], dtype=torch.int64)
        except KeyError as ex:
            raise ValueError(
                f"Character {ex.args[0]!r} of {text!r} is not in the vocabulary."
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (already CTC-collapsed, blanks removed) -> words."""
        chars = [self.symbols[i] for i in ids if i >= len(_SPECIALS)]
        return "".join(chars).replace(WORD_BOUNDARY, " ").strip()

    def save(self, path: Path) -> None:
        """fairseq ``dict.ltr.txt`` format; the two specials are implied, not written."""
        path.write_text(
            "".join(f"{s} 1\n" for s in self.symbols[len(_SPECIALS) :]), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: Path) -> CharVocabulary:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"No character vocabulary at {path}.") from None
        symbols = [line.split()[0] for line in lines if line.strip()]
        return cls([*_SPECIALS, *symbols])
