"""Configuration of the CTC fine-tuning recipe (``birq-finetune``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from fairseq2.models.wav2vec2.asr import WAV2VEC2_ASR_FAMILY
from fairseq2.recipe.config import (
    ADAMW_OPTIMIZER,
    TRI_STAGE_LR,
    AdamWConfig,
    CommonSection,
    DatasetSection,
    GangSection,
    LRSchedulerSection,
    MixedPrecisionConfig,
    ModelSection,
    OptimizerSection,
    RegimeSection,
    TrainerSection,
    TriStageLRConfig,
)
from fairseq2.utils.validation import ValidationResult

from birq_fs2.data.dataset import BIRQ_ASR_FAMILY
from birq_fs2.data.pipeline import SpeechPipelineConfig
from birq_fs2.recipes.speed import SpeedSection


@dataclass(kw_only=True)
class FinetuneDatasetSection(DatasetSection):
    """`name`: a dataset card; or `family: birq_asr` with `config_overrides: {path: DIR}`."""

    name: str | None = None
    """A dataset asset card (family ``birq_asr``), instead of `family` + `config_overrides`."""
    family: str | None = BIRQ_ASR_FAMILY
    train_split: str = "train"
    """The labelled training split (audio with transcripts)."""
    valid_split: str | None = "dev"
    """Decoded for WER / CER every regime.validate_every_n_steps; None: no validation."""
    train_fraction: float = 1.0
    """The labelled part: a fixed subset of this fraction of the training utterances,
    chosen by a hash of (train_subset_seed, utterance id)."""
    train_subset_seed: int | None = None
    """Seed of the labelled subset; None: common.seed. Set it to compare fine-tuning seeds
    on the same labelled utterances."""
    pipeline: SpeechPipelineConfig = field(
        # Over-long utterances are skipped, not cropped: a crop would cut the transcript.
        default_factory=lambda: SpeechPipelineConfig(
            min_frames=100, max_frames=3500, max_frames_per_batch=35_000
        )
    )
    """Audio -> fbank -> batches (the feature settings travel with exported models)."""

    def validate(self) -> ValidationResult:
        result = ValidationResult()
        if not 0.0 < self.train_fraction <= 1.0:
            result.add_error(f"`train_fraction` must be in (0, 1], got {self.train_fraction}.")
        return result


@dataclass(kw_only=True)
class PretrainedEncoderSection:
    model: str | None = None
    """The pretrained BiRQ / BEST-RQ model whose encoder is fine-tuned: an asset card
    name, a ``birq-export`` folder or a ``birq-pretrain`` output folder. None: the
    encoder starts from random weights (the no-pretraining baseline)."""
    step: int | None = None
    """Checkpoint step of a ``birq-pretrain`` folder (default: its last)."""
    freeze_encoder_for_n_steps: int = 0
    """Only the CTC head trains for this many steps, then the whole model (applies with
    a pretrained encoder only: freezing a random encoder just wastes steps)."""

    def validate(self) -> ValidationResult:
        result = ValidationResult()
        if self.freeze_encoder_for_n_steps < 0:
            result.add_error(
                f"`freeze_encoder_for_n_steps` must be >= 0, got {self.freeze_encoder_for_n_steps}."
            )
        return result


@dataclass(kw_only=True)
class BirqFinetuneConfig:
    """``birq-finetune``: fairseq2's recipe sections plus `pretrained`."""

    model: ModelSection = field(
        default_factory=lambda: ModelSection(family=WAV2VEC2_ASR_FAMILY, arch="birq_base")
    )
    pretrained: PretrainedEncoderSection = field(default_factory=PretrainedEncoderSection)
    speed: SpeedSection = field(default_factory=SpeedSection)
    """Throughput knobs that keep the computation (birq_fs2.recipes.speed); all on."""
    dataset: FinetuneDatasetSection = field(default_factory=FinetuneDatasetSection)
    gang: GangSection = field(default_factory=GangSection)
    trainer: TrainerSection = field(
        default_factory=lambda: TrainerSection(
            mixed_precision=MixedPrecisionConfig(dtype=torch.bfloat16), max_grad_norm=10.0
        )
    )
    optimizer: OptimizerSection = field(
        default_factory=lambda: OptimizerSection(
            name=ADAMW_OPTIMIZER,
            config=AdamWConfig(lr=5e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0),
        )
    )
    lr_scheduler: LRSchedulerSection = field(
        default_factory=lambda: LRSchedulerSection(
            name=TRI_STAGE_LR,
            config=TriStageLRConfig(stage_ratio=(0.1, 0.4, 0.5), final_lr_scale=0.05),
        )
    )
    regime: RegimeSection = field(
        default_factory=lambda: RegimeSection(
            num_steps=20_000,
            validate_every_n_steps=1_000,
            checkpoint_every_n_steps=1_000,
            score_metric="wer",
            keep_best_n_checkpoints=1,
            keep_last_n_checkpoints=1,
            publish_metrics_every_n_steps=100,
        )  # fmt: skip
    )
    common: CommonSection = field(default_factory=CommonSection)
