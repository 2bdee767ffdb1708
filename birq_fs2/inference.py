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

from birq_fs2.data.audio import (
    AudioError,
    AudioLoader,
    FbankExtractor,
    feature_mismatch,
    utterance_seed,
)
from birq_fs2.frames import FBANK_HOP_SECONDS, min_fbank_frames
from birq_fs2.models.source import ModelSource, ModelSourceError, resolve_model


@dataclass
class Transcript:
    path: str
    text: str | None
    error: str | None = None
    num_frames: int = 0


def ctc_greedy_ids(logits: Tensor, layout: BatchLayout, blank: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame (padding excluded), repeats merged,
    blanks removed."""
    best = logits.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best, layout.seq_lens, strict=True):
        path = torch.unique_consecutive(row[:n])
        out.append([int(i) for i in path if int(i) != blank])
    return out


class Transcriber:
    """A CTC model and its vocabulary, loaded once; features as in training: the
    filterbank settings recorded with the model (its card's ``features``, its run's
    ``dataset.pipeline``), the defaults only for a card without them."""

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
        self.feature_config = self.source.feature_config()
        problem = feature_mismatch(self.feature_config, model)
        if problem is not None:
            raise ModelSourceError(f"{self.source.spec}: {problem}.")
        self._loader = AudioLoader()
        self._fbank = FbankExtractor(self.feature_config)
        self._min_frames = min_fbank_frames(model.encoder_frontend.feature_extractor.stride)
        self.max_frames_per_batch = max_frames_per_batch

    def features(self, path: str | Path) -> Tensor:
        waveform = self._loader(path).waveform
        # One dither seed for every file: a file's transcript depends on its audio only,
        # not on its name or on the other files of the call.
        fbank = self._fbank(waveform, utterance_seed(0, "transcribe", "dither"))
        if fbank.shape[0] < self._min_frames:
            raise AudioError(
                path,
                f"too short to transcribe ({fbank.shape[0] * FBANK_HOP_SECONDS:.2f} s; "
                f"the model needs {self._min_frames * FBANK_HOP_SECONDS:.2f} s)",
                "too_short",
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
