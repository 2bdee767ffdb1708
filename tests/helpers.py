"""What several test modules share: paths, the environment of recipe subprocesses, command
runners, metric readers and checkpoint access (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from birq_fs2.checkpoints import model_state_files
from birq_fs2.experiments.runs import read_metrics

ROOT = Path(__file__).parents[1]
PRETRAIN_PRESET = ROOT / "birq_fs2" / "recipes" / "pretrain" / "configs" / "tiny_cpu.yaml"
FINETUNE_PRESET = ROOT / "birq_fs2" / "recipes" / "finetune" / "configs" / "tiny_cpu.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "librispeech"
ENV = {**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}


def run(cmd: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """A command with the recipes' test environment; output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, env={**ENV, **env}, timeout=timeout)


def python(code: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (fairseq2 initialises once per process)."""
    return run([sys.executable, "-c", code], timeout=timeout, **env)


def pretrain_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "birq_fs2.recipes.pretrain", str(out), "--config-file", str(PRETRAIN_PRESET),
        "--config", f"dataset.config_overrides.path={corpus}", *overrides,
    ]  # fmt: skip


def finetune_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "birq_fs2.recipes.finetune", str(out), "--config-file", str(FINETUNE_PRESET),
        "--config", f"dataset.config_overrides.path={corpus}",
        # The fixtures are tiny: half of them labelled (subset by common.seed), not the
        # preset's 10 minutes of the demo corpus.
        "dataset.train_fraction=0.5", "dataset.train_subset_seed=null", *overrides,
    ]  # fmt: skip


def metrics(run_dir: Path, split: str = "train") -> dict[int, dict]:
    """A run's JSONL metrics by step (the last row of a step repeated by a resume)."""
    path = run_dir / "metrics" / ("train.jsonl" if split == "train" else "valid/valid.jsonl")
    return {m["Step"]: m for m in read_metrics(path)}


def model_state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The model state of a single-process run's step."""
    (only,) = model_state_files(run_dir, step)
    return torch.load(only, map_location="cpu", weights_only=True)


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
