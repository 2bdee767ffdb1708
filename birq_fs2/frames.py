"""The time grid, defined once: 16 kHz audio, a 25 ms / 10 ms Kaldi filterbank, and
encoder frames that stack `fbank_stride` filterbank frames (4 by default: 40 ms).

Everything that converts between samples, fbank frames, encoder frames and seconds
(messages, minimum lengths, hours of audio, mask spans) derives from these, so another
stacking factor changes every one of them together.
"""

from __future__ import annotations

from typing import Final

SAMPLE_RATE: Final = 16_000
FBANK_HOP: Final = 160
"""Samples between filterbank frames (10 ms)."""
FBANK_WINDOW: Final = 400
"""Samples per filterbank frame (25 ms)."""
FBANK_HOP_SECONDS: Final = FBANK_HOP / SAMPLE_RATE
FBANK_STRIDE: Final = 4
"""Filterbank frames stacked into one encoder frame by the birq archs (40 ms)."""
NUM_MEL_BINS: Final = 80


def num_fbank_frames(num_samples: int) -> int:
    """Filterbank frames of `num_samples` 16 kHz samples (Kaldi, no padding)."""
    return 0 if num_samples < FBANK_WINDOW else 1 + (num_samples - FBANK_WINDOW) // FBANK_HOP


def fbank_seconds(num_frames: int) -> float:
    """Duration of `num_frames` filterbank frames."""
    return num_frames * FBANK_HOP_SECONDS


def encoder_frame_ms(fbank_stride: int = FBANK_STRIDE) -> float:
    """Duration of one encoder frame in milliseconds."""
    return 1000 * fbank_stride * FBANK_HOP_SECONDS


def min_fbank_frames(fbank_stride: int = FBANK_STRIDE) -> int:
    """The shortest input that gives the encoder two frames (one frame has no context)."""
    return 2 * fbank_stride
