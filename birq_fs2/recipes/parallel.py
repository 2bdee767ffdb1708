"""Data parallelism where fairseq2's defaults assume a GPU.

fairseq2 turns every BatchNorm of a data-parallel model into torch's SyncBatchNorm
(`to_ddp`, `to_fsdp`), so that batch statistics are those of the global batch; the
conformer's convolution module has one. torch's SyncBatchNorm runs only on accelerators:
on CPU processes (gloo) the first training forward stops with "SyncBatchNorm expected
input tensor to be on GPU or XPU". `sync_batch_norm_off_accelerator` swaps each one whose
tensors are not on an accelerator for `GlooSyncBatchNorm`, the same computation (global
batch statistics, gradients through them) over any process group, on the same parameters
and buffers; on GPUs torch's own stays.

Why this and not plain BatchNorm per process: the ranks' running statistics would drift
apart (DDP does not broadcast buffers), so validation on rank 1 and the checkpoint (rank
0's) would disagree. Why not a LayerNorm in the convolution module: the fine-tuning model
is fairseq2's own `wav2vec2_asr` family, whose factory always puts a BatchNorm there, and
a different norm would change the architecture to work around a device limitation.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from fairseq2.logging import log
from fairseq2.recipe.base import RecipeContext
from torch import Tensor
from torch.distributed.nn.functional import all_reduce
from torch.distributed.tensor import DTensor
from torch.nn import Module, SyncBatchNorm
from torch.nn.modules.batchnorm import _BatchNorm

from birq_fs2.recipes.errors import RunSetupError
from birq_fs2.recipes.resume import refuse_unsafe_checkpoint, set_aside_damaged_checkpoints

SYNC_DEVICES = ("cuda", "hpu", "xpu", "privateuseone")
"""Devices on which torch's SyncBatchNorm runs (torch.nn.modules.batchnorm)."""


class GlooSyncBatchNorm(SyncBatchNorm):
    """SyncBatchNorm for CPU process groups: the batch mean and variance of every channel
    are those of all ranks' inputs together (one differentiable all-reduce of the sums),
    and the running statistics are updated from them, so they stay equal on all ranks."""

    def forward(self, input: Tensor) -> Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return _BatchNorm.forward(self, input)  # nothing to synchronise
        # Statistics in fp32 whatever the input's dtype: under bf16 autocast the
        # convolution before hands over bf16, whose sums over thousands of frames would
        # lose the variance (torch's own batch norm accumulates in fp32 too).
        x = input.float()
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count.to(x.device)])
        total = all_reduce(local, group=group)  # gradients flow back to every rank
        channels = input.shape[1]
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), m)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def sync_batch_norm_off_accelerator(model: Module) -> int:
    """Swaps each SyncBatchNorm of `model` whose tensors are not on an accelerator for a
    GlooSyncBatchNorm sharing its parameters, buffers and process group; returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is not SyncBatchNorm:
            continue
        tensor = next(module.parameters(), None)
        if tensor is None:
            tensor = next(module.buffers(), None)
        if tensor is not None and tensor.device.type not in SYNC_DEVICES:
            # Same object, other forward: DDP's hooks and the optimizer keep their tensors.
            module.__class__ = GlooSyncBatchNorm
            swapped += 1
    if swapped:
        log.info(
            "birq: {} SyncBatchNorm module(s) on CPU run as GlooSyncBatchNorm (torch's needs "
            "an accelerator).",
            swapped,
        )
    return swapped


def parameter_digest(module: Module) -> str:
    """A short hash of every parameter and buffer (names, shapes, values): equal on two
    ranks exactly when their replicas are."""
    h = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()]):
        tensor = tensor.detach()
        if isinstance(tensor, DTensor):  # FSDP2 shards: the whole tensor (a collective)
            tensor = tensor.full_tensor()
        h.update(name.encode())
        # A copy: .numpy() marks the storage it views as not resizable, and FSDP2 frees
        # the unsharded parameters after validation by resizing their storage to 0.
        h.update(tensor.float().cpu().clone().numpy().tobytes())
    return h.hexdigest()[:16]


def log_replica_digest(model: Module, when: str) -> None:
    """In a multi-process run, each rank logs its replica's digest (logs/rank_N.log): after
    setup (the broadcast) and at every validation. Ranks out of sync show as different
    digests at the same step."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        log.info(
            "birq: replica digest {} (rank {}): {}", when, dist.get_rank(), parameter_digest(model)
        )


def check_data_parallelism(
    data_parallelism: str, device_type: str, world_size: int, model: Module
) -> None:
    """FSDP on CPU processes with batch norm in the model stops at setup with the reason,
    not mid-step with a traceback.

    What fails (fairseq2 0.8.1, torch 2.9.1, gloo): `to_fsdp2` shards the model with
    `fully_shard` and only then converts BatchNorm to SyncBatchNorm, so the conformer's
    batch-norm parameters stay DTensors that FSDP never unshards in forward ("aten.mul.
    Tensor: got mixed torch.Tensor and DTensor"). Gathering them in forward gets training
    through but validation then fails inside DTensor redistribution ("aten.detach_ does
    not have a sharding strategy"). A model without batch norm (the pretraining model
    with ``conv_module.norm: layer_norm``) has nothing to convert and runs under FSDP on
    CPU processes (tested)."""
    has_batch_norm = any(isinstance(m, _BatchNorm) for m in model.modules())
    if data_parallelism == "fsdp" and device_type == "cpu" and world_size > 1 and has_batch_norm:
        raise RunSetupError(
            "trainer.data_parallelism: fsdp does not run on CPU processes with batch norm in the "
            "model (the conformer's batch norm stays sharded in forward under FSDP2 with gloo); "
            "use ddp on CPUs, fsdp on GPUs, or pretrain with "
            "model.config_overrides.conv_module.norm=layer_norm."
        )


def prepare_data_parallel(context: RecipeContext, data_parallelism: str) -> Module:
    """What both recipes do before building their units: refuse FSDP on CPU processes for
    models with batch norm, set damaged last checkpoints aside, refuse checkpoint files
    that would run code, put GlooSyncBatchNorm in on CPUs, log the replicas' digest;
    returns the data-parallel model."""
    check_data_parallelism(
        data_parallelism, context.device.type, context.gangs.root.size, context.get_model()
    )
    set_aside_damaged_checkpoints(context)
    refuse_unsafe_checkpoint(context)
    dp_model = context.get_data_parallel_model()
    sync_batch_norm_off_accelerator(dp_model)
    log_replica_digest(context.get_model(), "after setup")
    return dp_model
