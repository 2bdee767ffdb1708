"""Up-front corpus checks: everything the training pipeline would skip, found first."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import soundfile

from birq_fs2.frames import SAMPLE_RATE, num_fbank_frames

from .audio import AudioError, AudioLoader
from .corpus import Utterance


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # unreadable | corrupt | empty | truncated | too_short | wrong_rate | stereo | missing_transcript
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
