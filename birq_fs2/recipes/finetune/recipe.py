"""CTC fine-tuning of a BiRQ encoder on fairseq2's recipe runner.

The model is fairseq2's ``wav2vec2_asr`` (arch ``birq_tiny`` / ``birq_base`` / ...); a
newly initialised one receives the encoder of ``pretrained.model`` (or keeps its random
weights: the no-pretraining baseline). Validation decodes greedily and reports WER and
CER (jiwer); the trainer keeps the best checkpoint by WER.
"""

from __future__ import annotations

import math
from typing import Any, final

import torch
from fairseq2.datasets import Seq2SeqBatch
from fairseq2.evaluator import EvalUnit
from fairseq2.logging import log
from fairseq2.metrics import Mean, MetricBag, Sum
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrModel
from fairseq2.recipe.base import Recipe, RecipeContext
from fairseq2.runtime.dependency import DependencyContainer
from fairseq2.task import Task
from fairseq2.trainer import TrainUnit
from torch import Tensor
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from birq_fs2.data.dataset import AsrDataset
from birq_fs2.data.pipeline import DataStats
from birq_fs2.data.vocab import CharVocabulary
from birq_fs2.inference import ctc_greedy_ids
from birq_fs2.metrics import FINETUNE_METRICS, QuietMean, register_metric_descriptors
from birq_fs2.models.asr import transfer_encoder
from birq_fs2.models.source import VOCABULARY_FILE, resolve_model
from birq_fs2.recipes.errors import RunSetupError, check_feature_dims, register_birq_cli_errors
from birq_fs2.recipes.parallel import (
    log_replica_digest,
    prepare_data_parallel,
)
from birq_fs2.recipes.resume import GracefulStop
from birq_fs2.recipes.speed import apply_speed
from birq_fs2.scoring import count_errors

from .config import BirqFinetuneConfig

_COUNTS = ("word_errors", "ref_words", "char_errors", "ref_chars")


@final
class BirqFinetuneRecipe(Recipe):
    @override
    def register(self, container: DependencyContainer) -> None:
        register_birq_cli_errors(container)
        register_metric_descriptors(container, FINETUNE_METRICS)

    @override
    def setup_model(self, context: RecipeContext, model: Module, newly_initialized: bool) -> Module:
        config = context.get_config_as(BirqFinetuneConfig)
        if newly_initialized:  # resumed: the checkpoint holds the fine-tuned weights
            _initialise_encoder(model, config)
        return apply_speed(model, config.speed)

    @override
    def create_task(self, context: RecipeContext) -> Task:
        config = context.get_config_as(BirqFinetuneConfig)
        model = context.get_model_as(Wav2Vec2AsrModel)
        dp_model = prepare_data_parallel(context, config.trainer.data_parallelism)
        log_replica_digest(model.encoder, "of the encoder after setup")
        dataset = context.get_dataset_as(AsrDataset)
        ds = config.dataset
        check_feature_dims(ds.pipeline.features, model)
        vocab = dataset.vocabulary
        num_outputs = model.final_proj.output_dim
        if num_outputs != len(vocab):
            raise RunSetupError(
                f"The model's CTC head has {num_outputs} outputs but the vocabulary of {dataset.path} has "
                f"{len(vocab)} symbols: set model.config_overrides.target_vocab_size={len(vocab)}."
            )
        _save_vocabulary(vocab, context, dataset.path)
        stats = DataStats()
        train_reader = dataset.create_reader(
            ds.train_split, context.gangs, ds.pipeline, seed=config.common.seed, stats=stats,
            num_accumulate=config.trainer.grad_accumulation.num_batches,
            fraction=ds.train_fraction, subset_seed=ds.train_subset_seed,
        )  # fmt: skip
        log.info(
            "birq-finetune: {:,} parameters; vocabulary of {} symbols; {:.0%} of split '{}' labelled.",
            sum(p.numel() for p in model.parameters()), len(vocab), ds.train_fraction, ds.train_split,
        )  # fmt: skip
        freeze = config.pretrained.freeze_encoder_for_n_steps if config.pretrained.model else 0
        stop = GracefulStop(context.gangs)
        unit = CtcTrainUnit(dp_model, model, stats, freeze, stop)
        valid_units, valid_readers = [], []
        if ds.valid_split is not None:
            valid_units.append(CtcEvalUnit(dp_model, vocab))
            valid_readers.append(
                dataset.create_eval_reader(
                    ds.valid_split, context.gangs, ds.pipeline, seed=config.common.seed + 1
                )
            )
        return stop.install(context.create_trainer(unit, train_reader, valid_units, valid_readers))

    @override
    def has_static_autograd_graph(self, context: RecipeContext) -> bool:
        # The encoder receives no gradient while it is frozen.
        return False

    @property
    @override
    def config_kls(self) -> type[object]:
        return BirqFinetuneConfig


def _save_vocabulary(vocab: CharVocabulary, context: RecipeContext, data_path: object) -> None:
    """The run directory keeps the vocabulary its CTC head was trained with; a resumed
    run on data with another vocabulary stops here instead of training on shifted ids."""
    path = context.output_dir / VOCABULARY_FILE
    if path.exists():
        saved = CharVocabulary.load(path)
        if saved != vocab:
            raise RunSetupError(
                f"{path}: this run was trained with a different character vocabulary than "
                f"{data_path}'s ({len(saved)} vs {len(vocab)} symbols); use a new output directory."
            )
    elif context.gangs.root.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab.save(path)


def _initialise_encoder(model: Module, config: BirqFinetuneConfig) -> None:
    """A new model receives the encoder of `pretrained.model` (or keeps its random weights:
    the no-pretraining baseline)."""
    source = config.pretrained.model
    if source is None:
        log.info("birq-finetune: no pretrained encoder; training from random weights (baseline).")
        return
    pretrained_source = resolve_model(source, step=config.pretrained.step)
    trained_on, tuning_on = pretrained_source.features, config.dataset.pipeline.features
    if trained_on is not None and trained_on != tuning_on:
        # Allowed (a deliberate change is possible) but rarely what anyone wants.
        log.warning(
            "birq-finetune: {} was pretrained on features {} but dataset.pipeline.features gives {}.",
            source, trained_on.to_dict(), tuning_on.to_dict(),
        )  # fmt: skip
    if any(p.is_meta for p in model.parameters()):
        # fairseq2 initialises a new model on data-parallel rank 0 only; the other
        # ranks hold meta tensors and receive rank 0's weights when it is wrapped.
        return
    pretrained = pretrained_source.load(device=torch.device("cpu"))
    with torch.no_grad():
        n = transfer_encoder(pretrained, model, source)
    where = f" (step {pretrained_source.step})" if pretrained_source.step else ""
    log.info("birq-finetune: encoder initialised from {}{} ({} tensors).", source, where, n)


@final
class CtcTrainUnit(TrainUnit[Seq2SeqBatch]):
    def __init__(
        self,
        dp_model: Module,
        model: Wav2Vec2AsrModel,
        stats: DataStats,
        freeze_for_n_steps: int,
        stop: GracefulStop | None = None,
    ) -> None:
        self._dp_model, self._model, self._stats, self._stop = dp_model, model, stats, stop
        self._freeze_for_n_steps = freeze_for_n_steps
        self._step_nr = 0
        self._frozen: bool | None = None

    @override
    def set_step_nr(self, step_nr: int) -> None:
        if self._stop is not None:
            self._stop.poll(step_nr)
        self._step_nr = step_nr
        frozen = step_nr <= self._freeze_for_n_steps
        if frozen:
            # Frozen means unchanged: the conformer's batch-norm statistics too. Each
            # step, since the trainer puts the whole model back in train mode after
            # validation.
            for module in self._model.encoder.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        if frozen != self._frozen:
            # The front end's projection and the conformer train with the head after
            # the freeze; the fbank stacking has no parameters.
            for part in (self._model.encoder_frontend, self._model.encoder):
                part.requires_grad_(not frozen)
            if self._frozen is not None or frozen:
                log.info("Encoder {} at step {}.", "frozen" if frozen else "unfrozen", step_nr)
            self._frozen = frozen

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        metric_bag.add("ctc_loss", QuietMean())
        metric_bag.add("num_examples", Sum())
        metric_bag.add("num_target_elements", Sum())

    @override
    def process_batch(self, batch: Seq2SeqBatch, metric_bag: MetricBag) -> tuple[Tensor, int]:
        seqs, layout = batch.as_source_input()
        targets, targets_layout = batch.as_target_input()
        loss = self._dp_model(seqs, layout, targets, targets_layout)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite CTC loss at step {self._step_nr} (utterances {batch.example['ids'][:3]}...). "
                "The last checkpoint is intact: lower optimizer.config.lr and re-run the command to resume."
            )
        n, chars = batch.num_examples, batch.num_target_elements
        metric_bag.get("ctc_loss", Mean).update(loss.detach() / chars / math.log(2), weight=chars)
        metric_bag.get("num_examples", Sum).update(torch.tensor(n))
        metric_bag.get("num_target_elements", Sum).update(torch.tensor(chars))
        # Summed over utterances; the trainer divides by the step's utterance count.
        return loss, n

    @override
    def process_metric_values(self, values: dict[str, Any]) -> None:
        values["skipped_utterances"] = self._stats.num_skipped
        # Not a Mean: torcheval warns on every publish when a Mean's sum is 0.
        values["encoder_frozen"] = int(bool(self._frozen))


@final
class CtcEvalUnit(EvalUnit[Seq2SeqBatch]):
    def __init__(self, dp_model: Module, vocab: CharVocabulary) -> None:
        self._dp_model, self._vocab = dp_model, vocab

    @property
    @override
    def name(self) -> str | None:
        return "valid"

    @override
    def set_train_step_nr(self, step_nr: int) -> None:
        log_replica_digest(self._dp_model, f"at step {step_nr}")

    @override
    def prepare_metric_bag(self, metric_bag: MetricBag) -> None:
        metric_bag.add("ctc_loss", QuietMean())
        for name in _COUNTS:
            metric_bag.add(name, Sum())
        metric_bag.add("num_examples", Sum())

    @override
    def process_batch(self, batch: Seq2SeqBatch, metric_bag: MetricBag) -> None:
        seqs, layout = batch.as_source_input()
        targets, targets_layout = batch.as_target_input()
        loss, logits, out_layout = self._dp_model(
            seqs, layout, targets, targets_layout, return_logits=True
        )
        n, chars = batch.num_examples, batch.num_target_elements
        metric_bag.get("ctc_loss", Mean).update(loss.detach() / chars / math.log(2), weight=chars)
        hyps = [self._vocab.decode(ids) for ids in ctc_greedy_ids(logits, out_layout)]
        refs = [
            self._vocab.decode(row[:k].tolist())
            for row, k in zip(targets, targets_layout.seq_lens, strict=True)
        ]
        counts = count_errors(refs, hyps)
        for name in _COUNTS:
            metric_bag.get(name, Sum).update(torch.tensor(getattr(counts, name)))
        metric_bag.get("num_examples", Sum).update(torch.tensor(n))

    @override
    def process_metric_values(self, values: dict[str, Any]) -> None:
        counts = {name: int(values.pop(name)) for name in _COUNTS}
        values["wer"] = 100.0 * counts["word_errors"] / max(counts["ref_words"], 1)
        values["cer"] = 100.0 * counts["char_errors"] / max(counts["ref_chars"], 1)
