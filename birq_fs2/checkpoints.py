"""The model states a recipe run keeps, found and read the same way for DDP and FSDP runs.

fairseq2's checkpoint manager writes the model state of step N as

    RUN_DIR/checkpoints/step_N/model/pp_{PP}/tp_{TP}/sdp_{R}.pt

one file per sharded-data-parallel rank: a single ``sdp_00.pt`` with the whole state for
DDP (and one process), one local shard per rank for FSDP. An FSDP shard holds dim-0
slices of every parameter (DTensor / ShardedTensor ``to_local``) but whole copies of the
buffers, which FSDP does not shard; `merge_shards` tells the two apart by the shapes of
a reference state (the model built on the meta device), so the merged state is exactly
what ``model.state_dict()`` of the unsharded model would be.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

CHECKPOINTS_DIR = "checkpoints"
MODEL_METADATA_FILE = "model.yaml"
_STEP_DIR = re.compile(r"step_(\d+)")
_SHARD = re.compile(r"sdp_(\d+)\.pt")


class CheckpointError(ValueError):
    """A run folder without the checkpoint asked for; the message names the path."""


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps with a checkpoint folder, ascending."""
    ckpt = Path(run_dir) / CHECKPOINTS_DIR
    return sorted(
        int(m.group(1)) for p in ckpt.glob("step_*") if (m := _STEP_DIR.fullmatch(p.name))
    )


def best_step(run_dir: Path) -> int | None:
    """The step with the best validation score still on disk (fairseq2 writes scores
    oriented so that higher is better), or None without scores."""
    steps = set(checkpoint_steps(run_dir))
    scored = []
    for f in (Path(run_dir) / CHECKPOINTS_DIR / "scores").glob("step_*.txt"):
        m = _STEP_DIR.fullmatch(f.stem)
        if m and int(m.group(1)) in steps:
            scored.append((float(f.read_text().split()[0]), int(m.group(1))))
    return max(scored)[1] if scored else None


def select_step(run_dir: Path, step: int | None = None) -> int:
    """`step` if it has a checkpoint, else the best scored step, else the last."""
    run_dir = Path(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"{run_dir / CHECKPOINTS_DIR}: no checkpoints (step_N folders).")
    if step is None:
        return best_step(run_dir) or steps[-1]
    if step not in steps:
        raise CheckpointError(
            f"{run_dir / CHECKPOINTS_DIR}: no checkpoint of step {step} (have {', '.join(map(str, steps))})."
        )
    return step


def model_state_files(run_dir: Path, step: int) -> list[Path]:
    """The model state files of `step`: one for DDP runs, one per rank for FSDP runs."""
    model_dir = Path(run_dir) / CHECKPOINTS_DIR / f"step_{step}" / "model"
    pp_tp = sorted(model_dir.glob("pp_*/tp_*"))
    if len(pp_tp) > 1:
        raise CheckpointError(
            f"{model_dir}: a pipeline- or tensor-parallel checkpoint ({len(pp_tp)} pp/tp folders); "
            "only data-parallel (DDP, FSDP) runs can be read here."
        )
    files = sorted(
        (int(m.group(1)), f)
        for f in (pp_tp[0].glob("sdp_*.pt") if pp_tp else ())
        if (m := _SHARD.fullmatch(f.name))
    )
    if not files:
        raise CheckpointError(f"{model_dir / 'pp_00' / 'tp_00' / 'sdp_00.pt'}: missing.")
    if [rank for rank, _ in files] != list(range(len(files))):
        raise CheckpointError(
            f"{pp_tp[0]}: shards {[f.name for _, f in files]} are not sdp_00 .. sdp_{len(files) - 1:02d}."
        )
    return [f for _, f in files]


def merge_shards(
    shards: list[Mapping[str, Tensor]], reference: Mapping[str, Tensor], source: Path
) -> dict[str, Tensor]:
    """One unsharded state from the per-rank states of an FSDP checkpoint (or the only
    state of a DDP one): a tensor whose first shard already has the reference shape is a
    replicated buffer (taken from rank 0), any other is concatenated along dim 0."""
    merged: dict[str, Tensor] = {}
    for key, ref in reference.items():
        parts = [s[key] for s in shards if key in s]
        if not parts:
            raise CheckpointError(f"{source}: no tensor {key!r} in any shard.")
        if len(shards) == 1 or parts[0].shape == ref.shape:
            value = parts[0]
        else:
            value = torch.cat(parts, dim=0)
        if value.shape != ref.shape:
            raise CheckpointError(
                f"{source}: {key!r} has shape {tuple(value.shape)} after merging {len(parts)} shards, "
                f"the model expects {tuple(ref.shape)}."
            )
        merged[key] = value
    return merged


def load_model_state(
    run_dir: Path, step: int, reference: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The unsharded model state of `step` (keys and shapes of `reference`)."""
    files = model_state_files(run_dir, step)
    shards = []
    for f in files:
        if (damage := damaged(f)) is not None:
            others = [s for s in checkpoint_steps(run_dir) if s != step]
            hint = f" Other steps on disk: {', '.join(map(str, others))}." if others else ""
            raise CheckpointError(f"{f}: {damage}.{hint}")
        try:
            shards.append(torch.load(f, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as ex:
            raise CheckpointError(f"{f}: {refused_pickle(ex)}") from None
    return merge_shards(shards, reference, files[0].parent)


def unpickling_error(ex: BaseException) -> pickle.UnpicklingError | None:
    """The UnpicklingError behind `ex` (fairseq2 wraps torch.load's), if any."""
    seen: set[int] = set()
    cause: BaseException | None = ex
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, pickle.UnpicklingError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def refused_pickle(ex: pickle.UnpicklingError) -> str:
    """Why a weights file was not loaded: it holds more than tensors, and unpickling those
    objects could run code. Every model load here is tensors-only (weights_only)."""
    blocked = re.search(r"GLOBAL (\S+)", str(ex))
    what = f" ({blocked.group(1)})" if blocked else ""
    return (
        f"refused: the file holds Python objects other than tensors{what}, which could run "
        "code when unpickled; only tensors are loaded. Re-export the model from a run you trust."
    )


def step_dir_name(run_dir: Path, step: int) -> str:
    """How an exported card names its origin: the run folder's name and the step, not the
    exporting machine's absolute path (a card is meant to be shared)."""
    return f"{Path(run_dir).resolve().name}/{CHECKPOINTS_DIR}/step_{step}"


def damaged(file: Path) -> str | None:
    """Why a checkpoint file (torch.save's zip format) cannot be read whole: missing, empty,
    truncated or with a member whose CRC does not match; None when it reads whole. Reads
    every byte but unpickles nothing."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except FileNotFoundError:
        return "missing"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as ex:
        size = file.stat().st_size if file.exists() else 0
        return f"damaged checkpoint file ({'empty' if size == 0 else 'truncated or corrupt'}: {ex})"
    if bad is not None:
        return f"damaged checkpoint file (member {bad} fails its CRC check)"
    return None


def set_aside_damaged_steps(run_dir: Path) -> list[str]:
    """Before a resume: while the last checkpoint has a damaged file (a write cut short by
    a full disk, a copy gone wrong), rename its folder to ``step_N.damaged`` (kept, so
    nothing is lost; fairseq2 ignores it) so that training resumes from the step before.
    Returns one message per step set aside."""
    notes = []
    ckpt = Path(run_dir) / CHECKPOINTS_DIR
    for step in reversed(checkpoint_steps(run_dir)):
        step_dir = ckpt / f"step_{step}"
        problems = [(f, why) for f in sorted(step_dir.rglob("*.pt")) if (why := damaged(f))]
        if not problems:
            break
        target = step_dir.with_name(f"step_{step}.damaged")
        n = 1
        while target.exists():
            n += 1
            target = step_dir.with_name(f"step_{step}.damaged{n}")
        step_dir.rename(target)
        file, why = problems[0]
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        notes.append(f"{file}: {why}{more}; step {step} set aside as {target.name}")
    return notes
