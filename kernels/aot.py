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

from ._triton_common import NUM_WARPS, KernelSpec
from .gumbel_rpq import GUMBEL_BWD_SPEC, GUMBEL_FWD_SPEC
from .rpq_labels import LABELS_SPEC

SPECS: dict[str, KernelSpec] = {s.name: s for s in (LABELS_SPEC, GUMBEL_FWD_SPEC, GUMBEL_BWD_SPEC)}
KERNELS = tuple(SPECS)

# Values of the kernels' flag constexprs (the tile sizes come from the specs): the
# costliest variant, so that the resources reported are an upper bound. WITH_PROBS (the
# diversity term's outputs) is chosen per compile: both configurations ship.
_FLAGS = {"WRITE_GRAD_LP": True}


def kernel_source(
    name: str, *, lp_dtype: str = "fp32", noise: bool = True, with_probs: bool = False,
    d: int = 16, K: int = 8192, constants: dict | None = None,
) -> ASTSource:  # fmt: skip
    """The compile input of kernel `name`, typed from its `KernelSpec`.

    `constants` turns runtime arguments into constants, as the JIT does for ints equal
    to 1; every constexpr of the kernel must get a value, or this raises. The optional
    arguments of a flag that is off are None constants, as the launcher passes them.
    """
    if name not in SPECS:
        raise ValueError(f"`name` must be one of {KERNELS}, got {name!r}.")
    spec = SPECS[name]
    flags = {"NOISE": noise, "WITH_PROBS": with_probs, **_FLAGS}
    constexprs = {
        **spec.blocks(d, K),
        **{key: value for key, value in flags.items() if key in spec.constexprs},
        **{arg: None for arg, flag in spec.optional.items() if not flags.get(flag, False)},
        **(constants or {}),
    }
    missing = [key for key in spec.constexprs if key not in constexprs]
    if missing:
        raise ValueError(f"No AOT value for constexpr(s) {missing} of {name!r}: add to _FLAGS.")
    signature = {
        key: "constexpr" if key in constexprs else spec.arg_types[key].format(lp=lp_dtype)
        for key in spec.params
    }
    return ASTSource(spec.kernel, signature=signature, constexprs=constexprs)


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
    name: str, cc: int = 90, *, lp_dtype: str = "fp32", noise: bool = True,
    with_probs: bool = False, d: int = 16, K: int = 8192,
) -> CompiledKernelInfo:  # fmt: skip
    """Compile kernel `name` for compute capability `cc` (80: A100, 90: H100)."""
    src = kernel_source(name, lp_dtype=lp_dtype, noise=noise, with_probs=with_probs, d=d, K=K)
    compiled = triton.compile(
        src, target=GPUTarget("cuda", cc, 32), options={"num_warps": NUM_WARPS}
    )
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
