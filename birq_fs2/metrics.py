"""The metrics of our recipes: one table of keys, display names and kinds.

fairseq2 records a metric under its key in the metric bag and writes it under its display
name (logs, TensorBoard, ``metrics/*.jsonl``). The recipes register the descriptors below;
the reports and tests read the JSONL files through the same names, so a rename here
renames everywhere and cannot silently drop a curve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from fairseq2.metrics import Mean, MetricBag, Sum
from fairseq2.metrics.formatters import format_as_float, format_as_int
from fairseq2.metrics.recorders import MetricDescriptor
from fairseq2.runtime.dependency import DependencyContainer


@dataclass(frozen=True)
class Metric:
    key: str
    """The name in the metric bag (and in `process_metric_values`)."""
    display: str
    """The name in logs and in ``metrics/*.jsonl``."""
    priority: int = 999
    formatter: Callable[[object], str] = format_as_float
    builtin: bool = False
    """Registered by fairseq2 itself; listed so that reports read its display name here."""
    kind: Literal["mean", "sum", "value"] = "value"
    """How a unit accumulates it (`add_metrics`): "mean" (weighted mean over the publish
    interval, a `QuietMean` in the metric bag), "sum" (a `Sum`) or "value" (set when the
    values are published, by the unit's `process_metric_values` or by the trainer)."""
    enhanced: bool = False
    """Pretraining: recorded only while the enhanced stream is active (a BEST-RQ run and
    BiRQ before refine start leave it out of the record)."""


class QuietMean(Mean):
    """torcheval's `Mean` logs "No calls to update() have been made" whenever its weighted
    sum is exactly 0, which a metric that is truly 0 hits on every publish (BiRQ's
    enhanced-loss weight before refine start; always in BEST-RQ). This one computes the
    mean whenever it has weight, NaN when it saw no update in the interval (the enhanced
    metrics of a BEST-RQ run or of BiRQ before refine start, which the recipe then leaves
    out of the record), and never warns."""

    def compute(self) -> torch.Tensor:
        if not self.weights:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.weighted_sum / self.weights


def _table(*metrics: Metric) -> dict[str, Metric]:
    return {m.key: m for m in metrics}


# fairseq2's own descriptors that our reports read (fairseq2/recipe/composition/metric_recorders.py).
LOSS = Metric("loss", "Loss", builtin=True)
CTC_LOSS = Metric("ctc_loss", "CTC Loss", builtin=True)
WER = Metric("wer", "Word Error Rate (WER)", builtin=True)
LEARNING_RATE = Metric("lr", "Learning Rate", builtin=True)

PRETRAIN_METRICS = _table(
    replace(LOSS, kind="mean"),
    LEARNING_RATE,
    Metric("anchor_loss", "Anchor Loss", 101, kind="mean"),
    Metric("enhanced_loss", "Enhanced Loss", 102, kind="mean", enhanced=True),
    Metric("anchor_accuracy", "Anchor Accuracy", 103, kind="mean"),
    Metric("enhanced_accuracy", "Enhanced Accuracy", 104, kind="mean", enhanced=True),
    Metric("anchor_codes_used", "Anchor Codes Used", 105, kind="mean"),
    Metric("anchor_perplexity", "Anchor Code Perplexity", 106, kind="mean"),
    Metric("enhanced_codes_used", "Enhanced Codes Used", 107, kind="mean", enhanced=True),
    Metric("enhanced_perplexity", "Enhanced Code Perplexity", 108, kind="mean", enhanced=True),
    Metric("label_nmi", "Anchor/Enhanced Label NMI", 109, kind="mean", enhanced=True),
    Metric("mask_rate", "Mask Rate", 110, kind="mean"),
    Metric("gamma", "Gamma", 111, kind="mean"),
    Metric("tau", "Gumbel Tau", 112, kind="mean"),
    Metric("enhanced_weight", "Enhanced Loss Weight", 113, kind="mean"),
    # Recorded when enhanced.diversity_weight > 0.
    Metric("diversity_loss", "Diversity Loss", builtin=True, kind="mean", enhanced=True),
    Metric("num_targets", "Masked Frames", 830, format_as_int, kind="sum"),
    Metric("num_examples", "Number of Examples", builtin=True, kind="sum"),
    Metric("skipped_utterances", "Skipped Utterances", 831, format_as_int),
)

LABEL_QUALITY_METRICS = _table(
    Metric(
        "enhanced_noise_free_codes_used",
        "Enhanced Codes Used (noise-free)",
        118,
        kind="mean",
        enhanced=True,
    ),
    Metric(
        "enhanced_noise_free_perplexity",
        "Enhanced Code Perplexity (noise-free)",
        119,
        kind="mean",
        enhanced=True,
    ),
    Metric("anchor_pnmi", "Anchor PNMI", 120),
    Metric("enhanced_pnmi", "Enhanced PNMI", 121),
    Metric("anchor_phone_purity", "Anchor Phone Purity", 122),
    Metric("enhanced_phone_purity", "Enhanced Phone Purity", 123),
    Metric("label_quality_frames", "Phone-Aligned Frames", 832, format_as_int),
)
"""Validation only. The noise-free enhanced code usage of every frame whenever the enhanced
stream is active (the collapse guard's second reading); PNMI and purities when the validation
split has phone alignments (`birq_fs2.label_stats`)."""

FINETUNE_METRICS = _table(
    LOSS,
    LEARNING_RATE,
    CTC_LOSS,
    WER,
    Metric("cer", "Character Error Rate (CER)", 201),
    Metric("encoder_frozen", "Encoder Frozen", 300, format_as_int),
    Metric("skipped_utterances", "Skipped Utterances", 831, format_as_int),
)

ENHANCED_KEYS = tuple(
    m.key
    for table in (PRETRAIN_METRICS, LABEL_QUALITY_METRICS)
    for m in table.values()
    if m.enhanced
)
"""Pretraining metrics of the enhanced stream: recorded only while it is active."""


def add_metrics(bag: MetricBag, *tables: dict[str, Metric]) -> None:
    """The metric bag of a unit: every "mean" and "sum" metric of the tables."""
    for table in tables:
        for m in table.values():
            if m.kind == "mean":
                bag.add(m.key, QuietMean())
            elif m.kind == "sum":
                bag.add(m.key, Sum())


def display(key: str, table: dict[str, Metric] = PRETRAIN_METRICS) -> str:
    """The display name of `key` (the JSONL column)."""
    return table[key].display


def register_metric_descriptors(container: DependencyContainer, table: dict[str, Metric]) -> None:
    for m in table.values():
        if not m.builtin:
            container.collection.register_instance(
                MetricDescriptor, MetricDescriptor(m.key, m.display, m.priority, m.formatter)
            )


def series(rows: Iterable[dict], key: str, table: dict[str, Metric]) -> list[tuple[int, float]]:
    """(step, value) points of metric `key` in JSONL rows; rows without it are skipped,
    zeros are kept."""
    name = table[key].display
    return [(r["Step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
