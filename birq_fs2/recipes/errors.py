"""Errors a user can fix, reported by fairseq2's recipe CLI as one line (no traceback),
with exit status 2; a non-finite loss as one line with status 1."""

from __future__ import annotations

from fairseq2.logging import log
from fairseq2.recipe.cli import register_cli_error
from fairseq2.runtime.dependency import DependencyContainer

from birq_fs2.data.corpus import CorpusError
from birq_fs2.models.asr import EncoderTransferError
from birq_fs2.models.hub import ModelSourceError


class RunSetupError(ValueError):
    """A run that cannot start as configured; the message names what and why."""


def _user_error(ex: Exception) -> int:
    log.error("{}", ex)
    return 2


def _non_finite_loss(ex: Exception) -> int:
    log.error("{}", ex)
    return 1


def register_birq_cli_errors(container: DependencyContainer) -> None:
    # fairseq2 looks handlers up by the exact exception type.
    for kls in (CorpusError, ModelSourceError, EncoderTransferError, RunSetupError):
        register_cli_error(container, kls, _user_error)
    register_cli_error(container, FloatingPointError, _non_finite_loss)
