"""Training throughput settings shared by the pretraining and fine-tuning recipes.

Each knob computes the same function as the path it replaces (the modules share their
parameters; the tests compare outputs and gradients), so a run is the same experiment
with every knob on or off; only random streams (dropout masks) and fp32 rounding differ.
Measured side by side on 2 CPU cores: `benchmarks/train_throughput.py`, report in
`benchmarks/results/throughput/`. Turn a knob off to get the stock fairseq2/torch path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass

from fairseq2.logging import log
from torch.nn import Module

from birq_fs2.models.attention import use_fast_relative_attention
from birq_fs2.models.dropout import use_fast_dropout


@dataclass(kw_only=True)
class SpeedSection:
    fused_attention: bool = True
    """Relative-position attention with the shift trick read through a strided view
    (birq_fs2.models.attention) instead of fairseq2's pad-reshape-copy: fewer passes over
    the (N, heads, S, S) scores, same parameters."""
    fast_dropout: bool = True
    """Dropout masks from uniform draws instead of torch's CPU `bernoulli_` (half the
    cost; same keep probability; birq_fs2.models.dropout). No effect on GPUs."""
    tune_malloc: bool = True
    """glibc malloc keeps freed blocks up to 32 MiB in the heap (M_MMAP_THRESHOLD) and
    never gives freed memory back to the OS mid-run (M_TRIM_THRESHOLD): without it, every
    step maps fresh pages for its attention scores and page-faults on them (a sixth of a
    pretraining run's CPU time went to the kernel; 4.4x fewer page faults with it). Costs
    resident memory: the process keeps its peak. glibc (Linux) only; elsewhere a no-op."""


def apply_speed(model: Module, section: SpeedSection) -> Module:
    """Swap the model's modules in place as the section says (same parameter objects, so
    optimizers, checkpoints and exports see the same tensors) and tune the allocator."""
    done = []
    if section.fused_attention and (n := use_fast_relative_attention(model)):
        done.append(f"fused relative attention x{n}")
    if section.fast_dropout and (n := use_fast_dropout(model)):
        done.append(f"fast dropout x{n}")
    if section.tune_malloc and tune_malloc():
        done.append("malloc keeps freed memory")
    if done:
        log.info("birq speed: {} (speed.* in the config turns each off).", ", ".join(done))
    return model


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses more on 64-bit (heap_max_size / 2)


def tune_malloc() -> bool:
    """True when glibc accepted both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The order matters: setting either one first freezes glibc's dynamic threshold.
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
