"""Reading a run folder's pickles without running code: an unpickler that builds only the
types on an allow-list.

fairseq2 0.8.1 loads a checkpoint's model state with ``torch.load(weights_only=True)`` but
its trainer, optimizer and data-reader states with ``weights_only=False``
(`TensorFileLoadOptions.restrict` is False for them), so a run folder from someone else
could run code when it is resumed: a ``__reduce__`` payload planted in
``trainer/rank_00.pt`` runs before anything checks it. torch's own weights-only unpickler
cannot read those three files either: fairseq2 writes them with pickle protocol 5, whose
FRAME opcode it rejects (pytorch#118092). And fairseq2's loader cannot be swapped: its
dependency container refuses a second provider for `TensorFileLoader`.

So the check is made at our layer: before the trainer restores a step, every file of that
step is read through `safe_torch_load` (``torch.load`` with Python's own unpickler
restricted by `find_class`, as the pickle module's documentation shows), which refuses any
global outside `ALLOWED_GLOBALS` (torch's weights-only allow-list plus the batch types
fairseq2's data readers keep in their state) and builds nothing of a refused file
(`birq_fs2.recipes.resume.refuse_unsafe_checkpoint`). Only then does fairseq2 load them.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch._weights_only_unpickler as _torch_weights_only
from fairseq2.datasets.batch import Seq2SeqBatch, SequenceBatch


def _allowed_globals() -> dict[str, Any]:
    allowed = dict(_torch_weights_only._get_allowed_globals())
    for obj in torch.serialization.get_safe_globals():
        if not isinstance(obj, tuple):
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    # fairseq2's data readers keep prefetched batches in their state: plain classes of
    # tensors, lists and dicts (unpickling one sets attributes; no code of theirs runs).
    for kls in (SequenceBatch, Seq2SeqBatch):
        allowed[f"{kls.__module__}.{kls.__qualname__}"] = kls
    return allowed


ALLOWED_GLOBALS: dict[str, Any] = _allowed_globals()
"""``module.name`` -> object, for every global a checkpoint's pickles may name."""


class UnsafeCheckpointError(ValueError):
    """A pickle naming a global outside `ALLOWED_GLOBALS`; nothing of it was built."""

    def __init__(self, file: Path, global_name: str) -> None:
        super().__init__(
            f"{file}: refused: it names `{global_name}`, which is not one of the types a "
            "checkpoint holds (building it could run code); nothing was loaded. Use only run "
            "folders you trust."
        )
        self.file, self.global_name = file, global_name


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, global_name: str) -> None:
        super().__init__(global_name)
        self.global_name = global_name


class _AllowListUnpickler(pickle.Unpickler):
    # torch.load subclasses this and resolves storages itself before calling find_class.
    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get(f"{module}.{name}")
        if obj is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return obj


# What torch.load takes as `pickle_module`.
_ALLOW_LIST_PICKLE = SimpleNamespace(
    Unpickler=_AllowListUnpickler,
    load=lambda f, **kwargs: _AllowListUnpickler(f, **kwargs).load(),
    __name__=__name__,
)


def safe_torch_load(file: Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load`` of `file` through the allow-list unpickler (any pickle protocol);
    `UnsafeCheckpointError`, naming the file and the global, for a refused one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*weights_only=False.*")
        try:
            return torch.load(
                file, map_location, pickle_module=_ALLOW_LIST_PICKLE, weights_only=False
            )
        except _RefusedGlobal as ex:
            raise UnsafeCheckpointError(Path(file), ex.global_name) from None
