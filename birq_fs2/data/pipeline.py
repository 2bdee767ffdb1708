"""The speech data pipeline, built from fairseq2.data:

    utterances -> shard by rank -> shuffle (seeded) -> read + decode + resample
    -> fbank (dither, per-utterance normalisation) -> random crop of over-long ones
    -> skip too short / unreadable (counted, warned) -> bucket by length
    -> collate with padding -> SequenceBatch (audio) or Seq2SeqBatch (audio + text)

The reader is a fairseq2 `DataPipelineReader`, so the trainer saves its state in
checkpoints and a resumed run continues where it stopped. Every random choice (shuffle,
dither, crop) is seeded; dither and crop by (seed, utterance id), so they do not depend on
the order or the batch an utterance lands in.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from fairseq2.data.data_pipeline import DataPipeline, create_bucket_sizes, read_sequence
from fairseq2.datasets import DataPipelineReader, Seq2SeqBatch, SequenceBatch, SyncMode
from fairseq2.gang import Gangs
from fairseq2.utils.validation import ValidationResult

from .audio import AudioError, AudioLoader, FbankConfig, FbankExtractor, utterance_seed
from .corpus import Utterance
from .vocab import CharVocabulary

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SpeechPipelineConfig:
    features: FbankConfig = field(default_factory=FbankConfig)
    """The filterbank (mel bins, normalisation, dither): it travels with the trained model
    (exported cards carry it; fine-tuning and inference read it back)."""
    min_frames: int = 100
    """In 10 ms fbank frames (not the 40 ms encoder frames of `masking.span_len`):
    shorter utterances are skipped and counted. Keep it above the model's mask span in
    fbank frames (span_len x fbank_stride)."""
    max_frames: int = 1600
    """In 10 ms fbank frames: longer utterances are randomly cropped to it (unlabelled
    audio) or skipped and counted (with transcripts: a crop would cut the audio, not the
    text)."""
    max_frames_per_batch: int = 32_000
    """Padded 10 ms fbank frames per batch (batch size x longest utterance); a multiple
    of max_frames (the buckets hold whole max-length utterances)."""
    shuffle_window: int = 10_000
    """Examples shuffled together (0: the whole split; 1: no shuffling)."""
    batch_shuffle_window: int = 64
    """Batches shuffled together after bucketing (1: no shuffling)."""
    num_parallel_calls: int = 2
    """Utterances decoded and featurised in parallel."""
    num_prefetch: int = 4
    """Batches prepared ahead of the trainer."""
    feature_cache_gb: float = 4.0
    """Keep each utterance's fbank in memory after its first decoding, up to this many GB
    per reader (0: off). The features of an utterance are a pure function of the audio and
    the (seed, utterance) keyed dither, so later epochs (and every validation after the
    first) read the same values without decoding or featurising again; crops are still
    drawn per reading. 1 h of audio is about 115 MB."""

    def validate(self) -> ValidationResult:
        """fairseq2 calls this on recipe configs (errors name the key)."""
        result = ValidationResult()
        if not 0 < self.min_frames <= self.max_frames:
            result.add_error(
                f"`min_frames` ({self.min_frames}) must be in [1, max_frames = {self.max_frames}]."
            )
        if self.max_frames_per_batch < self.max_frames:
            result.add_error(
                f"`max_frames_per_batch` ({self.max_frames_per_batch}) must be >= `max_frames` ({self.max_frames})."
            )
        elif self.max_frames_per_batch % self.max_frames:
            fit = self.max_frames_per_batch // self.max_frames * self.max_frames
            result.add_error(
                f"`max_frames_per_batch` ({self.max_frames_per_batch}) must be a multiple of "
                f"`max_frames` ({self.max_frames}): {fit} or {fit + self.max_frames}."
            )
        if self.feature_cache_gb < 0:
            result.add_error(f"`feature_cache_gb` must be >= 0, got {self.feature_cache_gb}.")
        for error in self.features.validate().errors:
            result.add_error(f"features: {error}")
        return result

    def check(self) -> None:
        """Raise ValueError listing every error of `validate`."""
        errors = self.validate().errors
        if errors:
            raise ValueError(" ".join(errors))


class DataStats:
    """Skipped and cropped utterances, by reason; thread-safe (pipeline workers)."""

    def __init__(self, max_warnings: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._max_warnings = max_warnings

    def record(self, kind: str, message: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            seen = self.examples.setdefault(kind, [])
            if len(seen) < 5:
                seen.append(message)
            warn = sum(self.counts.values()) <= self._max_warnings
        if warn and kind != "cropped":
            log.warning("Skipping %s", message)

    @property
    def num_skipped(self) -> int:
        return sum(n for k, n in self.counts.items() if k != "cropped")


class FeatureCache:
    """Utterance id -> fbank, filled as utterances are first read, up to `max_bytes`
    (then it stops adding and says so once); thread-safe (pipeline workers)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.num_bytes = max_bytes, 0
        self._features: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._full = False

    def get(self, utt_id: str) -> torch.Tensor | None:
        return self._features.get(utt_id)

    def put(self, utt_id: str, fbank: torch.Tensor) -> None:
        size = fbank.numel() * fbank.element_size()
        with self._lock:
            if self.num_bytes + size > self.max_bytes:
                if not self._full and self.max_bytes > 0:
                    log.info(
                        "Feature cache full (%.1f GB): later utterances are featurised at every "
                        "reading (raise dataset.pipeline.feature_cache_gb to keep them).",
                        self.num_bytes / 1e9,
                    )
                self._full = True
                return
            if utt_id not in self._features:
                self._features[utt_id] = fbank
                self.num_bytes += size


def build_speech_pipeline(
    utterances: Sequence[Utterance],
    config: SpeechPipelineConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 2,
    shuffle: bool = True,
    vocab: CharVocabulary | None = None,
    stats: DataStats | None = None,
    repeat: bool = False,
) -> DataPipeline:
    """Batches of fbank features (and character targets when `vocab` is given)."""
    config.check()
    stats = stats if stats is not None else DataStats()
    records: list[dict[str, Any]] = []
    for u in utterances:
        if vocab is not None and u.text is None:
            stats.record("missing_transcript", f"{u.path}: no transcript")
            continue
        records.append({"id": u.id, "path": str(u.path), "text": u.text or ""})

    loader = AudioLoader()
    extractor = FbankExtractor(config.features)
    cache = FeatureCache(int(config.feature_cache_gb * 1e9))

    def featurize(example: dict[str, Any]) -> dict[str, Any] | None:
        path, utt_id = example["path"], example["id"]
        fbank = cache.get(utt_id)
        if fbank is None:
            try:
                waveform = loader(path).waveform
            except AudioError as ex:
                stats.record(ex.kind, str(ex))
                return None
            fbank = extractor(waveform, utterance_seed(seed, utt_id, "dither"))
            cache.put(utt_id, fbank)
        num_frames = fbank.shape[0]
        if num_frames < config.min_frames:
            stats.record(
                "too_short", f"{path}: {num_frames} frames < min_frames = {config.min_frames}"
            )
            return None
        if num_frames > config.max_frames and vocab is not None:
            # A crop would cut the audio but not its transcript.
            stats.record(
                "too_long", f"{path}: {num_frames} frames > max_frames = {config.max_frames}"
            )
            return None
        if num_frames > config.max_frames:
            gen = torch.Generator().manual_seed(utterance_seed(seed, utt_id, "crop"))
            start = int(torch.randint(num_frames - config.max_frames + 1, (1,), generator=gen))
            fbank = fbank[start : start + config.max_frames]
            stats.record("cropped", f"{path}: {num_frames} -> {config.max_frames} frames")
        out = {"id": utt_id, "fbank": fbank}
        if vocab is not None:
            try:
                out["target"] = vocab.encode(example["text"])
            except ValueError as ex:
                stats.record("bad_transcript", f"{path}: {ex}")
                return None
            if len(out["target"]) == 0:
                stats.record("missing_transcript", f"{path}: empty transcript")
                return None
        return out

    builder = read_sequence(records)
    if world_size > 1:
        builder.shard(rank, world_size, allow_uneven=True)
    if shuffle and config.shuffle_window != 1:
        builder.shuffle(config.shuffle_window, seed=seed)
    if repeat:
        builder.repeat()
    builder.map(featurize, num_parallel_calls=config.num_parallel_calls)
    builder.filter(lambda example: example is not None)

    bucket_sizes = create_bucket_sizes(
        max_num_elements=config.max_frames_per_batch,
        max_seq_len=config.max_frames,
        min_seq_len=config.min_frames,
    )
    builder.bucket_by_length(bucket_sizes, selector="fbank", min_data_len=config.min_frames)
    if shuffle and config.batch_shuffle_window != 1:
        builder.shuffle(config.batch_shuffle_window, seed=seed + 1)
    builder.collate(pad_value=0)

    def to_batch(example: dict[str, Any]) -> SequenceBatch | Seq2SeqBatch:
        fbank = example["fbank"]
        if vocab is None:
            return SequenceBatch(fbank["seqs"], _lens(fbank), example={"ids": example["id"]})
        target = example["target"]
        return Seq2SeqBatch(
            fbank["seqs"],
            _lens(fbank),
            target["seqs"],
            _lens(target),
            example={"ids": example["id"]},
        )

    builder.map(to_batch)
    builder.prefetch(config.num_prefetch)
    return builder.and_return()


def _lens(collated: dict[str, Any]) -> list[int] | None:
    if not collated["is_ragged"]:
        return None
    return [int(n) for n in collated["seq_lens"]]


def create_speech_reader(
    utterances: Sequence[Utterance],
    config: SpeechPipelineConfig,
    gangs: Gangs,
    *,
    seed: int,
    shuffle: bool = True,
    vocab: CharVocabulary | None = None,
    stats: DataStats | None = None,
    num_accumulate: int = 1,
    sync_mode: SyncMode = SyncMode.UNTIL_FIRST,
    repeat: bool = False,
) -> DataPipelineReader:
    pipeline = build_speech_pipeline(
        utterances, config, rank=gangs.dp.rank, world_size=gangs.dp.size, seed=seed,
        shuffle=shuffle, vocab=vocab, stats=stats, repeat=repeat,
    )  # fmt: skip
    return DataPipelineReader(pipeline, gangs, num_accumulate=num_accumulate, sync_mode=sync_mode)
