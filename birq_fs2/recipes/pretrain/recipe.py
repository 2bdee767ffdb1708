"""BiRQ / BEST-RQ pretraining on fairseq2's recipe runner (trainer, gangs, checkpoints,
validation, metric recorders). BEST-RQ is the same recipe with a ``bestrq_*`` arch."""

from __future__ import annotations

import math
from typing import Any, final

import torch
from fairseq2.datasets import SequenceBatch
from fairseq2.evaluator import EvalUnit
from fairseq2.logging import log
from fairseq2.metrics import Mean, MetricBag, Sum
from fairseq2.metrics.formatters import format_as_float, format_as_int
from fairseq2.metrics.recorders import MetricDescriptor
from fairseq2.recipe.base import Recipe, RecipeContext
from fairseq2.runtime.dependency import DependencyContainer
from fairseq2.task import Task
from fairseq2.trainer import TrainUnit
from torch import Tensor
from torch.nn import Module
from typing_extensions import override

from birq_fs2.data.dataset import SpeechDataset
from birq_fs2.data.pipeline import DataStats
from birq_fs2.models.model import BirqModel, BirqOutput, BirqStep
from birq_fs2.recipes.errors import register_birq_cli_errors
from birq_fs2.seeds import derive_seed

from .config import BirqPretrainConfig, BirqScheduleSection

# name, display name, priority, formatter
_DESCRIPTORS = [
    ("anchor_loss", "Anchor Loss", 101, format_as_float),
    ("enhanced_loss", "Enhanced Loss", 102, format_as_float),
    ("anchor_accuracy", "Anchor Accuracy", 103, format_as_float),
    ("enhanced_accuracy", "Enhanced Accuracy", 104, format_as_float),
    ("anchor_codes_used", "Anchor Codes Used", 105, format_as_float),
    ("anchor_perplexity", "Anchor Code Perplexity", 106, format_as_float),
    ("enhanced_codes_used", "Enhanced Codes Used", 107, format_as_float),
    ("enhanced_perplexity", "Enhanced Code Perplexity", 108, format_as_float),
    ("label_nmi", "Anchor/Enhanced Label NMI", 109, format_as_float),
    ("mask_rate", "Mask Rate", 110, format_as_float),
    ("gamma", "Gamma", 111, format_as_float),
    ("tau", "Gumbel Tau", 112, format_as_float),
    ("num_targets", "Masked Frames", 830, format_as_int),
    ("skipped_utterances", "Skipped Utterances", 831, format_as_int),
]


@final
class BirqPretrainRecipe(Recipe):
    @override
    def register(self, container: DependencyContainer) -> None:
        register_birq_cli_errors(container)
        for name, display, prio, fmt in _DESCRIPTORS:
            container.collection.register_instance(
                MetricDescriptor, MetricDescriptor(name, display, prio, fmt)
            )

    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(BirqPretrainConfig)
        model = context.get_model_as(BirqModel)
        dp_model = context.get_data_parallel_model()
        dataset = context.get_dataset_as(SpeechDataset)
        ds = config.dataset
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
        unit = BirqTrainUnit(dp_model, model, schedule, stats)
        valid_units, valid_readers = [], []
        if ds.valid_split is not None:
            valid_units.append(BirqEvalUnit(dp_model, model, schedule))
            valid_readers.append(
                dataset.create_eval_reader(
                    ds.valid_split, context.gangs, ds.pipeline, seed=config.common.seed + 1
                )
            )
        return context.create_trainer(unit, train_reader, valid_units, valid_readers)

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
    """gamma, tau, the enhanced-loss switch and the Gumbel seed as pure functions of the
    step number: a resumed run continues with exactly the values it would have had."""

    def __init__(self, section: BirqScheduleSection, num_steps: int, seed: int, rank: int) -> None:
        self.section, self.num_steps, self.seed, self.rank = section, num_steps, seed, rank
        r = section.refine_start
        self.refine_start = int(r * num_steps) if r < 1 else int(r)

    def __call__(self, step_nr: int) -> BirqStep:
        s = self.section
        since = step_nr - self.refine_start
        if s.gamma_final is None or self.num_steps <= self.refine_start:
            gamma = s.gamma
        else:
            frac = min(1.0, max(0.0, since / (self.num_steps - self.refine_start)))
            gamma = s.gamma + frac * (s.gamma_final - s.gamma)
        tau = max(s.tau_min, s.tau_max * s.tau_decay ** max(0, since))
        seed = derive_seed(self.seed, step_nr, self.rank)
        return BirqStep(enhanced_active=since > 0, gamma=gamma, tau=tau, seed=seed)


def _add_metrics(bag: MetricBag) -> None:
    for name in ("loss", "anchor_loss", "enhanced_loss", "anchor_accuracy", "enhanced_accuracy",
                 "anchor_codes_used", "anchor_perplexity", "enhanced_codes_used", "enhanced_perplexity",
                 "label_nmi", "mask_rate", "gamma", "tau"):  # fmt: skip
        bag.add(name, Mean())
    bag.add("num_targets", Sum())
    bag.add("num_examples", Sum())


def codebook_usage(labels: Tensor, codebook_size: int) -> tuple[float, float]:
    """(distinct codes used, perplexity = exp(entropy)) of a batch of labels, per codebook mean."""
    used, ppl = [], []
    for g in range(labels.shape[1]):
        counts = torch.bincount(labels[:, g], minlength=codebook_size).float()
        p = counts[counts > 0] / counts.sum()
        used.append(float((counts > 0).sum()))
        ppl.append(float(torch.exp(-(p * p.log()).sum())))
    return sum(used) / len(used), sum(ppl) / len(ppl)


def normalized_mutual_information(a: Tensor, b: Tensor) -> float:
    """NMI (arithmetic normalisation) between two label sequences of the same frames."""
    if a.numel() == 0:
        return 0.0
    _, ia = torch.unique(a, return_inverse=True)
    _, ib = torch.unique(b, return_inverse=True)
    joint = torch.zeros(int(ia.max()) + 1, int(ib.max()) + 1)
    joint.index_put_((ia, ib), torch.ones_like(ia, dtype=torch.float), accumulate=True)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = (joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()
    ha, hb = -(pa * pa.log()).sum(), -(pb * pb.log()).sum()
    denom = (ha + hb) / 2
    return float(mi / denom) if denom > 0 else 1.0


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
    bag.get("mask_rate", Mean).update(
        torch.tensor(n / max(out.num_frames, 1)), weight=out.num_frames
    )
    bag.get("gamma", Mean).update(torch.tensor(step.gamma))
    bag.get("tau", Mean).update(torch.tensor(step.tau))
    bag.get("num_targets", Sum).update(torch.tensor(n))
    bag.get("num_examples", Sum).update(torch.tensor(batch.num_examples))


@final
class BirqTrainUnit(TrainUnit[SequenceBatch]):
    def __init__(
        self, dp_model: Module, model: BirqModel, schedule: StepSchedule, stats: DataStats
    ) -> None:
        self._dp_model, self._model, self._schedule, self._stats = dp_model, model, schedule, stats
        self._step_nr = 1
        self._step = schedule(1)

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        _add_metrics(metric_bag)

    @override
    def set_step_nr(self, step_nr: int) -> None:
        self._step_nr = step_nr
        self._step = self._schedule(step_nr)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        seqs, layout = batch.as_input()
        out: BirqOutput = self._dp_model(seqs, layout, self._step)
        if not torch.isfinite(out.loss):
            # Stop at once: a NaN step would poison every later checkpoint.
            enhanced = "off" if out.enhanced_loss is None else f"{out.enhanced_loss.item():.4g}"
            raise FloatingPointError(
                f"Non-finite loss at step {self._step_nr} (anchor {out.anchor_loss.item():.4g}, enhanced "
                f"{enhanced}, utterances {batch.example['ids'][:3]}...). The last checkpoint is intact: "
                "lower optimizer.config.lr (or trainer.max_grad_norm) and re-run the command to resume."
            )
        _update_metrics(metric_bag, batch, out, self._step, self._model)
        # A summed loss with its target count: the trainer normalises by the step's total.
        return out.loss, out.num_targets

    @override
    def process_metric_values(self, values: dict[str, Any]) -> None:
        values["skipped_utterances"] = self._stats.num_skipped


@final
class BirqEvalUnit(EvalUnit[SequenceBatch]):
    def __init__(self, dp_model: Module, model: BirqModel, schedule: StepSchedule) -> None:
        self._dp_model, self._model, self._schedule = dp_model, model, schedule
        self._step = schedule(1)

    @property
    @override
    def name(self) -> str | None:
        return "valid"

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        _add_metrics(metric_bag)

    @override
    def set_train_step_nr(self, step_nr: int) -> None:
        self._step = self._schedule(step_nr)

    @override
    def process_batch(self, batch: SequenceBatch, metric_bag: MetricBag) -> None:
        seqs, layout = batch.as_input()
        out: BirqOutput = self._dp_model(seqs, layout, self._step)
        _update_metrics(metric_bag, batch, out, self._step, self._model)
