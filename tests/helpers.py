"""What several test modules share: paths, the environment of recipe subprocesses, command
runners, metric readers and checkpoint access (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

# Run folders are launched and read by birq_fs2.experiments.runs; the tests import
# PRETRAIN_PRESET, metrics (its run_metrics) and model_state from here.
from birq_fs2.experiments.runs import (
    PRETRAIN_PRESET,  # noqa: F401
    model_state,
    recipe_command,
    recipe_env,
)
from birq_fs2.experiments.runs import run_metrics as metrics  # noqa: F401

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "librispeech"
ENV = recipe_env()


def run(cmd: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """A command with the recipes' test environment; output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **env}, timeout=timeout)


def python(code: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (fairseq2 initialises once per process)."""
    return run([sys.executable, "-c", code], timeout=timeout, **env)


def pretrain_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return recipe_command("pretrain", out, corpus, *overrides)


def finetune_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    # The fixtures are tiny: half of them labelled (subset by common.seed), not the
    # preset's 10 minutes of the demo corpus.
    return recipe_command(
        "finetune", out, corpus, "dataset.train_fraction=0.5", "dataset.train_subset_seed=null",
        *overrides,
    )  # fmt: skip


def fsdp_shard_run(run_dir: Path, step: int, dest: Path, parameters: set[str], world: int = 2):
    """`dest`: a copy of a run's metadata and config whose step `step` is laid out as an
    FSDP run of `world` ranks writes it: per rank, dim-0 chunks of every parameter
    (``to_local`` of a Shard(0) DTensor) and whole copies of the buffers."""
    import shutil

    state = model_state(run_dir, step)
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "model.yaml", dest / "checkpoints" / "model.yaml")
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    shard_dir = dest / "checkpoints" / f"step_{step}" / "model" / "pp_00" / "tp_00"
    shard_dir.mkdir(parents=True)
    for rank in range(world):
        local = {}
        for key, value in state.items():
            if key in parameters:
                chunks = torch.chunk(value, world, dim=0)
                local[key] = chunks[rank].clone() if rank < len(chunks) else value[:0].clone()
            else:
                local[key] = value.clone()
        torch.save(local, shard_dir / f"sdp_{rank:02d}.pt")
