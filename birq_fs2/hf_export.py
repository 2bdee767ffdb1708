"""A BiRQ/BEST-RQ encoder -> a Hugging Face transformers folder that
``transformers.Wav2Vec2BertModel.from_pretrained`` (and ``AutoModel``) loads with no remote
code (the path behind ``birq-export --format hf``).

Why `Wav2Vec2BertModel`: it is the stock transformers class that takes stacked log-mel
frames (``input_features``: a LayerNorm and a linear projection, as fairseq2's fbank front
end) into conformer blocks with Transformer-XL relative-position attention
(``position_embeddings_type: relative``: the same sinusoids, the same u/v biases and shift
as fairseq2's `RelativePositionSDPA`), each block ffn/2, attention, convolution, ffn/2,
final LayerNorm, as fairseq2's `ConformerBlock` with POST norm order. Its convolution
module is w2v-BERT 2.0's: causal depthwise convolution and LayerNorm. So an encoder
pretrained with ``conv_module: {norm: layer_norm, causal: true}`` maps onto it exactly,
tensor for tensor (the tests compare every layer's output); one with the default batch-norm,
centred convolution has no stock class (Wav2Vec2ConformerModel has that module but takes
raw waveforms through a CNN), and is refused with that reason.

The quantizers and prediction heads stay behind: they are pretraining machinery, not part
of the representation. The feature extractor settings (``preprocessor_config.json``:
`SeamlessM4TFeatureExtractor`, 80 mel bins, 4 frames stacked) give Kaldi-style log-mel
features with per-utterance normalisation like ours; it normalises with the unbiased
variance and adds no dither, so its features differ from the training pipeline's by a
little (README: the measured difference). For identical inputs, feed the model our
features (`birq_fs2.data.audio.FbankExtractor`, stacked as ``BirqModel.stack`` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from fairseq2.models.transformer import TransformerNormOrder
from torch import Tensor

from birq_fs2.frames import SAMPLE_RATE
from birq_fs2.models.config import BIRQ_FAMILY, BirqConfig
from birq_fs2.models.model import BirqModel
from birq_fs2.models.source import ModelSourceError, resolve_model


class HfExportError(ValueError):
    """An encoder that has no exact transformers counterpart, or a missing dependency."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise HfExportError(
            "--format hf needs the transformers package: pip install 'birq-fs2[hf]' "
            "(or pip install transformers)."
        ) from None
    return transformers


def check_exportable(config: BirqConfig, source: str) -> None:
    """Raise `HfExportError` saying what differs from Wav2Vec2BertModel, if anything."""
    enc = config.encoder_config
    problems = []
    if config.conv_module.norm != "layer_norm" or not config.conv_module.causal:
        problems.append(
            f"its convolution module is {config.conv_module.norm}"
            f"{', causal' if config.conv_module.causal else ', centred'}; Wav2Vec2BertModel's "
            "is causal with layer_norm (pretrain with model.config_overrides.conv_module.norm="
            "layer_norm model.config_overrides.conv_module.causal=true)"
        )
    if not enc.use_conformer or enc.pos_encoder_type != "relative":
        problems.append("it is not a relative-position conformer")
    if enc.norm_order != TransformerNormOrder.POST:
        problems.append(f"its norm order is {enc.norm_order}")
    if enc.model_dim % enc.num_encoder_attn_heads:
        problems.append("its model_dim is not a multiple of its attention heads")
    if problems:
        raise HfExportError(
            f"{source}: no transformers class computes this encoder: {'; '.join(problems)}."
        )


def hf_config(config: BirqConfig) -> Any:
    """The `Wav2Vec2BertConfig` of an exportable encoder."""
    transformers = _transformers()
    enc = config.encoder_config
    return transformers.Wav2Vec2BertConfig(
        hidden_size=enc.model_dim,
        num_hidden_layers=enc.num_encoder_layers,
        num_attention_heads=enc.num_encoder_attn_heads,
        intermediate_size=enc.ffn_inner_dim,
        feature_projection_input_dim=enc.feature_dim,
        hidden_act="swish",
        position_embeddings_type="relative",
        max_source_positions=enc.max_seq_len,
        conv_depthwise_kernel_size=enc.depthwise_conv_kernel_size,
        layer_norm_eps=1e-5,
        hidden_dropout=enc.dropout_p,
        activation_dropout=enc.ffn_inner_dropout_p,
        attention_dropout=enc.attn_dropout_p,
        feat_proj_dropout=enc.dropout_p,
        conformer_conv_dropout=enc.dropout_p,
        layerdrop=0.0,
        # Pretraining machinery that the encoder's users do not run.
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        apply_spec_augment=False,
        add_adapter=False,
        use_intermediate_ffn_before_adapter=False,
        architectures=["Wav2Vec2BertModel"],
    )


def hf_state_dict(model: BirqModel) -> dict[str, Tensor]:
    """Our encoder's tensors under Wav2Vec2BertModel's names (every one of its parameters)."""
    front = model.encoder_frontend
    state: dict[str, Tensor] = {
        "feature_projection.layer_norm.weight": front.post_extract_layer_norm.weight,
        "feature_projection.layer_norm.bias": front.post_extract_layer_norm.bias,
        "feature_projection.projection.weight": front.model_dim_proj.weight,
        "feature_projection.projection.bias": front.model_dim_proj.bias,
    }
    for i, block in enumerate(model.encoder.layers):
        ours = dict(block.state_dict())
        hf = f"encoder.layers.{i}."
        names = {
            "ffn1_layer_norm": "ffn1_layer_norm", "ffn2_layer_norm": "ffn2_layer_norm",
            "ffn1.inner_proj": "ffn1.intermediate_dense", "ffn1.output_proj": "ffn1.output_dense",
            "ffn2.inner_proj": "ffn2.intermediate_dense", "ffn2.output_proj": "ffn2.output_dense",
            "self_attn_layer_norm": "self_attn_layer_norm",
            "self_attn.q_proj": "self_attn.linear_q", "self_attn.k_proj": "self_attn.linear_k",
            "self_attn.v_proj": "self_attn.linear_v", "self_attn.output_proj": "self_attn.linear_out",
            "self_attn.sdpa.r_proj": "self_attn.linear_pos",
            "conv_layer_norm": "conv_module.layer_norm",
            "conv.pointwise_conv1": "conv_module.pointwise_conv1",
            "conv.depthwise_conv": "conv_module.depthwise_conv",
            "conv.layer_norm": "conv_module.depthwise_layer_norm",
            "conv.pointwise_conv2": "conv_module.pointwise_conv2",
            "layer_norm": "final_layer_norm",
        }  # fmt: skip
        for key, value in ours.items():
            module, _, tensor = key.rpartition(".")
            if module == "self_attn.sdpa" and tensor in ("u_bias", "v_bias"):
                state[f"{hf}self_attn.pos_bias_{tensor[0]}"] = value
            elif module in names:
                state[f"{hf}{names[module]}.{tensor}"] = value
            else:
                raise HfExportError(f"encoder.layers.{i}.{key}: no Wav2Vec2BertModel counterpart.")
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def feature_extractor_config(config: BirqConfig) -> dict[str, Any]:
    enc = config.encoder_config
    return {
        "feature_extractor_type": "SeamlessM4TFeatureExtractor",
        "feature_size": enc.num_fbank_channels,
        "num_mel_bins": enc.num_fbank_channels,
        "stride": enc.fbank_stride,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "return_attention_mask": True,
    }


def to_wav2vec2_bert(model: BirqModel, source: str = "model") -> Any:
    """A `Wav2Vec2BertModel` (eval mode) computing `model`'s encoder."""
    check_exportable(model.config, source)
    transformers = _transformers()
    hf_model = transformers.Wav2Vec2BertModel(hf_config(model.config))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    if missing or unexpected:
        raise HfExportError(
            f"{source}: the mapping left Wav2Vec2BertModel tensors unset ({', '.join(missing[:3])}) "
            f"or unused ({', '.join(unexpected[:3])})."
        )
    return hf_model.eval()


def export_hf(spec: str | Path, out_dir: Path, *, step: int | None = None) -> Path:
    """Export the encoder of `spec` (a run folder, a birq-export folder or a card name) to
    `out_dir` as a transformers folder; returns `out_dir`."""
    try:
        source = resolve_model(spec, step=step)
    except ModelSourceError as ex:
        raise HfExportError(str(ex)) from None
    if source.family != BIRQ_FAMILY:
        raise HfExportError(
            f"{spec}: a {source.family} model; --format hf exports pretrained encoders "
            f"({BIRQ_FAMILY} family)."
        )
    model = source.load(device=torch.device("cpu"))
    hf_model = to_wav2vec2_bert(model, str(spec))
    out_dir = Path(out_dir)
    hf_model.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(feature_extractor_config(model.config), indent=2) + "\n"
    )
    return out_dir
