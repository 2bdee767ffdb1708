"""Configuration and named architectures of the ``birq`` model family.

One family for BiRQ and BEST-RQ: with ``enhanced.enabled = False`` the model computes
exactly BEST-RQ. Every choice the paper leaves open is a knob here; docs/DESIGN.md gives
each knob's formula, the reason for its default and where we depart from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.models.wav2vec2 import Wav2Vec2EncoderConfig
from fairseq2.runtime.config_registry import ConfigRegistrar
from fairseq2.runtime.dependency import DependencyContainer
from fairseq2.utils.validation import ValidationResult

from birq_fs2.frames import FBANK_STRIDE, NUM_MEL_BINS, encoder_frame_ms

BIRQ_FAMILY: Final = "birq"

RENAMED_LABEL_GRAD: Final = {"st": "straight_through", "stop": "detach"}
"""`enhanced.label_grad`'s first spellings: refused, with the new one in the message."""


@dataclass(kw_only=True)
class MaskingConfig:
    """BEST-RQ masking on the stacked input (one stacked frame = one encoder frame)."""

    span_len: int = 10
    """Encoder frames per span (10 x 40 ms = 400 ms with the archs' 4-frame stacking)."""
    start_prob: float = 0.065
    """Probability that a frame starts a span: 1 - (1 - p)^span_len of the frames are
    masked in expectation (49 % with the defaults; BEST-RQ aims at 40-60 %)."""
    noise_std: float = 0.1
    """Masked stacked frames are replaced with N(0, noise_std^2)."""


@dataclass(kw_only=True)
class QuantizerConfig:
    """A frozen random-projection quantizer (BEST-RQ)."""

    num_codebooks: int = 1
    """G: independent codebooks, each with its own projection; losses average over them."""
    codebook_size: int = 8192
    """K: codes per codebook."""
    code_dim: int = 16
    """d: dimension of the projection and of the unit-norm codes."""
    seed: int = 0
    """Seed of the frozen projection and codebook (persistent buffers)."""


@dataclass(kw_only=True)
class EnhancedConfig(QuantizerConfig):
    """BiRQ's enhanced labels: the quantizer applied to the model's own layer `label_layer`."""

    enabled: bool = True
    """False: no enhanced stream; the model computes exactly BEST-RQ."""
    label_layer: int | None = None
    """Conformer blocks 1..label_layer generate the enhanced labels (1-based; None: half
    the encoder's blocks, rounded down, at least 1)."""
    label_input: Literal["unmasked", "masked"] = "unmasked"
    """"unmasked": a second partial forward on the clean input (default); "masked":
    reuse the masked forward (cheaper, worse)."""
    label_grad: Literal["straight_through", "detach", "st", "stop"] = "detach"
    """Whether the enhanced loss trains the label generator (blocks 1..label_layer on the
    clean input) through the labels. "detach": no gradient reaches it along that path
    (the labels are targets, as online HuBERT's or data2vec's); "straight_through": the
    straight-through Gumbel gradient reaches it (BiRQ's end-to-end label training). The
    default is chosen by measurement (benchmarks/results/label_quality): with
    "straight_through" the enhanced labels collapse within tens of steps after refine
    start (noise-free: one code, PNMI 0 on the dev speakers); with "detach" they stay
    alive. "st" and "stop", this field's first spellings, are refused with a hint."""
    label_grad_scale: float = 1.0
    """With label_grad "straight_through": the gradient along the label path (into the
    label generator through the labels) is multiplied by this, in [0, 1]; the labels'
    values, the prediction path and the anchor loss are unchanged. 1 is BiRQ's
    end-to-end gradient; 0 computes what "detach" computes, at straight_through's cost."""
    label_norm: Literal["layer", "instance"] = "instance"
    """How the label layer's output is normalised before the random projection: "layer"
    (per frame, over channels, parameter-free LayerNorm) or "instance" (per utterance
    and channel, over its unpadded frames, as data2vec normalises its teacher's layers;
    a frame's label still does not depend on what it is batched with). The default is
    chosen by measurement: with label_grad "detach", instance norm gave the highest
    enhanced PNMI of every variant tried (benchmarks/results/label_quality)."""
    diversity_weight: float = 0.0
    """Weight of wav2vec 2.0's codebook diversity loss on the enhanced quantizer (eq. 4:
    (G K - sum_g exp(H(mean_n softmax(s_n,g)))) / (G K), noise-free code softmax), added
    to the per-frame loss; 0: off. Pushes the label generator to use the whole codebook."""
    logit_scale: float = 0.1
    """Divisor of the code similarities, a temperature: with z the normalised projection
    of a frame and c_j the unit codes, s_j = cos(z, c_j) / logit_scale (0.1: s in
    [-10, 10]), the label is argmax_j (s_j + g_j) and the soft sample that carries the
    straight-through gradient is softmax((s + g) / tau), g ~ Gumbel(0, 1) and tau the
    schedule's temperature. Smaller values sharpen the sample as a smaller tau does;
    the noise-free label (argmax s) does not depend on it."""
    gumbel_noise: bool = True
    """False: no Gumbel noise (g = 0: the label is argmax s, the soft sample softmax(s / tau))."""


@dataclass(kw_only=True)
class ConvModuleConfig:
    """The conformer blocks' convolution module (pointwise, GLU, depthwise, norm, swish,
    pointwise): what fairseq2's `Wav2Vec2EncoderConfig` does not choose."""

    norm: Literal["batch_norm", "layer_norm"] = "batch_norm"
    """After the depthwise convolution. "batch_norm" (the Conformer paper's, fairseq2's
    default) normalises each channel over every frame of the batch, padded frames
    included, and keeps running statistics for evaluation; across processes it needs
    SyncBatchNorm (one collective call per block and step) and it keeps FSDP off CPU
    processes. "layer_norm" (w2v-BERT 2.0's) normalises each frame over its channels: a
    frame's output does not depend on what it is batched with, in training or not."""
    causal: bool = False
    """True: the depthwise convolution sees the kernel's past frames only (left padding
    of kernel - 1 frames, as w2v-BERT 2.0); False: centred ("same" padding)."""


@dataclass(kw_only=True)
class BirqConfig:
    encoder_config: Wav2Vec2EncoderConfig = field(
        default_factory=lambda: _encoder(768, 12, 12, 3072)
    )
    """fairseq2's wav2vec2 encoder config: fbank front end, conformer blocks."""
    conv_module: ConvModuleConfig = field(default_factory=ConvModuleConfig)
    """The blocks' convolution module. ``norm: layer_norm`` with ``causal: true`` is
    w2v-BERT 2.0's, and what `birq-export --format hf` needs (transformers'
    `Wav2Vec2BertModel` has that module and no other)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    anchor: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(seed=0))
    """BEST-RQ's quantizer of the stacked, normalised input (the anchor labels)."""
    enhanced: EnhancedConfig = field(default_factory=lambda: EnhancedConfig(seed=1))
    """BiRQ's quantizer of layer `label_layer` (the enhanced labels)."""

    @property
    def frame_ms(self) -> float:
        """Duration of one encoder frame (= one stacked input frame)."""
        return encoder_frame_ms(self.encoder_config.fbank_stride)

    @property
    def label_layer(self) -> int:
        n = self.encoder_config.num_encoder_layers
        return (
            self.enhanced.label_layer if self.enhanced.label_layer is not None else max(1, n // 2)
        )

    def validate(self) -> ValidationResult:
        result = ValidationResult()
        enc = self.encoder_config
        n = enc.num_encoder_layers
        if not enc.use_fbank or enc.feature_dim != enc.num_fbank_channels * enc.fbank_stride:
            result.add_error(
                f"`encoder_config.feature_dim` ({enc.feature_dim}) must equal num_fbank_channels x "
                f"fbank_stride ({enc.num_fbank_channels} x {enc.fbank_stride}) with use_fbank: true."
            )
        if self.enhanced.label_layer is not None and not 1 <= self.enhanced.label_layer <= n:
            result.add_error(
                f"`enhanced.label_layer` must be in [1, {n}] (the encoder's layers), got {self.enhanced.label_layer}."
            )
        if self.enhanced.label_input not in ("unmasked", "masked"):
            result.add_error(
                f"`enhanced.label_input` must be 'unmasked' or 'masked', got {self.enhanced.label_input!r}."
            )
        if self.enhanced.diversity_weight < 0:
            result.add_error(
                f"`enhanced.diversity_weight` must be >= 0, got {self.enhanced.diversity_weight}."
            )
        renamed = RENAMED_LABEL_GRAD.get(self.enhanced.label_grad)
        if renamed is not None:
            result.add_error(
                f"`enhanced.label_grad: {self.enhanced.label_grad}` is the old spelling: "
                f"write `label_grad: {renamed}`."
            )
        elif self.enhanced.label_grad not in ("straight_through", "detach"):
            result.add_error(
                "`enhanced.label_grad` must be 'straight_through' or 'detach', "
                f"got {self.enhanced.label_grad!r}."
            )
        elif self.enhanced.diversity_weight > 0 and self.enhanced.label_grad == "detach":
            # Its only gradient flows into the label generator, which "detach" cuts off.
            result.add_error(
                "`enhanced.diversity_weight` > 0 has no effect with `enhanced.label_grad: detach`; "
                "set label_grad: straight_through as well, or diversity_weight: 0."
            )
        if not 0.0 <= self.enhanced.label_grad_scale <= 1.0:
            result.add_error(
                f"`enhanced.label_grad_scale` must be in [0, 1], got {self.enhanced.label_grad_scale}."
            )
        elif self.enhanced.label_grad_scale != 1.0 and self.enhanced.label_grad == "detach":
            result.add_error(
                "`enhanced.label_grad_scale` scales the straight-through label gradient, which "
                "`label_grad: detach` cuts off: set label_grad: straight_through as well."
            )
        if self.enhanced.logit_scale <= 0:
            result.add_error(
                f"`enhanced.logit_scale` must be > 0, got {self.enhanced.logit_scale}."
            )
        if self.enhanced.label_norm not in ("layer", "instance"):
            result.add_error(
                f"`enhanced.label_norm` must be 'layer' or 'instance', got {self.enhanced.label_norm!r}."
            )
        if self.conv_module.norm not in ("batch_norm", "layer_norm"):
            result.add_error(
                f"`conv_module.norm` must be 'batch_norm' or 'layer_norm', got {self.conv_module.norm!r}."
            )
        for name, q in (("anchor", self.anchor), ("enhanced", self.enhanced)):
            if q.num_codebooks < 1 or q.codebook_size < 2 or q.code_dim < 1:
                result.add_error(
                    f"`{name}` quantizer needs num_codebooks >= 1, codebook_size >= 2, code_dim >= 1."
                )
        if not 0.0 < self.masking.start_prob < 1.0:
            result.add_error(
                f"`masking.start_prob` must be in (0, 1), got {self.masking.start_prob}."
            )
        if self.masking.span_len < 1:
            result.add_error(f"`masking.span_len` must be >= 1, got {self.masking.span_len}.")
        if enc.layer_drop_p != 0.0:
            result.add_error(
                "`encoder_config.layer_drop_p` must be 0 (the conformer stack ignores LayerDrop)."
            )
        return result


def _encoder(
    model_dim: int, layers: int, heads: int, ffn: int, kernel: int = 31
) -> Wav2Vec2EncoderConfig:
    """Fbank front end stacking FBANK_STRIDE frames, relative-position conformer blocks."""
    return Wav2Vec2EncoderConfig(
        model_dim=model_dim, max_seq_len=4096, feature_dim=NUM_MEL_BINS * FBANK_STRIDE, use_fbank=True,
        first_pass_dropout_p=0.0, layer_norm_features=False, feature_extractor_layer_descs=[],
        feature_grad_scale=0.0, num_fbank_channels=NUM_MEL_BINS, fbank_stride=FBANK_STRIDE, sample_fbank_every_k=1,
        pos_encoder_type="relative", pos_encoder_depth=0, pos_conv_kernel_size=0, num_pos_conv_groups=0,
        use_conformer=True, num_encoder_layers=layers, num_encoder_attn_heads=heads, ffn_inner_dim=ffn,
        dropout_p=0.1, attn_dropout_p=0.1, ffn_inner_dropout_p=0.0, layer_drop_p=0.0,
        norm_order=TransformerNormOrder.POST, depthwise_conv_kernel_size=kernel,
    )  # fmt: skip


def tiny() -> BirqConfig:
    return BirqConfig(
        encoder_config=_encoder(144, 4, 4, 576, kernel=15),
        anchor=QuantizerConfig(codebook_size=512, seed=0),
        enhanced=EnhancedConfig(codebook_size=512, seed=1),
        masking=MaskingConfig(span_len=5, start_prob=0.12),  # 47 % masked
    )


def base() -> BirqConfig:
    return BirqConfig(encoder_config=_encoder(576, 12, 8, 2304))


def large() -> BirqConfig:
    return BirqConfig(encoder_config=_encoder(1024, 24, 16, 4096))


def _bestrq(make):
    def build() -> BirqConfig:
        config = make()
        config.enhanced.enabled = False
        return config

    return build


def _paper(make):
    """BiRQ as the paper publishes it: the gradient through the labels (straight-through
    Gumbel) and labels from about 70 % of the depth (layer 7 of its 10). What it leaves
    open (codebook size, the label layer's normalisation) keeps our defaults. The
    recipe's side (w1 0.1, w2 2.4, tau 0.5, no warm-up) is the paper_tiny_cpu.yaml
    preset's `schedule`."""

    def build() -> BirqConfig:
        config = make()
        config.enhanced.label_grad = "straight_through"
        config.enhanced.label_layer = round(0.7 * config.encoder_config.num_encoder_layers)
        return config

    return build


ARCHS = {"tiny": tiny, "base": base, "large": large,
         "bestrq_tiny": _bestrq(tiny), "bestrq_base": _bestrq(base), "bestrq_large": _bestrq(large),
         "paper_tiny": _paper(tiny), "paper_base": _paper(base), "paper_large": _paper(large)}  # fmt: skip


def register_birq_archs(container: DependencyContainer) -> None:
    arch = ConfigRegistrar(container, BirqConfig)
    for name, make in ARCHS.items():
        arch(name)(make)
