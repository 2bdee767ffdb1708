"""Errors a user can fix, reported by fairseq2's recipe CLI as one line (no traceback),
with exit status 2; a non-finite loss or a label collapse that stops the run as one line
with status 1."""

from __future__ import annotations

from fairseq2.logging import log
from fairseq2.recipe.cli import register_cli_error
from fairseq2.runtime.dependency import DependencyContainer
from torch.nn import Module

from birq_fs2.checkpoints import CheckpointError
from birq_fs2.data.alignments import AlignmentError
from birq_fs2.data.corpus import CorpusError
from birq_fs2.models.asr import EncoderTransferError
from birq_fs2.models.source import ModelSourceError


class RunSetupError(ValueError):
    """A run that cannot start as configured; the message names what and why."""


class LabelCollapseError(RuntimeError):
    """The enhanced labels collapsed and the run was asked to stop on it."""


def _user_error(ex: Exception) -> int:
    log.error("{}", ex)
    return 2


def _training_stopped(ex: Exception) -> int:
    log.error("{}", ex)
    return 1


def register_birq_cli_errors(container: DependencyContainer) -> None:
    # fairseq2 looks handlers up by the exact exception type.
    for kls in (
        CorpusError,
        ModelSourceError,
        CheckpointError,
        AlignmentError,
        EncoderTransferError,
        RunSetupError,
    ):
        register_cli_error(container, kls, _user_error)
    register_cli_error(container, FloatingPointError, _training_stopped)
    register_cli_error(container, LabelCollapseError, _training_stopped)


def check_feature_dims(num_mel_bins: int, model: Module) -> None:
    """Stop at setup when the data's filterbank does not have the channels the model's
    front end stacks (it would fail later on a reshape, or train on the wrong features)."""
    extractor = model.encoder_frontend.feature_extractor
    channels = getattr(extractor, "num_fbank_channels", None)
    if channels is not None and channels != num_mel_bins:
        raise RunSetupError(
            f"dataset.pipeline.num_mel_bins is {num_mel_bins} but the model's front end expects "
            f"{channels} fbank channels (encoder_config.num_fbank_channels): set one to the other."
        )
