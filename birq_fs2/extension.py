"""fairseq2 extension entry point (``[project.entry-points."fairseq2.extension"]``).

fairseq2 calls `setup_birq_fs2` with its dependency container once per process, after
its own families are registered.
"""

from __future__ import annotations

from fairseq2.composition import (
    register_dataset_family,
    register_model_family,
    register_package_assets,
)
from fairseq2.models.wav2vec2 import apply_ac_to_wav2vec2, apply_fsdp_to_wav2vec2
from fairseq2.models.wav2vec2.asr import (
    Wav2Vec2AsrModel,
    apply_ac_to_wav2vec2_asr,
    apply_fsdp_to_wav2vec2_asr,
)
from fairseq2.runtime.dependency import DependencyContainer

from birq_fs2.data.dataset import (
    BIRQ_ASR_FAMILY,
    BIRQ_SPEECH_FAMILY,
    AsrDataset,
    AsrDatasetConfig,
    SpeechDataset,
    SpeechDatasetConfig,
    open_asr_dataset,
    open_speech_dataset,
)
from birq_fs2.models.asr import (
    BIRQ_CTC_FAMILY,
    BirqCtcConfig,
    create_birq_ctc_model,
    register_birq_asr_archs,
)
from birq_fs2.models.config import BIRQ_FAMILY, BirqConfig, register_birq_archs
from birq_fs2.models.factory import create_birq_model
from birq_fs2.models.model import BirqModel


def setup_birq_fs2(container: DependencyContainer) -> None:
    register_model_family(
        container, BIRQ_FAMILY, kls=BirqModel, config_kls=BirqConfig, factory=create_birq_model,
        # Both only touch `model.encoder`, which is a wav2vec2 conformer encoder.
        fsdp_applier=apply_fsdp_to_wav2vec2, layerwise_ac_applier=apply_ac_to_wav2vec2,
    )  # fmt: skip
    register_birq_archs(container)
    # CTC fine-tuning uses fairseq2's wav2vec2_asr family with BiRQ-shaped encoders, or
    # birq_ctc (the same model class) for encoders with another convolution module.
    register_model_family(
        container, BIRQ_CTC_FAMILY, kls=Wav2Vec2AsrModel, config_kls=BirqCtcConfig,
        factory=create_birq_ctc_model, fsdp_applier=apply_fsdp_to_wav2vec2_asr,
        layerwise_ac_applier=apply_ac_to_wav2vec2_asr,
    )  # fmt: skip
    register_birq_asr_archs(container)
    register_dataset_family(
        container,
        BIRQ_SPEECH_FAMILY,
        SpeechDataset,
        SpeechDatasetConfig,
        opener=open_speech_dataset,
    )
    register_dataset_family(
        container, BIRQ_ASR_FAMILY, AsrDataset, AsrDatasetConfig, opener=open_asr_dataset
    )
    # Asset cards shipped in the wheel (assets/cards/ in a source checkout).
    register_package_assets(container, "birq_fs2.cards")
