"""Ahead-of-time compilation of the Triton kernels for a GPU target, without a GPU.

`compile_kernel("rpq_labels", cc=90)` lowers a kernel through Triton's NVIDIA backend
(TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, ptxas ships in the triton wheel) and reports
what the cubin needs per program: registers and spills (read back with the wheel's
``cuobjdump``), shared memory and warps (Triton's metadata). Used by the tests, so that a
kernel change that no longer compiles for sm_80/sm_90 fails on a CPU-only CI machine,
and by ``benchmarks/quantizer.py``.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .gumbel_rpq import GUMBEL_BLOCK_N, _gumbel_rpq_bwd_kernel, _gumbel_rpq_fwd_kernel
from .rpq_labels import LABELS_BLOCK_K, _rpq_labels_kernel, block_sizes

_INTS = ("N", "G", "K", "d")
_LP_STRIDES = {"stride_lp_n": "i64", "stride_lp_g": "i64", "stride_lp_k": "i32"}
_GUMBEL_SCALARS = {"inv_scale": "fp32", "inv_tau": "fp32", "key_row": "i32", "key_col": "i32"}


def _specs(lp_dtype: str, noise: bool, d: int, K: int):
    def blocks_for(rows: int, max_block_k: int = 64) -> dict:
        block_n, block_k, block_d = block_sizes(d, K, rows, max_block_k)
        return {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_D": block_d}

    blocks, gumbel_blocks = blocks_for(64, LABELS_BLOCK_K), blocks_for(GUMBEL_BLOCK_N)
    ints = {name: "i32" for name in _INTS}
    return {
        "rpq_labels": (
            _rpq_labels_kernel,
            {"z_ptr": "*fp32", "codebook_ptr": "*fp32", "labels_ptr": "*i64", **ints},
            blocks,
        ),
        "gumbel_rpq_fwd": (
            _gumbel_rpq_fwd_kernel,
            {
                "z_ptr": "*fp32",
                "codebook_ptr": "*fp32",
                "log_probs_ptr": f"*{lp_dtype}",
                "labels_ptr": "*i64",
                "loss_ptr": "*fp32",
                "stats_ptr": "*fp32",
                **ints,
                **_LP_STRIDES,
                **_GUMBEL_SCALARS,
            },  # fmt: skip
            {"NOISE": noise, **gumbel_blocks},
        ),
        "gumbel_rpq_bwd": (
            _gumbel_rpq_bwd_kernel,
            {
                "z_ptr": "*fp32",
                "codebook_ptr": "*fp32",
                "log_probs_ptr": f"*{lp_dtype}",
                "labels_ptr": "*i64",
                "stats_ptr": "*fp32",
                "grad_loss_ptr": "*fp32",
                "grad_z_ptr": "*fp32",
                "grad_lp_ptr": f"*{lp_dtype}",
                **ints,
                **_LP_STRIDES,
                **_GUMBEL_SCALARS,
            },  # fmt: skip
            {"NOISE": noise, "WRITE_GRAD_LP": True, **gumbel_blocks},
        ),
    }


KERNELS = ("rpq_labels", "gumbel_rpq_fwd", "gumbel_rpq_bwd")


@dataclass
class CompiledKernelInfo:
    kernel: str
    target: str
    num_warps: int
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    ptx_lines: int

    def as_dict(self) -> dict:
        return asdict(self)


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local-memory bytes) from the wheel's cuobjdump, if it is there."""
    try:  # knobs, not get_ptxas(): Triton 3.6 made get_ptxas take the target arch
        from triton import knobs

        cuobjdump = Path(knobs.nvidia.cuobjdump.path)
    except (ImportError, AttributeError, RuntimeError):
        return None, None
    if not cuobjdump.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=False
        ).stdout
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return (int(regs.group(1)) if regs else None, int(local.group(1)) if local else None)


def compile_kernel(
    name: str, cc: int = 90, *, lp_dtype: str = "fp32", noise: bool = True, d: int = 16,
    K: int = 8192,
) -> CompiledKernelInfo:  # fmt: skip
    """Compile kernel `name` for compute capability `cc` (80: A100, 90: H100)."""
    if name not in KERNELS:
        raise ValueError(f"`name` must be one of {KERNELS}, got {name!r}.")
    fn, signature, constexprs = _specs(lp_dtype, noise, d, K)[name]
    signature = {**signature, **{key: "constexpr" for key in constexprs}}
    src = ASTSource(fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": 4})
    regs, spills = _resource_usage(compiled.asm["cubin"])
    return CompiledKernelInfo(
        kernel=name,
        target=f"sm_{cc}",
        num_warps=compiled.metadata.num_warps,
        shared_bytes=compiled.metadata.shared,
        registers=regs,
        spill_bytes=spills,
        ptx_lines=compiled.asm["ptx"].count("\n"),
    )
