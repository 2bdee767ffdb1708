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
from birq_fs2.data.audio import FbankConfig, feature_mismatch
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


def check_feature_dims(features: FbankConfig, model: Module) -> None:
    """Stop at setup when `dataset.pipeline.features` do not fit the model's front end."""
    problem = feature_mismatch(features, model)
    if problem is not None:
        raise RunSetupError(f"dataset.pipeline.features: {problem}; set one to the other.")
