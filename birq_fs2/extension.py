"""fairseq2 extension entry point (``[project.entry-points."fairseq2.extension"]``).

fairseq2 calls `setup_birq_fs2` with its dependency container once per process, after
its own families are registered.
"""

from __future__ import annotations

from fairseq2.composition import register_dataset_family, register_package_assets
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


def setup_birq_fs2(container: DependencyContainer) -> None:
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
