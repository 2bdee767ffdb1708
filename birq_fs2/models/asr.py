"""CTC models fine-tuned from BiRQ encoders.

The fine-tuned model is fairseq2's own ``wav2vec2_asr`` family (`Wav2Vec2AsrModel`: the
same fbank front end and conformer encoder as `BirqModel`, wav2vec2's SpecAugment-style
masker, a linear CTC head with blank = 0), so it loads, shards and decodes like any
fairseq2 ASR model. This module adds its ``birq_*`` architectures (the encoders of the
``birq`` archs) and the transfer of a pretrained encoder into it.

fairseq2's ``wav2vec2_asr`` factory always builds batch-norm, centred convolution
modules. For encoders pretrained with another `ConvModuleConfig` (``conv_module.norm:
layer_norm``, ``causal``) the ``birq_ctc`` family is the same `Wav2Vec2AsrModel` built
with that convolution module (`BirqCtcConfig` = `Wav2Vec2AsrConfig` + ``conv_module``;
the same ``birq_*`` archs): ``model.family=birq_ctc
model.config_overrides.conv_module.norm=layer_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final

from fairseq2.models.conformer import ConformerConvolution
from fairseq2.models.transformer import TransformerEncoder
from fairseq2.models.wav2vec2 import Wav2Vec2EncoderConfig
from fairseq2.models.wav2vec2.asr import (
    WAV2VEC2_ASR_FAMILY,
    Wav2Vec2AsrConfig,
    Wav2Vec2AsrFactory,
    Wav2Vec2AsrModel,
)
from fairseq2.runtime.config_registry import ConfigRegistrar
from fairseq2.runtime.dependency import DependencyContainer
from torch.nn import Module

from .config import ARCHS, ConvModuleConfig
from .factory import BirqEncoderFactory

BIRQ_CTC_FAMILY: Final = "birq_ctc"
CTC_FAMILIES: Final = (WAV2VEC2_ASR_FAMILY, BIRQ_CTC_FAMILY)
"""Families of the CTC models the recipes fine-tune, export, evaluate and transcribe."""


@dataclass(kw_only=True)
class BirqCtcConfig(Wav2Vec2AsrConfig):
    conv_module: ConvModuleConfig = field(default_factory=ConvModuleConfig)
    """The encoder blocks' convolution module (as the pretrained encoder's)."""


class _BirqCtcFactory(Wav2Vec2AsrFactory):
    def __init__(self, config: BirqCtcConfig) -> None:
        super().__init__(config)
        self._conv = config.conv_module

    def create_encoder(self) -> TransformerEncoder:
        return BirqEncoderFactory(self._config.encoder_config, self._conv).create_encoder()


def create_birq_ctc_model(config: BirqCtcConfig) -> Wav2Vec2AsrModel:
    return _BirqCtcFactory(config).create_model()


class EncoderTransferError(ValueError):
    """A pretrained model whose encoder does not fit the CTC model being fine-tuned."""


def asr_config_for(
    encoder_config: Wav2Vec2EncoderConfig, vocab_size: int = 30
) -> Wav2Vec2AsrConfig:
    """A CTC config around a BiRQ encoder: one output per symbol of the character
    vocabulary (blank, pad, A-Z, apostrophe, word boundary: 30), time masks of 5 encoder
    frames (200 ms at the archs' 40 ms frames) on at most ~50 % of the frames, channel masks of 16 model dimensions
    (SpecAugment-like)."""
    return Wav2Vec2AsrConfig(
        encoder_config=replace(encoder_config),
        target_vocab_size=vocab_size,
        final_dropout_p=0.1,
        use_masking=True,
        temporal_mask_span_len=5,
        max_temporal_mask_prob=0.5,
        min_num_temporal_mask_spans=2,
        spatial_mask_span_len=16,
        max_spatial_mask_prob=0.2,
        min_num_spatial_mask_spans=1,
    )


def register_birq_asr_archs(container: DependencyContainer) -> None:
    """``wav2vec2_asr`` and ``birq_ctc`` archs ``birq_tiny``, ``birq_base``, ``birq_large``."""
    arch = ConfigRegistrar(container, Wav2Vec2AsrConfig)
    ctc_arch = ConfigRegistrar(container, BirqCtcConfig)
    for name in ("tiny", "base", "large"):
        make = ARCHS[name]
        arch(f"birq_{name}")(lambda make=make: asr_config_for(make().encoder_config))
        ctc_arch(f"birq_{name}")(
            lambda make=make: BirqCtcConfig(
                **vars(asr_config_for(make().encoder_config)), conv_module=make().conv_module
            )
        )


def _conv_kind(encoder: Module) -> tuple[str, bool] | None:
    """(norm, causal) of the encoder's convolution modules; None without any. Causality
    leaves no trace in a state dict, so the modules are asked, not their tensors."""
    for m in encoder.modules():
        if isinstance(m, ConformerConvolution):
            norm = "batch_norm" if m.batch_norm is not None else "layer_norm"
            return norm, m.causal_depthwise_conv
    return None


def transfer_encoder(pretrained: Module, asr_model: Module, source: str) -> int:
    """Copy the pretrained `encoder_frontend` and `encoder` into the CTC model; returns
    the number of tensors copied. Raises `EncoderTransferError` naming `source` and the
    first mismatches if the two do not fit."""
    family = type(pretrained).__name__
    copied = 0
    for part in ("encoder_frontend", "encoder"):
        src, dst = getattr(pretrained, part, None), getattr(asr_model, part)
        if src is None:
            raise EncoderTransferError(
                f"{source}: a {family} has no `{part}`; a BiRQ (or BEST-RQ) model is needed."
            )
        if part == "encoder" and (kind := _conv_kind(src)) != _conv_kind(dst) and kind:
            norm, causal = kind
            raise EncoderTransferError(
                f"{source}: its convolution modules are {norm}, causal={causal}, the fine-tune "
                f"model's are not; set model.family={BIRQ_CTC_FAMILY} "
                f"model.config_overrides.conv_module.norm={norm} "
                f"model.config_overrides.conv_module.causal={str(causal).lower()}."
            )
        src_state, dst_state = src.state_dict(), dst.state_dict()
        missing = sorted(set(dst_state) - set(src_state))
        unexpected = sorted(set(src_state) - set(dst_state))
        wrong = [
            k for k in dst_state if k in src_state and src_state[k].shape != dst_state[k].shape
        ]
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
                if keys
            )  # fmt: skip
            raise EncoderTransferError(
                f"{source}: its {part} does not fit the fine-tune model ({detail}). Pick the "
                "model.arch that matches the pretrained one (birq_tiny for tiny, ...)."
            )
        dst.load_state_dict(src_state, strict=True)
        copied += len(src_state)
    return copied
