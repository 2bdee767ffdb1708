"""Stopping and resuming: damaged checkpoints set aside, files that would run code refused,
signals turned into a clean stop."""

from __future__ import annotations

from signal import SIG_DFL, SIGINT, SIGTERM, Signals, raise_signal, signal
from types import FrameType
from typing import final

import torch
from fairseq2.gang import Gangs, ReduceOperation
from fairseq2.logging import log
from fairseq2.recipe.base import RecipeContext
from fairseq2.task import Task
from typing_extensions import override

from birq_fs2.checkpoints import CHECKPOINTS_DIR, checkpoint_steps, set_aside_damaged_steps
from birq_fs2.recipes.errors import RunSetupError
from birq_fs2.safe_load import UnsafeCheckpointError, safe_torch_load


def set_aside_damaged_checkpoints(context: RecipeContext) -> None:
    """fairseq2 resumes from the last checkpoint folder and stops with a traceback when one
    of its files cannot be read. Before the trainer starts, rank 0 sets damaged last steps
    aside (renamed, not deleted) so that the run resumes from the last intact one, and says
    so; every rank waits for it."""
    gangs = context.gangs
    if gangs.root.rank == 0:
        notes = set_aside_damaged_steps(context.output_dir)
        for note in notes:
            log.warning("birq: {}.", note)
        if notes:
            steps = checkpoint_steps(context.output_dir)
            log.warning(
                "birq: resuming from {}.",
                f"step {steps[-1]}" if steps else "the start (no intact checkpoint)",
            )
    gangs.root.barrier()


def refuse_unsafe_checkpoint(context: RecipeContext) -> None:
    """Before the trainer restores the last checkpoint: every file of that step is read
    through the allow-list unpickler (`birq_fs2.safe_load`), since fairseq2 unpickles the
    trainer, optimizer and data-reader states without restriction. The ranks share the
    files out and agree on the outcome, so no rank goes on to load a file another one
    refused; the refusal is one line naming the file (exit status 2)."""
    steps = checkpoint_steps(context.output_dir)
    if not steps:
        return
    step_dir = context.output_dir / CHECKPOINTS_DIR / f"step_{steps[-1]}"
    root = context.gangs.root
    refused: UnsafeCheckpointError | None = None
    for file in sorted(step_dir.rglob("*.pt"))[root.rank :: root.size]:
        try:
            safe_torch_load(file)
        except UnsafeCheckpointError as ex:
            refused = ex
            break
    flag = torch.tensor([0 if refused is None else root.rank + 1])
    if root.size > 1:
        flag = flag.to(root.device)
        root.all_reduce(flag, ReduceOperation.MAX)
    if refused is not None:
        raise RunSetupError(str(refused))
    if int(flag.item()):
        raise RunSetupError(
            f"{step_dir}: refused by rank {int(flag.item()) - 1} (its log names the file); "
            "nothing was loaded."
        )


@final
class GracefulStop:
    """SIGTERM (what schedulers and torchrun send first) and SIGINT (Ctrl-C) stop the run at
    the end of the current step on every rank, with a checkpoint of that step, so the same
    command resumes exactly there; a second signal stops at once. The process then ends
    with the signal's status (143 for SIGTERM), so a script does not go on as if the run
    had finished.

    Ranks receive signals at slightly different times; every step starts with one
    all-reduce of the flag, so all stop after the same step. fairseq2 0.8.1's own stop
    request (SIGUSR1, `Trainer.request_stop`) is ignored when `regime.num_steps` is set
    (`_run_post_step` checks it only without a step limit), so the stop is made by
    lowering the trainer's step limit to the current step: its end-of-training path then
    saves the checkpoint (and validates when due) as at any last step."""

    SIGNALS = (SIGTERM, SIGINT)

    def __init__(self, gangs: Gangs) -> None:
        self._gangs = gangs
        self._received: int | None = None
        self._stopping = False
        self._trainer: Task | None = None

    def install(self, trainer: Task) -> Task:
        self._trainer = trainer
        for sig in self.SIGNALS:
            signal(sig, self._on_signal)
        return _StoppableTask(trainer, self)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._received is not None:  # the second one: now
            signal(signum, SIG_DFL)
            raise_signal(signum)
        self._received = signum
        log.warning(
            "birq: {} received: stopping after this step with a checkpoint (send it again to stop "
            "at once).",
            Signals(signum).name,
        )

    def poll(self, step_nr: int) -> None:
        """At the start of each step: whether any rank received a signal."""
        flag = torch.tensor([0 if self._received is None else self._received])
        if self._gangs.root.size > 1:
            flag = flag.to(self._gangs.root.device)
            self._gangs.root.all_reduce(flag, ReduceOperation.MAX)
        if int(flag.item()) == 0 or self._stopping or self._trainer is None:
            return
        self._stopping = True
        self._received = self._received or int(flag.item())
        self._trainer._max_num_steps = step_nr  # type: ignore[attr-defined]  # see the class doc
        log.warning("birq: stopping after step {}; the same command resumes from it.", step_nr)

    def close(self) -> None:
        if self._stopping and self._received is not None:
            signal(self._received, SIG_DFL)
            raise_signal(self._received)


@final
class _StoppableTask(Task):
    def __init__(self, task: Task, stop: GracefulStop) -> None:
        self._task, self._stop = task, stop

    @override
    def run(self) -> None:
        self._task.run()

    @override
    def request_stop(self) -> None:
        self._task.request_stop()

    @property
    @override
    def step_nr(self) -> int:
        return self._task.step_nr

    @override
    def close(self) -> None:
        self._task.close()  # metrics flushed, checkpoints committed
        self._stop.close()
