"""Data parallelism on CPU processes (gloo): the batch norm of the conformer's convolution
module, and the recipes on torchrun (marker `dist`: `make test-dist`)."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import ENV, finetune_cmd, metrics, pretrain_cmd, run
from torch.nn import BatchNorm1d, SyncBatchNorm

from birq_fs2.checkpoints import checkpoint_steps, model_state_files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch_norm_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from birq_fs2.recipes.parallel import GlooSyncBatchNorm, sync_batch_norm_off_accelerator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(4 * world, 6, 9) * 3 + 1
    upstream = torch.randn_like(x)
    model = torch.nn.Sequential(BatchNorm1d(6))
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.5)
        model[0].bias.uniform_(-1, 1)
    model = SyncBatchNorm.convert_sync_batchnorm(model)  # what fairseq2's to_ddp does
    assert sync_batch_norm_off_accelerator(model) == 1
    assert type(model[0]) is GlooSyncBatchNorm
    part = slice(4 * rank, 4 * (rank + 1))
    mine = x[part].clone().requires_grad_()
    for _ in range(2):  # two steps: the running statistics follow the global batch
        mine.grad = None
        model.zero_grad()
        y = model(mine)
        (y * upstream[part]).sum().backward()
    model.eval()
    evaluated = model(x[part])
    saved = {"y": y.detach(), "x_grad": mine.grad, "w_grad": model[0].weight.grad,
             "b_grad": model[0].bias.grad, "running_mean": model[0].running_mean.clone(),
             "running_var": model[0].running_var.clone(), "eval": evaluated.detach()}  # fmt: skip
    # Under bf16 autocast (the trainer's mixed precision) a bf16 input comes back bf16, its
    # statistics taken in fp32 (and the fp32 running statistics still update).
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        saved["y_bf16"] = model.train()(x[part].bfloat16())
    torch.save(saved, f"{out_dir}/rank_{rank}.pt")
    dist.destroy_process_group()


def test_gloo_sync_batch_norm_matches_batch_norm_of_the_global_batch(tmp_path):
    """Two CPU ranks with half a batch each compute what one BatchNorm computes on the
    whole batch: outputs, input gradients, summed parameter gradients, running statistics."""
    world = 2
    mp.spawn(_batch_norm_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank_{r}.pt") for r in range(world)]

    torch.manual_seed(0)
    x = torch.randn(4 * world, 6, 9) * 3 + 1
    upstream = torch.randn_like(x)
    bn = BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    whole = x.clone().requires_grad_()
    for _ in range(2):
        whole.grad = None
        bn.zero_grad()
        y = bn(whole)
        (y * upstream).sum().backward()
    bn.eval()
    close = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), whole.grad, **close)
    torch.testing.assert_close(sum(r["w_grad"] for r in ranks), bn.weight.grad, **close)
    torch.testing.assert_close(sum(r["b_grad"] for r in ranks), bn.bias.grad, **close)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, **close)
        torch.testing.assert_close(r["running_var"], bn.running_var, **close)
    torch.testing.assert_close(torch.cat([r["eval"] for r in ranks]), bn(x).detach(), **close)
    y_bf16 = torch.cat([r["y_bf16"] for r in ranks])
    assert y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf16.float(), y.detach(), rtol=0.02, atol=0.03)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sync_batch_norm_stays_on_accelerators():
    from birq_fs2.recipes.parallel import sync_batch_norm_off_accelerator

    model = SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(BatchNorm1d(4))).cuda()
    assert sync_batch_norm_off_accelerator(model) == 0 and type(model[0]) is SyncBatchNorm


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *args]  # fmt: skip


def _digests(run_dir: Path) -> list[dict[str, str]]:
    """{when: digest} per rank, from the replica digests each rank logs."""
    out = []
    for rank in (0, 1):
        text = (run_dir / "logs" / f"rank_{rank}.log").read_text()
        found = re.findall(rf"replica digest (.+?) \(rank {rank}\): ([0-9a-f]+)", text)
        out.append(dict(found))
    return out


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_pretrain_and_finetune_in_sync(tmp_path, corpus):
    from birq_fs2.evaluation import evaluate
    from birq_fs2.export import export_checkpoint
    from birq_fs2.metrics import FINETUNE_METRICS, display
    from birq_fs2.models.source import resolve_model
    from birq_fs2.recipes.parallel import parameter_digest

    # BiRQ on 2 CPU processes, crossing refine start (step 2: the enhanced head goes from
    # unused to used) and two validations.
    pre = tmp_path / "pretrain"
    steps = ["regime.num_steps=6", "regime.validate_every_n_steps=3",
             "regime.checkpoint_every_n_steps=3", "regime.publish_metrics_every_n_steps=1",
             "lr_scheduler.config.num_warmup_steps=1", "schedule.refine_start_step=2"]  # fmt: skip
    proc = run(_torchrun(*pretrain_cmd(pre, corpus, *steps)[1:]), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rank0, rank1 = _digests(pre)
    assert set(rank0) == {"after setup", "at step 3", "at step 6"}
    assert rank0 == rank1  # parameters and buffers (batch-norm statistics) identical
    assert len(set(rank0.values())) == 3  # and training moved them
    train = metrics(pre)
    assert display("enhanced_loss") in train[6] and display("enhanced_loss") not in train[1]
    assert train[6][display("anchor_loss")] < train[1][display("anchor_loss")]

    # One process resumes the two-process run (world size 2 -> 1).
    more = [s.replace("num_steps=6", "num_steps=8") for s in steps]
    proc = run(pretrain_cmd(pre, corpus, *more))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (
        "Restoring training from the last checkpoint at step 6."
        in (pre / "logs" / "rank_0.log").read_text()
    )
    assert max(metrics(pre)) == 8

    # Fine-tuning on 2 processes from that encoder, frozen for 2 of 4 steps: both ranks
    # hold the pretrained encoder after setup (rank 0 loads it, DDP broadcasts it).
    ft = tmp_path / "finetune"
    proc = run(_torchrun(*finetune_cmd(
        ft, corpus, f"pretrained.model={pre}", "pretrained.freeze_encoder_for_n_steps=2",
        "regime.num_steps=4", "regime.validate_every_n_steps=4", "regime.checkpoint_every_n_steps=4",
        "regime.publish_metrics_every_n_steps=1",
        # Deterministic features and no length filter: validation and birq-evaluate then
        # decode exactly the same inputs.
        "dataset.pipeline.features.dither=0", "dataset.pipeline.min_frames=1",
    )[1:]), OMP_NUM_THREADS="1")  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rank0, rank1 = _digests(ft)
    assert rank0 == rank1 and set(rank0) >= {
        "after setup",
        "of the encoder after setup",
        "at step 4",
    }
    pretrained = resolve_model(str(pre)).load()
    assert rank0["of the encoder after setup"] == parameter_digest(pretrained.encoder)

    # The exported model, scored in one process, has the WER the two ranks' validation
    # computed together on the same checkpoint.
    export_checkpoint(ft, tmp_path / "asr", "dist_asr", step=4)
    summary, _ = evaluate(str(tmp_path / "asr"), corpus, "dev", None, torch.device("cpu"))
    valid = metrics(ft, "valid")[4]
    assert summary["wer"] == pytest.approx(valid[display("wer", FINETUNE_METRICS)], abs=0.01)


@pytest.mark.slow
def test_bf16_mixed_precision_recipes_on_cpu(tmp_path, corpus):
    """The presets' mixed precision (bf16 autocast) on a CPU: pretraining across refine
    start and fine-tuning from it run with finite losses. (bf16 matmuls are slow on
    CPUs without AMX: tiny batches, two steps each.)"""
    common = ["trainer.mixed_precision.mode=auto", "trainer.mixed_precision.dtype=bfloat16",
              "dataset.pipeline.max_frames=300", "dataset.pipeline.max_frames_per_batch=900",
              "dataset.valid_split=null", "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
              "regime.publish_metrics_every_n_steps=1", "regime.validate_every_n_steps=2"]  # fmt: skip
    pre = tmp_path / "pretrain"
    proc = run(pretrain_cmd(pre, corpus, *common, "lr_scheduler.config.num_warmup_steps=1",
                            "schedule.refine_start_step=1"))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = metrics(pre)
    assert all(math.isfinite(r["Loss"]) for r in rows.values())
    assert "Enhanced Loss" in rows[2]  # the Gumbel path ran in bf16
    ft = tmp_path / "finetune"
    proc = run(finetune_cmd(ft, corpus, *common, f"pretrained.model={pre}",
                            "dataset.pipeline.min_frames=10"))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ctc = [r["CTC Loss"] for r in metrics(ft).values()]
    assert len(ctc) == 2 and all(math.isfinite(v) for v in ctc)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path} (exit {proc.poll()})")


@pytest.mark.dist
@pytest.mark.slow
def test_faults_kill_half_written_and_damaged_checkpoints_and_sigterm(tmp_path, corpus):
    from birq_fs2.cli.export import main as export_main

    out = tmp_path / "run"
    log0 = out / "logs" / "rank_0.log"
    steps = ["regime.validate_every_n_steps=6", "regime.checkpoint_every_n_steps=3",
             "regime.publish_metrics_every_n_steps=1", "lr_scheduler.config.num_warmup_steps=1",
             "schedule.refine_start_step=2"]  # fmt: skip

    def cmd(num_steps: int) -> list[str]:
        return _torchrun(*pretrain_cmd(out, corpus, f"regime.num_steps={num_steps}", *steps)[1:])

    def start(num_steps: int) -> subprocess.Popen:
        return subprocess.Popen(cmd(num_steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**ENV, "OMP_NUM_THREADS": "1"}, start_new_session=True)  # fmt: skip

    # kill -9 of both ranks and the agent mid-run.
    proc = start(12)
    _wait_for(log0, "Checkpoint at step 3 saved", proc)
    agent = psutil.Process(proc.pid)
    for p in [*agent.children(recursive=True), agent]:  # workers run in their own sessions
        p.kill()
    proc.wait(timeout=60)
    last = max(checkpoint_steps(out))
    # A checkpoint whose write was cut short stays a step_N.tmp folder (fairseq2 renames it
    # when complete): here one with a truncated file, which must never be loaded.
    half = out / "checkpoints" / "step_99.tmp"
    shutil.copytree(out / "checkpoints" / f"step_{last}", half)
    for f in half.rglob("*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    proc = run(cmd(12), OMP_NUM_THREADS="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"Restoring training from the last checkpoint at step {last}." in log0.read_text()
    rank0, rank1 = _digests(out)
    assert rank0["at step 12"] == rank1["at step 12"]

    # SIGTERM to torchrun (what a scheduler sends): every rank stops after the same step
    # with a checkpoint of it, the exit status says so, and the run resumes from it.
    proc = start(40)
    _wait_for(out / "metrics" / "train.jsonl", '"Step": 14,', proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    stopped = [int(m) for m in re.findall(r"birq: stopping after step (\d+)", log0.read_text())]
    rank1_log = (out / "logs" / "rank_1.log").read_text()
    assert stopped and f"birq: stopping after step {stopped[-1]}" in rank1_log
    assert max(checkpoint_steps(out)) == stopped[-1] >= 15  # the step after the signal

    # A damaged file in the last checkpoint: birq-export names it; a resume sets the step
    # aside (kept as step_N.damaged) and goes on from the step before.
    (weights,) = model_state_files(out, stopped[-1])
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert (
        export_main([str(out), str(tmp_path / "exp"), "--name", "x", "--step", str(stopped[-1])])
        == 2
    )
    proc = run(pretrain_cmd(out, corpus, f"regime.num_steps={stopped[-1] + 2}", *steps))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    text = log0.read_text()
    assert f"{weights}: damaged checkpoint file" in text and f"step_{stopped[-1]}.damaged" in text
    previous = max(s for s in range(3, stopped[-1], 3))
    assert f"Restoring training from the last checkpoint at step {previous}." in text
    assert (out / "checkpoints" / f"step_{stopped[-1]}.damaged").is_dir()


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp_on_cpu_processes_stops_at_setup_with_the_reason(tmp_path, corpus):
    proc = run(
        _torchrun(*pretrain_cmd(tmp_path / "run", corpus, "trainer.data_parallelism=fsdp")[1:]),
        OMP_NUM_THREADS="1",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exitcode  : 2" in out, out[-3000:]
    log = (tmp_path / "run" / "logs" / "rank_0.log").read_text()
    assert "fsdp does not run on CPU processes" in log and "use ddp on CPUs" in log


@pytest.mark.dist
@pytest.mark.slow
def test_fsdp_on_cpu_processes_trains_and_resumes_with_layer_norm_convolutions(tmp_path, corpus):
    """Without batch norm (conv_module.norm: layer_norm) nothing is converted after
    sharding: BiRQ trains across refine start on 2 CPU processes under FSDP, validates,
    checkpoints per-rank shards, resumes, and the sharded run exports whole."""
    from birq_fs2.metrics import display
    from birq_fs2.models.source import resolve_model

    run_dir = tmp_path / "run"
    steps = ["trainer.data_parallelism=fsdp", "model.config_overrides.conv_module.norm=layer_norm",
             "regime.validate_every_n_steps=2", "regime.checkpoint_every_n_steps=2",
             "regime.publish_metrics_every_n_steps=1", "lr_scheduler.config.num_warmup_steps=1",
             "schedule.refine_start_step=1"]  # fmt: skip
    proc = run(_torchrun(*pretrain_cmd(run_dir, corpus, "regime.num_steps=2", *steps)[1:]),
               OMP_NUM_THREADS="1")  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert len(model_state_files(run_dir, 2)) == 2  # one shard per rank
    proc = run(_torchrun(*pretrain_cmd(run_dir, corpus, "regime.num_steps=4", *steps)[1:]),
               OMP_NUM_THREADS="1")  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    log = (run_dir / "logs" / "rank_0.log").read_text()
    assert "Restoring training from the last checkpoint at step 2." in log
    train = metrics(run_dir)
    assert max(train) == 4 and display("enhanced_loss") in train[4]
    assert 4 in metrics(run_dir, "valid")
    merged = resolve_model(str(run_dir)).load()  # the shards merge into one model
    assert merged.encoder.layers[0].conv.layer_norm is not None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_next_step_boundary(sig, caplog):
    from types import SimpleNamespace

    from birq_fs2.recipes.resume import GracefulStop

    trainer = SimpleNamespace(_max_num_steps=100)
    stop = GracefulStop(SimpleNamespace(root=SimpleNamespace(size=1)))
    before = {s: signal.getsignal(s) for s in GracefulStop.SIGNALS}
    try:
        stop.install(trainer)
        stop.poll(3)
        assert trainer._max_num_steps == 100
        with caplog.at_level("WARNING"):
            os.kill(os.getpid(), sig)  # handled: no KeyboardInterrupt, no exit
            stop.poll(4)
        assert trainer._max_num_steps == 4  # the trainer's end-of-training path after step 4
        assert f"{signal.Signals(sig).name} received" in caplog.text
        assert "stopping after step 4" in caplog.text
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
