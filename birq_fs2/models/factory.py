"""Builds `BirqModel` from `BirqConfig` with fairseq2's own wav2vec2 encoder factory."""

from __future__ import annotations

from fairseq2.models.conformer import ConformerConvolution
from fairseq2.models.wav2vec2 import Wav2Vec2EncoderConfig, Wav2Vec2EncoderFactory
from torch.nn import Linear

from .config import BirqConfig, ConvModuleConfig
from .model import BestRqMasker, BirqModel, RandomProjectionQuantizer


class BirqEncoderFactory(Wav2Vec2EncoderFactory):
    """fairseq2's wav2vec2 encoder factory with the convolution module `conv` asks for."""

    def __init__(self, config: Wav2Vec2EncoderConfig, conv: ConvModuleConfig) -> None:
        super().__init__(config)
        self._conv = conv

    def create_conformer_conv(self) -> ConformerConvolution:
        return ConformerConvolution(
            self._config.model_dim, self._config.depthwise_conv_kernel_size,
            causal_depthwise_conv=self._conv.causal, norm_type=self._conv.norm,
        )  # fmt: skip


def create_birq_model(config: BirqConfig) -> BirqModel:
    errors = config.validate().errors
    if errors:
        raise ValueError("Invalid birq model config: " + " ".join(errors))
    enc = config.encoder_config
    factory = BirqEncoderFactory(enc, config.conv_module)
    encoder_frontend = factory.create_encoder_frontend()
    encoder = factory.create_encoder()
    masker = BestRqMasker(config.masking, config.frame_ms)
    anchor = config.anchor
    anchor_quantizer = RandomProjectionQuantizer(enc.feature_dim, anchor)
    anchor_head = Linear(enc.model_dim, anchor.num_codebooks * anchor.codebook_size)
    # The enhanced stream is built last, so the shared modules above draw the same
    # initial weights with it on or off: BiRQ and BEST-RQ start from the same encoder.
    enhanced_quantizer = enhanced_head = None
    if config.enhanced.enabled:
        enh = config.enhanced
        enhanced_quantizer = RandomProjectionQuantizer(enc.model_dim, enh)
        enhanced_head = Linear(enc.model_dim, enh.num_codebooks * enh.codebook_size)
    return BirqModel(
        config, encoder_frontend, encoder, masker, anchor_quantizer, anchor_head,
        enhanced_quantizer, enhanced_head,
    )  # fmt: skip
