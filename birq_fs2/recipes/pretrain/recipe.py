"""BiRQ / BEST-RQ pretraining on fairseq2's recipe runner (trainer, gangs, checkpoints,
validation, metric recorders). BEST-RQ is the same recipe with a ``bestrq_*`` arch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, final

import torch
from fairseq2.datasets import SequenceBatch
from fairseq2.evaluator import EvalUnit
from fairseq2.logging import log
from fairseq2.metrics import Mean, MetricBag, Sum
from fairseq2.recipe.base import Recipe, RecipeContext
from fairseq2.runtime.dependency import DependencyContainer
from fairseq2.task import Task
from fairseq2.trainer import TrainUnit
from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from birq_fs2.data.alignments import (
    PhoneSegment,
    alignment_files_next_to,
    frame_phones,
    load_alignments,
)
from birq_fs2.data.dataset import SpeechDataset
from birq_fs2.data.pipeline import DataStats
from birq_fs2.frames import SAMPLE_RATE, num_fbank_frames
from birq_fs2.label_stats import codebook_usage, normalized_mutual_information, stream_quality
from birq_fs2.metrics import (
    ENHANCED_KEYS,
    LABEL_QUALITY_METRICS,
    PRETRAIN_METRICS,
    QuietMean,
    add_metrics,
    register_metric_descriptors,
)
from birq_fs2.models.label_streams import frame_label_streams
from birq_fs2.models.model import BirqModel, BirqOutput, BirqStep
from birq_fs2.recipes.errors import (
    LabelCollapseError,
    check_feature_dims,
    register_birq_cli_errors,
)
from birq_fs2.recipes.parallel import (
    log_replica_digest,
    prepare_data_parallel,
)
from birq_fs2.recipes.resume import GracefulStop
from birq_fs2.recipes.speed import apply_speed
from birq_fs2.seeds import derive_seed

from .config import BirqPretrainConfig, BirqScheduleSection


@final
class BirqPretrainRecipe(Recipe):
    @override
    def register(self, container: DependencyContainer) -> None:
        register_birq_cli_errors(container)
        register_metric_descriptors(container, PRETRAIN_METRICS)
        register_metric_descriptors(container, LABEL_QUALITY_METRICS)

    @override
    def setup_model(self, context: RecipeContext, model: Module, newly_initialized: bool) -> Module:
        return apply_speed(model, context.get_config_as(BirqPretrainConfig).speed)

    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(BirqPretrainConfig)
        model = context.get_model_as(BirqModel)
        dp_model = prepare_data_parallel(context, config.trainer.data_parallelism)
        dataset = context.get_dataset_as(SpeechDataset)
        ds = config.dataset
        check_feature_dims(ds.pipeline.features, model)
        log.info(
            "birq: {:,} parameters; enhanced stream {}; label layer {}.",
            sum(p.numel() for p in model.parameters()),
            "on" if model.has_enhanced else "off (BEST-RQ)",
            model.label_layer,
        )
        stats = DataStats()
        train_reader = dataset.create_reader(
            ds.train_split, context.gangs, ds.pipeline, seed=config.common.seed, stats=stats,
            num_accumulate=config.trainer.grad_accumulation.num_batches,
        )  # fmt: skip
        schedule = StepSchedule(
            config.schedule, config.regime.num_steps, config.common.seed, context.gangs.dp.rank
        )
        guard = CollapseGuard(config.schedule)
        stop = GracefulStop(context.gangs)
        unit = BirqTrainUnit(dp_model, model, schedule, stats, guard, stop)
        valid_units, valid_readers = [], []
        if ds.valid_split is not None:
            valid_audio = (u.path for u in dataset.utterances(ds.valid_split))
            alignments = load_alignments(alignment_files_next_to(valid_audio))
            if alignments:
                log.info(
                    "birq: {} validation utterances have phone alignments: label quality (PNMI, "
                    "purity) is logged at every validation.", len(alignments),
                )  # fmt: skip
            valid_units.append(BirqEvalUnit(dp_model, model, schedule, alignments, guard))
            valid_readers.append(
                dataset.create_eval_reader(
                    ds.valid_split, context.gangs, ds.pipeline, seed=config.common.seed + 1
                )
            )
        return stop.install(context.create_trainer(unit, train_reader, valid_units, valid_readers))

    @override
    def has_static_autograd_graph(self, context: RecipeContext) -> bool:
        # Before refine_start the enhanced head takes no part in the loss: under DDP its
        # parameters must be allowed to receive no gradient.
        return False

    @property
    @override
    def config_kls(self) -> type[object]:
        return BirqPretrainConfig


class StepSchedule:
    """gamma, tau, the enhanced-loss switch and the Gumbel noise seeds as pure functions of
    the step number: a resumed run continues with exactly the values it would have had."""

    def __init__(self, section: BirqScheduleSection, num_steps: int, seed: int, rank: int) -> None:
        self.section, self.num_steps, self.seed, self.rank = section, num_steps, seed, rank
        self.refine_start = section.refine_start(num_steps)

    def __call__(self, step_nr: int) -> BirqStep:
        s = self.section
        since = step_nr - self.refine_start
        if s.gamma_final is None or self.num_steps <= self.refine_start:
            gamma = s.gamma
        else:
            frac = min(1.0, max(0.0, since / (self.num_steps - self.refine_start)))
            gamma = s.gamma + frac * (s.gamma_final - s.gamma)
        tau = max(s.tau_min, s.tau_max * s.tau_decay ** max(0, since))
        warmup = s.enhanced_warmup_steps
        ramp = min(1.0, max(0, since) / warmup) if warmup > 0 else 1.0
        weight = s.enhanced_weight * ramp
        return BirqStep(enhanced_active=since > 0, enhanced_weight=weight, gamma=gamma, tau=tau)

    def noise_seed(self, stream: str, step_nr: int, batch_nr: int) -> int:
        """The Gumbel noise seed of one batch: the trainer runs the unit once per
        micro-batch (gradient accumulation) and validation runs many batches per step, so
        the batch index is part of the key, and validation ("valid") draws from its own
        stream, never from the training one."""
        return derive_seed(self.seed, "gumbel", stream, step_nr, self.rank, batch_nr)


def _drop_inactive(values: dict[str, Any]) -> None:
    for name in ENHANCED_KEYS:
        value = values.get(name)
        if isinstance(value, Tensor) and value.isnan().all():
            del values[name]


@final
class BirqCriterion:
    """One batch through the model with the step's schedule values and the batch's own
    Gumbel noise, and its metrics: what the train and eval units share (as fairseq2's
    wav2vec2 SSL recipe shares its criterion). `stream` ("train" or "valid") keys the
    noise, so validation never draws from the training stream."""

    def __init__(
        self, dp_model: Module, model: BirqModel, schedule: StepSchedule, stream: str
    ) -> None:
        self._dp_model, self._model = dp_model, model
        self._schedule, self._stream = schedule, stream
        self.set_step_nr(1)

    def set_step_nr(self, step_nr: int) -> None:
        # Batch indices restart with every step (and every validation), so a step draws
        # the same noise whether or not the run was resumed.
        self.step_nr, self._batch_nr = step_nr, 0
        self.step = self._schedule(step_nr)

    @staticmethod
    def prepare_metric_bag(metric_bag: MetricBag) -> None:
        # The enhanced metrics see no update before refine start: NaN, then left out.
        add_metrics(metric_bag, PRETRAIN_METRICS, LABEL_QUALITY_METRICS)

    def __call__(self, batch: SequenceBatch, metric_bag: MetricBag) -> BirqOutput:
        seqs, layout = batch.as_input()
        seed = self._schedule.noise_seed(self._stream, self.step_nr, self._batch_nr)
        self._batch_nr += 1
        step = replace(self.step, seed=seed)
        out: BirqOutput = self._dp_model(seqs, layout, step)
        if self._stream == "train" and not torch.isfinite(out.loss):
            # Stop at once: a NaN step would poison every later checkpoint.
            enhanced = "off" if out.enhanced_loss is None else f"{out.enhanced_loss.item():.4g}"
            raise FloatingPointError(
                f"Non-finite loss at step {self.step_nr} (anchor {out.anchor_loss.item():.4g}, enhanced "
                f"{enhanced}, utterances {batch.example['ids'][:3]}...). The last checkpoint is intact: "
                "lower optimizer.config.lr (or trainer.max_grad_norm) and re-run the command to resume."
            )
        _update_metrics(metric_bag, batch, out, step, self._model)
        return out


@torch.no_grad()
def _update_metrics(
    bag: MetricBag, batch: SequenceBatch, out: BirqOutput, step: BirqStep, model: BirqModel
) -> None:
    n = out.num_targets
    if n == 0:
        return
    nats_to_bits = 1 / math.log(2)
    bag.get("loss", Mean).update(out.loss.detach() / n * nats_to_bits, weight=n)
    bag.get("anchor_loss", Mean).update(out.anchor_loss.detach() / n * nats_to_bits, weight=n)
    bag.get("anchor_accuracy", Mean).update(out.anchor_correct / n, weight=n)
    used, ppl = codebook_usage(out.anchor_labels.cpu(), model.anchor_quantizer.codebook_size)
    bag.get("anchor_codes_used", Mean).update(torch.tensor(used))
    bag.get("anchor_perplexity", Mean).update(torch.tensor(ppl))
    if (
        out.enhanced_loss is not None
        and out.enhanced_labels is not None
        and out.enhanced_correct is not None
    ):
        assert model.enhanced_quantizer is not None
        bag.get("enhanced_loss", Mean).update(
            out.enhanced_loss.detach() / n * nats_to_bits, weight=n
        )
        bag.get("enhanced_accuracy", Mean).update(out.enhanced_correct / n, weight=n)
        used, ppl = codebook_usage(
            out.enhanced_labels.cpu(), model.enhanced_quantizer.codebook_size
        )
        bag.get("enhanced_codes_used", Mean).update(torch.tensor(used))
        bag.get("enhanced_perplexity", Mean).update(torch.tensor(ppl))
        nmi = normalized_mutual_information(
            out.anchor_labels[:, 0].cpu(), out.enhanced_labels[:, 0].cpu()
        )
        bag.get("label_nmi", Mean).update(torch.tensor(nmi), weight=n)
    if out.diversity_loss is not None:
        bag.get("diversity_loss", Mean).update(out.diversity_loss.detach(), weight=n)
    bag.get("mask_rate", Mean).update(
        torch.tensor(n / max(out.num_frames, 1)), weight=out.num_frames
    )
    bag.get("gamma", Mean).update(torch.tensor(step.gamma))
    bag.get("tau", Mean).update(torch.tensor(step.tau))
    bag.get("enhanced_weight", Mean).update(
        torch.tensor(step.enhanced_weight if out.enhanced_loss is not None else 0.0)
    )
    bag.get("num_targets", Sum).update(torch.tensor(n))
    bag.get("num_examples", Sum).update(torch.tensor(batch.num_examples))


@final
class CollapseGuard:
    """One warning (or, with stop_on_collapse, a stop) when the enhanced labels use a small
    fraction of the codes the anchor labels use: the collapse that makes L_enh trivially
    small and the encoder learn nothing from it.

    Two readings: the training labels (sampled with Gumbel noise) and, at validation, the
    noise-free labels. The sampled perplexity alone can hide a collapse: at a high tau the
    noise alone spreads the labels over many codes while the argmax uses one or two."""

    READINGS = {
        "enhanced_perplexity": "code perplexity",
        "enhanced_noise_free_perplexity": "noise-free code perplexity (validation)",
    }

    def __init__(self, section: BirqScheduleSection) -> None:
        self._section = section
        self._reported: set[str] = set()

    def check(self, values: Mapping[str, Any], key: str, step_nr: int) -> None:
        ratio = self._section.collapse_ratio
        if ratio <= 0 or key not in values or key in self._reported:
            return
        enhanced, anchor = float(values[key]), float(values["anchor_perplexity"])
        if enhanced >= ratio * anchor:
            return
        message = (
            f"Enhanced labels collapsed at step {step_nr}: {self.READINGS[key]} {enhanced:.1f} "
            f"against the anchor's {anchor:.1f} (below schedule.collapse_ratio = {ratio} of it)."
        )
        if self._section.stop_on_collapse:
            raise LabelCollapseError(
                message + " Stopping (schedule.stop_on_collapse); the last checkpoint is intact."
            )
        log.warning("{} Training goes on (schedule.stop_on_collapse: true stops it).", message)
        self._reported.add(key)


@final
class BirqTrainUnit(TrainUnit[SequenceBatch]):
    def __init__(
        self,
        dp_model: Module,
        model: BirqModel,
        schedule: StepSchedule,
        stats: DataStats,
        guard: CollapseGuard | None = None,
        stop: GracefulStop | None = None,
    ) -> None:
        self._model, self._stats, self._stop = model, stats, stop
        self._criterion = BirqCriterion(dp_model, model, schedule, "train")
        self._guard = guard or CollapseGuard(schedule.section)

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        self._criterion.prepare_metric_bag(metric_bag)

    @override
    def set_step_nr(self, step_nr: int) -> None:
        if self._stop is not None:
            self._stop.poll(step_nr)
        self._criterion.set_step_nr(step_nr)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        out = self._criterion(batch, metric_bag)
        # A summed loss with its target count: the trainer normalises by the step's total.
        return out.loss, out.num_targets

    @override
    def process_metric_values(self, values: dict[str, Any]) -> None:
        _drop_inactive(values)
        values["skipped_utterances"] = self._stats.num_skipped
        self._guard.check(values, "enhanced_perplexity", self._criterion.step_nr)


@final
class BirqEvalUnit(EvalUnit[SequenceBatch]):
    """Validation losses and label statistics; with phone alignments of the validation
    utterances also the label quality of both streams (HuBERT's PNMI and purities, over
    every frame of the utterances this rank validates, on the unmasked input)."""

    def __init__(
        self,
        dp_model: Module,
        model: BirqModel,
        schedule: StepSchedule,
        alignments: Mapping[str, list[PhoneSegment]] | None = None,
        guard: CollapseGuard | None = None,
    ) -> None:
        self._model = model
        self._criterion = BirqCriterion(dp_model, model, schedule, "valid")
        self._guard = guard or CollapseGuard(schedule.section)
        self._alignments = alignments or {}
        self._started = False  # the trainer's calls log the replica digest, not this one
        self.set_train_step_nr(1)

    @property
    @override
    def name(self) -> str | None:
        return "valid"

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        self._criterion.prepare_metric_bag(metric_bag)

    @override
    def set_train_step_nr(self, step_nr: int) -> None:
        # Called once before each validation.
        self._criterion.set_step_nr(step_nr)
        if self._started:
            log_replica_digest(self._model, f"at step {step_nr}")
        self._started = True
        self._frame_labels: dict[str, list[Tensor]] = {}
        self._frame_phones: list[str] = []

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> None:
        self._criterion(batch, metric_bag)
        enhanced = self._model.has_enhanced and self._criterion.step.enhanced_active
        if enhanced or self._alignments:
            self._frame_streams(batch, metric_bag, enhanced)

    def _frame_streams(self, batch: SequenceBatch, metric_bag: MetricBag, enhanced: bool) -> None:
        """Noise-free labels of every frame of the unmasked batch: their code perplexity
        (the collapse guard's second reading) and, for the utterances with alignments,
        the frames that the label-quality metrics score."""
        seqs, layout = batch.as_input()
        model = self._model
        layers = [model.label_layer] if model.has_enhanced else []
        per_utterance = frame_label_streams(model, seqs, layout, layers)
        if enhanced:
            labels = torch.cat([streams[f"layer_{layers[0]}"] for streams in per_utterance])
            assert model.enhanced_quantizer is not None
            used, ppl = codebook_usage(
                labels[:, None].cpu(), model.enhanced_quantizer.codebook_size
            )
            metric_bag.get("enhanced_noise_free_codes_used", QuietMean).update(torch.tensor(used))
            metric_bag.get("enhanced_noise_free_perplexity", QuietMean).update(torch.tensor(ppl))
        frame_seconds = model.config.frame_ms / 1000
        for utt_id, n, streams in zip(
            batch.example["ids"], layout.seq_lens, per_utterance, strict=True
        ):
            segments = self._alignments.get(utt_id)
            # A cropped utterance no longer starts at the alignment's time 0: left out.
            if segments is None or int(n) != num_fbank_frames(
                round(segments[-1].end * SAMPLE_RATE)
            ):
                continue
            self._frame_phones += frame_phones(segments, frame_seconds, streams["anchor"].shape[0])
            self._frame_labels.setdefault("anchor", []).append(streams["anchor"])
            if layers:
                self._frame_labels.setdefault("enhanced", []).append(streams[f"layer_{layers[0]}"])

    @override
    def process_metric_values(self, values: dict[str, Any]) -> None:
        _drop_inactive(values)
        self._guard.check(values, "enhanced_noise_free_perplexity", self._criterion.step_nr)
        if not self._frame_phones:
            return
        for stream, quality in stream_quality(self._frame_labels, self._frame_phones).items():
            values[f"{stream}_pnmi"] = quality.pnmi
            values[f"{stream}_phone_purity"] = quality.phone_purity
        values["label_quality_frames"] = len(self._frame_phones)
