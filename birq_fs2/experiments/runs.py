"""Recipe runs as experiments see them: launching (and resuming) one, and reading its folder.

A run folder is what ``python -m birq_fs2.recipes.{pretrain,finetune} OUT`` leaves in OUT:

    OUT/config.yaml                         the configuration the run used
    OUT/metrics/train.jsonl                 fairseq2's training metrics, one row per publish
    OUT/metrics/valid/valid.jsonl           its validation metrics
    OUT/checkpoints/step_N/model/...        the checkpoints (`birq_fs2.checkpoints`)

and a ``birq-evaluate`` folder holds ``summary.json`` and ``hypotheses.tsv``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import birq_fs2

if TYPE_CHECKING:
    import torch

RECIPES = Path(birq_fs2.__file__).parent / "recipes"
PRETRAIN_PRESET = RECIPES / "pretrain" / "configs" / "tiny_cpu.yaml"
FINETUNE_PRESET = RECIPES / "finetune" / "configs" / "tiny_cpu.yaml"
PRESETS = {"pretrain": PRETRAIN_PRESET, "finetune": FINETUNE_PRESET}
"""The CPU presets every experiment starts from (inside the installed package)."""

Recipe = Literal["pretrain", "finetune"]
Split = Literal["train", "valid"]


# --- launching -------------------------------------------------------------------------


def recipe_env() -> dict[str, str]:
    """The environment of a recipe subprocess: this one's, without progress bars."""
    return {**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}


def recipe_command(
    recipe: Recipe, out_dir: Path, corpus: Path, *overrides: str, preset: str | None = None
) -> list[str]:
    """The argv of one run of `recipe` into `out_dir` on `corpus`: the tiny CPU preset
    (or `preset`, a file name among the recipe's configs/), then `overrides` (``key=value``
    config overrides, in order)."""
    config_file = PRESETS[recipe] if preset is None else PRESETS[recipe].parent / preset
    return [
        sys.executable, "-m", f"birq_fs2.recipes.{recipe}", str(out_dir),
        "--config-file", str(config_file),
        "--config", f"dataset.config_overrides.path={corpus}", *overrides,
    ]  # fmt: skip


def run_command(cmd: list[str], log: Path, what: str, *, tag: str = "evidence") -> float:
    """Runs `cmd` (a recipe process) with its output appended to `log`; returns the
    wall-clock seconds. Announces "`tag`: `what` ..." on stderr; a failure raises a
    RuntimeError that names the log and quotes its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{tag}: {what} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=recipe_env())
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}; log {log}):\n{tail}")
    return time.perf_counter() - started


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shared_threads(processes: int) -> int:
    """Intra-op threads of each of `processes` that share this process's cores."""
    return max(1, usable_cores() // processes)


def threads_env(threads: int) -> dict[str, str]:
    """The environment of a process limited to `threads` intra-op threads (OpenMP, MKL)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class RunLocked(RuntimeError):
    """Another runner holds this run (or this step of a plan) now: a runner sharing the
    work folder does something else and comes back to it."""


@contextlib.contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Two runners on one work folder (the comparison and the probes, or the workers of
    `--jobs`) must not train the same run at once: the second gets RunLocked instead of
    corrupting the first. The lock goes with the process (flock), so a killed runner
    leaves none behind."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{what}: another evidence runner is running it now ({path} is locked); "
                "run the other arms or seeds, or wait for it."
            ) from None
        yield


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """A short critical section (a read-modify-write of a shared file) that waits its turn."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def finished(run: Path, steps: int) -> bool:
    """Whether the run has its checkpoint of step `steps` (a recipe resumes from the last)."""
    return (run / "checkpoints" / f"step_{steps}").is_dir()


# --- reading ---------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    """The rows of a JSONL metrics file by step (the last row of a step a resume repeated);
    [] when the file does not exist."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {row["Step"]: row for row in rows}  # a resumed run may repeat a step
    return [by_step[s] for s in sorted(by_step)]


def metrics_file(run_dir: Path, split: Split = "train") -> Path:
    """The JSONL metrics file of a run's training or validation."""
    return run_dir / "metrics" / ("train.jsonl" if split == "train" else "valid/valid.jsonl")


def metric_rows(run_dir: Path, split: Split = "train") -> list[dict]:
    """A run's metric rows of `split`, by step."""
    return read_metrics(metrics_file(run_dir, split))


def run_metrics(run_dir: Path, split: Split = "train") -> dict[int, dict]:
    """A run's metrics of `split` as {step: row}."""
    return {m["Step"]: m for m in metric_rows(run_dir, split)}


def compute_per_step(run: Path) -> float:
    """Mean seconds of computation per training step (fairseq2's "Compute Time", which
    leaves out data loading, checkpoints and validation), over every logged interval but
    the first (one-time start-up costs), or over the first alone when it is the only one."""
    rows = [r for r in metric_rows(run, "train") if "Compute Time" in r]
    first = rows[0]["Step"] if len(rows) > 1 else 0
    total, steps, last = 0.0, 0, first
    for r in rows[1:] if len(rows) > 1 else rows:
        total += r["Compute Time"]
        steps += r["Step"] - last
        last = r["Step"]
    if steps == 0:
        raise RuntimeError(f"{run}: no Compute Time in metrics/train.jsonl")
    return total / steps


def model_state(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The model state of a single-process run's step."""
    import torch

    from birq_fs2.checkpoints import model_state_files

    (only,) = model_state_files(run_dir, step)
    return torch.load(only, map_location="cpu", weights_only=True)


def read_hypotheses(eval_dir: Path) -> list[tuple[str, str, str]]:
    """(utterance id, reference, hypothesis) of a birq-evaluate folder's hypotheses.tsv."""
    lines = (eval_dir / "hypotheses.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(utt_id, ref, hyp) for utt_id, _, _, ref, hyp in (line.split("\t") for line in lines)]
