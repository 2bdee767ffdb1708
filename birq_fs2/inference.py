"""Audio files -> text with a fine-tuned CTC model: the path behind ``birq-transcribe``
and ``birq-evaluate``.

    audio (any rate, mono or stereo, WAV/FLAC) -> 16 kHz mono -> fbank (as in training)
    -> wav2vec2_asr model -> greedy CTC path -> characters -> words
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrModel
from fairseq2.nn import BatchLayout
from torch import Tensor

from birq_fs2.data.audio import AudioError, AudioLoader, FbankExtractor, utterance_seed
from birq_fs2.data.pipeline import SpeechPipelineConfig
from birq_fs2.models.asr import ctc_greedy_ids
from birq_fs2.models.hub import ModelSource, ModelSourceError, resolve_model

# The encoder stacks 4 fbank frames: shorter inputs give no encoder frame at all.
_MIN_FRAMES = 8


@dataclass
class Transcript:
    path: str
    text: str | None
    error: str | None = None
    num_frames: int = 0


class Transcriber:
    """A CTC model and its vocabulary, loaded once; features as in training (same
    filterbank, per-utterance normalisation and dither level)."""

    def __init__(
        self,
        source: ModelSource | str,
        *,
        device: torch.device | None = None,
        max_frames_per_batch: int = 30_000,
    ) -> None:
        self.source = resolve_model(source) if isinstance(source, str) else source
        self.device = device or torch.device("cpu")
        model = self.source.load(device=self.device)
        if not isinstance(model, Wav2Vec2AsrModel):
            raise ModelSourceError(
                f"{self.source.spec}: a '{self.source.family}' model, not a CTC model "
                "(wav2vec2_asr); fine-tune it with birq-finetune first."
            )
        self.model = model
        self.vocabulary = self.source.vocabulary()
        if model.final_proj.output_dim != len(self.vocabulary):
            raise ModelSourceError(
                f"{self.source.spec}: the CTC head has {model.final_proj.output_dim} outputs but its "
                f"vocabulary {self.source.vocabulary_path} has {len(self.vocabulary)} symbols."
            )
        pipeline = SpeechPipelineConfig()
        self._loader = AudioLoader()
        self._fbank = FbankExtractor(pipeline.num_mel_bins, pipeline.dither, pipeline.normalize)
        self.max_frames_per_batch = max_frames_per_batch

    def features(self, path: str | Path) -> Tensor:
        waveform = self._loader(path).waveform
        # One dither seed for every file: a file's transcript depends on its audio only,
        # not on its name or on the other files of the call.
        fbank = self._fbank(waveform, utterance_seed(0, "transcribe", "dither"))
        if fbank.shape[0] < _MIN_FRAMES:
            raise AudioError(
                path, f"too short to transcribe ({fbank.shape[0]} frames of 10 ms)", "too_short"
            )
        return fbank

    @torch.no_grad()
    def decode(self, features: Sequence[Tensor]) -> list[str]:
        """Greedy CTC transcripts of a batch of (T_i, 80) fbank tensors."""
        lens = [f.shape[0] for f in features]
        seqs = torch.zeros(len(features), max(lens), features[0].shape[1])
        for i, f in enumerate(features):
            seqs[i, : f.shape[0]] = f
        seqs = seqs.to(self.device)
        layout = BatchLayout(seqs.shape[:2], lens, device=self.device)
        logits, out_layout = self.model(seqs, layout)
        return [self.vocabulary.decode(ids) for ids in ctc_greedy_ids(logits, out_layout)]

    def transcribe(self, paths: Iterable[str | Path]) -> Iterator[Transcript]:
        """One `Transcript` per path, in order; a file that cannot be used gets `error`
        (naming it and the problem) instead of stopping the others."""
        pending: list[tuple[str, Tensor]] = []

        def flush() -> Iterator[Transcript]:
            texts = self.decode([f for _, f in pending])
            for (p, f), text in zip(pending, texts, strict=True):
                yield Transcript(p, text, num_frames=f.shape[0])
            pending.clear()

        for path in paths:
            try:
                feats = self.features(path)
            except AudioError as ex:
                yield from flush() if pending else ()
                yield Transcript(str(path), None, str(ex))
                continue
            longest = max([feats.shape[0], *(f.shape[0] for _, f in pending)])
            if pending and longest * (len(pending) + 1) > self.max_frames_per_batch:
                yield from flush()
            pending.append((str(path), feats))
        if pending:
            yield from flush()
