"""Configuration of the BiRQ / BEST-RQ pretraining recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from fairseq2.recipe.config import (
    ADAMW_OPTIMIZER,
    POLYNOMIAL_DECAY_LR,
    AdamWConfig,
    CommonSection,
    DatasetSection,
    GangSection,
    LRSchedulerSection,
    MixedPrecisionConfig,
    ModelSection,
    OptimizerSection,
    PolynomialDecayLRConfig,
    RegimeSection,
    TrainerSection,
)
from fairseq2.utils.validation import ValidationResult

from birq_fs2.data.dataset import BIRQ_SPEECH_FAMILY
from birq_fs2.data.pipeline import SpeechPipelineConfig
from birq_fs2.models.config import BIRQ_FAMILY
from birq_fs2.recipes.speed import SpeedSection


@dataclass(kw_only=True)
class PretrainDatasetSection(DatasetSection):
    """`name`: a dataset card; or `family: birq_speech` with `config_overrides: {path: DIR}`."""

    name: str | None = None
    """A dataset asset card (family ``birq_speech``), instead of `family` + `config_overrides`."""
    family: str | None = BIRQ_SPEECH_FAMILY
    train_split: str = "train"
    """The unlabelled training split (a manifest ``<split>.tsv`` or a LibriSpeech subset)."""
    valid_split: str | None = "dev"
    """Validated every regime.validate_every_n_steps; None: no validation."""
    pipeline: SpeechPipelineConfig = field(default_factory=SpeechPipelineConfig)
    """Audio -> fbank -> batches (the feature settings travel with exported models)."""


REFINE_START_DIVISOR = 10
"""Without `schedule.refine_start_step`, the warm-up is regime.num_steps // 10 steps."""


@dataclass(kw_only=True)
class BirqScheduleSection:
    """Step-driven schedules of the bilevel objective (pure functions of the step number,
    so a resumed run continues with exactly the values it would have had)."""

    refine_start_step: int | None = None
    """The last step of the pure BEST-RQ warm-up: the enhanced loss is active from the
    step after (0: from step 1). None: a tenth of regime.num_steps (rounded down), which
    moves with num_steps: set a step count before extending a run whose warm-up is over."""
    enhanced_weight: float = 1.0
    """w, the weight of the enhanced loss once active: L = w * L_enh + gamma * L_anc
    (the paper's w1 = 0.1 with gamma = w2 = 2.4). Under AdamW only the ratio gamma / w
    matters much (Adam divides each parameter's step by its gradient's scale; gradient
    clipping and eps see the absolute values)."""
    enhanced_warmup_steps: int = 0
    """The weight of the enhanced loss ramps linearly from 0 to `enhanced_weight` over
    this many steps after refine start (0: at once)."""
    gamma: float = 1.0
    """Penalty weight of the anchoring loss: L = w * L_enh + gamma * L_anc."""
    gamma_final: float | None = None
    """If set, gamma grows linearly from `gamma` (at refine start) to this (last step)."""
    tau_max: float = 2.0
    """Gumbel temperature at refine start."""
    tau_min: float = 0.5
    """Floor of the Gumbel temperature."""
    tau_decay: float = 0.999995
    """Gumbel temperature: tau_max * tau_decay^(steps since refine start), floored at tau_min."""
    collapse_ratio: float = 0.05
    """Collapse guard: after refine start, an enhanced code perplexity below this fraction
    of the anchor's (same publish interval) logs one warning with the numbers (0: off)."""
    stop_on_collapse: bool = False
    """With the guard tripped, stop the run (exit status 1) instead of warning."""

    def refine_start(self, num_steps: int) -> int:
        """The last step of the warm-up (the enhanced loss is active after it)."""
        if self.refine_start_step is not None:
            return self.refine_start_step
        return num_steps // REFINE_START_DIVISOR

    def validate(self) -> ValidationResult:
        result = ValidationResult()
        if self.refine_start_step is not None and self.refine_start_step < 0:
            result.add_error(
                f"`schedule.refine_start_step` must be >= 0 (a step count), got {self.refine_start_step}."
            )
        if not 0 < self.tau_min <= self.tau_max:
            result.add_error(
                f"`schedule.tau_min` ({self.tau_min}) must be in (0, tau_max = {self.tau_max}]."
            )
        if not 0 < self.tau_decay <= 1:
            result.add_error(f"`schedule.tau_decay` must be in (0, 1], got {self.tau_decay}.")
        if self.gamma < 0:
            result.add_error(f"`schedule.gamma` must be >= 0, got {self.gamma}.")
        if self.enhanced_weight < 0:
            result.add_error(
                f"`schedule.enhanced_weight` must be >= 0, got {self.enhanced_weight}."
            )
        if self.enhanced_warmup_steps < 0:
            result.add_error(
                f"`schedule.enhanced_warmup_steps` must be >= 0, got {self.enhanced_warmup_steps}."
            )
        if not 0.0 <= self.collapse_ratio < 1.0:
            result.add_error(
                f"`schedule.collapse_ratio` must be in [0, 1), got {self.collapse_ratio}."
            )
        return result


@dataclass(kw_only=True)
class BirqPretrainConfig:
    """``birq-pretrain``: the sections are fairseq2's own recipe sections plus `schedule`."""

    model: ModelSection = field(
        default_factory=lambda: ModelSection(family=BIRQ_FAMILY, arch="base")
    )
    dataset: PretrainDatasetSection = field(default_factory=PretrainDatasetSection)
    gang: GangSection = field(default_factory=GangSection)
    trainer: TrainerSection = field(
        default_factory=lambda: TrainerSection(
            mixed_precision=MixedPrecisionConfig(dtype=torch.bfloat16), max_grad_norm=10.0
        )
    )
    schedule: BirqScheduleSection = field(default_factory=BirqScheduleSection)
    speed: SpeedSection = field(default_factory=SpeedSection)
    """Throughput knobs that keep the computation (birq_fs2.recipes.speed); all on."""
    optimizer: OptimizerSection = field(
        default_factory=lambda: OptimizerSection(
            name=ADAMW_OPTIMIZER,
            config=AdamWConfig(lr=4e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01),
        )
    )
    lr_scheduler: LRSchedulerSection = field(
        default_factory=lambda: LRSchedulerSection(
            name=POLYNOMIAL_DECAY_LR, config=PolynomialDecayLRConfig(num_warmup_steps=25_000)
        )
    )
    regime: RegimeSection = field(
        default_factory=lambda: RegimeSection(
            num_steps=400_000,
            validate_every_n_steps=5_000,
            checkpoint_every_n_steps=5_000,
            keep_last_n_checkpoints=2,
            publish_metrics_every_n_steps=100,
        )  # fmt: skip
    )
    common: CommonSection = field(default_factory=CommonSection)
