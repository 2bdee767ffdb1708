"""Audio -> 16 kHz mono waveform -> log-mel filterbank, with errors that name the file.

Decoding is fairseq2's `AudioDecoder` (libsndfile: WAV, FLAC, OGG, ...) on a memory block
from fairseq2's `FileMapper`; resampling is `torchaudio.functional.resample` (torchaudio's
file I/O is not used); the filterbank is fairseq2's Kaldi-compatible
`WaveformToFbankConverter`. The same functions serve the training pipeline and
`birq-data check`, so a file that `check` passes is a file the pipeline reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torchaudio.functional as AF
from fairseq2.data._memory import MemoryBlock
from fairseq2.data.audio import AudioDecoder, WaveformToFbankConverter
from fairseq2.data.data_pipeline import FileMapper
from fairseq2.utils.validation import ValidationResult

from birq_fs2.frames import NUM_MEL_BINS, SAMPLE_RATE
from birq_fs2.seeds import derive_seed


class AudioError(ValueError):
    """An audio file that cannot be used; ``str()`` is '<path>: <problem>'."""

    def __init__(self, path: Path | str, problem: str, kind: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.kind = str(path), problem, kind


@dataclass
class Decoded:
    waveform: torch.Tensor  # (S,) float32 in [-1, 1], mono, SAMPLE_RATE
    source_rate: int
    source_channels: int
    source_samples: int


class AudioLoader:
    """Reads, decodes, down-mixes and resamples; one instance per pipeline worker."""

    def __init__(self, cached_fd_count: int = 100) -> None:
        self._mapper = FileMapper(cached_fd_count=cached_fd_count)
        self._decoder = AudioDecoder(keepdim=True, dtype=torch.float32)

    def __call__(self, path: Path | str) -> Decoded:
        try:
            block: MemoryBlock = self._mapper(str(path))["data"]
        except Exception as ex:  # noqa: BLE001 - fairseq2n raises ByteStreamError and others
            raise AudioError(path, f"cannot be read ({ex})", "unreadable") from None
        if len(block) == 0:
            raise AudioError(path, "empty file (0 bytes)", "empty")
        try:
            out = self._decoder(block)
        except Exception as ex:  # noqa: BLE001 - ValueError for bad headers, RuntimeError mid-stream
            cause = ex.__cause__ or (ex if not isinstance(ex, ValueError) else None)
            detail = f" ({cause})" if cause else ""
            raise AudioError(
                path, f"cannot be decoded as audio: corrupt or truncated{detail}", "corrupt"
            ) from None
        waveform, rate = out["waveform"], int(out["sample_rate"])
        num_samples, channels = waveform.shape
        if num_samples == 0:
            raise AudioError(path, "decodes to 0 samples", "empty")
        mono = waveform.mean(dim=1) if channels > 1 else waveform[:, 0]
        if rate != SAMPLE_RATE:
            mono = AF.resample(mono, rate, SAMPLE_RATE)
        return Decoded(mono.contiguous(), rate, channels, num_samples)


def utterance_seed(seed: int, utt_id: str, purpose: str) -> int:
    """A 63-bit seed from (seed, utterance, purpose): batch- and order-independent, so a
    resumed or re-sharded run draws the same dither and crops for the same utterance."""
    return derive_seed(seed, utt_id, purpose) >> 1


@dataclass(frozen=True)
class FbankConfig:
    """The feature settings a model is trained with and must be fed with at inference: the
    recipes' ``dataset.pipeline.features`` section, carried by exported cards as their
    ``features`` field, read back by fine-tuning, `birq-transcribe`, `birq-evaluate` and
    `birq-labels`. One definition of the defaults and one check (`validate`)."""

    num_mel_bins: int = NUM_MEL_BINS
    """Log-mel channels per 10 ms frame; the model's `encoder_config.num_fbank_channels`
    must equal it (`feature_mismatch`)."""
    normalize: Literal["utterance", "none"] = "utterance"
    """"utterance": each utterance's mel bins scaled to mean 0 and variance 1 over its own
    frames (population variance), independent of what it is batched with; "none"."""
    dither: float = 1e-4
    """Std of Gaussian noise added to the waveform (in [-1, 1] units) before the
    filterbank, seeded per utterance: synthetic speech has runs of exact digital zeros
    whose log energy would sit at the floor."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> ValidationResult:
        result = ValidationResult()
        if not isinstance(self.num_mel_bins, int) or self.num_mel_bins < 1:
            result.add_error(f"`num_mel_bins` must be an integer >= 1, got {self.num_mel_bins!r}.")
        if self.normalize not in ("utterance", "none"):
            result.add_error(f"`normalize` must be 'utterance' or 'none', got {self.normalize!r}.")
        if not isinstance(self.dither, (int, float)) or self.dither < 0:
            result.add_error(f"`dither` must be a number >= 0, got {self.dither!r}.")
        return result

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "features") -> FbankConfig:
        """The settings of a card's ``features`` field or a run's saved section (other
        keys are ignored); anything `validate` refuses names `source`."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: expected a mapping, got {values!r}.")
        kwargs = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        if isinstance(kwargs.get("dither"), str):  # YAML 1.1 reads "1e-4" as a string
            try:
                kwargs["dither"] = float(kwargs["dither"])
            except ValueError:
                pass
        config = cls(**kwargs)
        errors = config.validate().errors
        if errors:
            raise ValueError(f"{source}: invalid feature settings: {' '.join(errors)}")
        return config


def feature_mismatch(features: FbankConfig, model: Any) -> str | None:
    """Why `model`'s front end cannot take these features (None when it can): its fbank
    channels differ from `num_mel_bins`, so it would fail on a reshape or, worse, train on
    the wrong features. The recipes stop at setup with it, inference refuses the model."""
    extractor = model.encoder_frontend.feature_extractor
    channels = getattr(extractor, "num_fbank_channels", None)
    if channels is None or channels == features.num_mel_bins:
        return None
    return (
        f"the features have {features.num_mel_bins} mel bins (num_mel_bins) but the "
        f"model's front end expects {channels} fbank channels (encoder_config.num_fbank_channels)"
    )


class FbankExtractor:
    """16 kHz waveform -> (T, num_mel_bins) log-mel features, 25 ms / 10 ms (Kaldi), with
    the dither and normalisation of a `FbankConfig`."""

    def __init__(self, config: FbankConfig | None = None) -> None:
        config = config if config is not None else FbankConfig()
        errors = config.validate().errors
        if errors:
            raise ValueError(" ".join(errors))
        self.config = config
        self._converter = WaveformToFbankConverter(
            num_mel_bins=config.num_mel_bins,
            waveform_scale=2.0**15,
            channel_last=True,
            dtype=torch.float32,
        )

    def __call__(self, waveform: torch.Tensor, noise_seed: int) -> torch.Tensor:
        if self.config.dither > 0:
            gen = torch.Generator().manual_seed(noise_seed)
            waveform = waveform + self.config.dither * torch.randn(waveform.shape, generator=gen)
        fbank = self._converter({"waveform": waveform[:, None], "sample_rate": float(SAMPLE_RATE)})[
            "fbank"
        ]
        if self.config.normalize == "utterance":
            mean = fbank.mean(dim=0, keepdim=True)
            std = fbank.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-5)
            fbank = (fbank - mean) / std
        return fbank
