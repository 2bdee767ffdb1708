"""Input checks, the shared projection step and backend selection for the quantizers."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

Backend = Literal["auto", "reference", "chunked", "triton"]
BACKENDS = ("auto", "reference", "chunked", "triton")

# A codebook row counts as L2-normalised when its norm is within this of 1 (fp32 rows);
# half-precision rows get a looser bound because storing a unit vector in bf16 moves its
# norm by up to ~2**-8.
_NORM_TOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}

# Rows per slab of the chunked path: the slab's (rows x K) fp32 similarities stay near
# 4 MiB (128 rows at K = 8192), which keeps them cache-resident and the extra memory
# independent of N. Measured on 2 cores: 64-256 rows are within 10 % of each other.
CHUNK_ELEMENTS = 1 << 20

# Block width of `first_argmax`.
ARGMAX_BLOCK = 128


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_quantizer_inputs(
    x: torch.Tensor,
    projection: torch.Tensor,
    codebook: torch.Tensor,
    *,
    check_codebook_norm: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate (x, projection, codebook); returns (N, G, D, d, K)."""
    for name, t in (("x", x), ("projection", projection), ("codebook", codebook)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {t.dtype}.")
    if x.dim() != 2:
        raise ValueError(f"`x` must be 2-D (N, D), got shape {tuple(x.shape)}.")
    if projection.dim() != 3:
        raise ValueError(
            f"`projection` must be 3-D (G, D, d), got shape {tuple(projection.shape)}."
        )
    if codebook.dim() != 3:
        raise ValueError(f"`codebook` must be 3-D (G, K, d), got shape {tuple(codebook.shape)}.")
    N, D = x.shape
    G, D_p, d = projection.shape
    G_c, K, d_c = codebook.shape
    if N == 0:
        raise ValueError("`x` is empty (N == 0): there are no frames to quantize.")
    if D_p != D:
        raise ValueError(
            f"`projection` has input dim {D_p} (shape {tuple(projection.shape)}) but `x` has D = {D}."
        )
    if G_c != G:
        raise ValueError(f"`codebook` has {G_c} codebooks but `projection` has G = {G}.")
    if d_c != d:
        raise ValueError(f"`codebook` has code dim {d_c} but `projection` projects to d = {d}.")
    if G == 0 or K == 0 or d == 0 or D == 0:
        raise ValueError(
            f"Empty quantizer: G={G}, K={K}, d={d}, D={D} (`projection` {tuple(projection.shape)}, "
            f"`codebook` {tuple(codebook.shape)})."
        )
    if codebook.dtype != projection.dtype:
        raise ValueError(
            f"`codebook` dtype {codebook.dtype} does not match `projection` dtype {projection.dtype}."
        )
    for name, t in (("projection", projection), ("codebook", codebook)):
        if t.device != x.device:
            raise ValueError(f"`{name}` is on {t.device} but `x` is on {x.device}.")
    if check_codebook_norm:
        norms = codebook.detach().float().norm(dim=-1)
        err = (norms - 1.0).abs().max().item()
        if err > _NORM_TOL.get(codebook.dtype, 1e-2):
            raise ValueError(
                f"`codebook` rows must be L2-normalised (labels are nearest codes by cosine); "
                f"max |norm - 1| = {err:.3g}. Normalise with torch.nn.functional.normalize(codebook, dim=-1)."
            )
    return N, G, D, d, K


def check_log_probs(log_probs: torch.Tensor, N: int, G: int, K: int, device: torch.device) -> None:
    if not isinstance(log_probs, torch.Tensor) or not log_probs.is_floating_point():
        raise ValueError("`log_probs` must be a floating-point torch.Tensor (N, G, K).")
    if tuple(log_probs.shape) != (N, G, K):
        raise ValueError(
            f"`log_probs` must have shape (N, G, K) = {(N, G, K)}, got {tuple(log_probs.shape)}."
        )
    if log_probs.device != device:
        raise ValueError(f"`log_probs` is on {log_probs.device} but `x` is on {device}.")


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    return float(value)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "chunked"
    if backend == "triton":
        if not HAS_TRITON:
            raise ValueError("`backend='triton'` needs the triton package, which is not installed.")
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"`backend='triton'` needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
                "before importing triton to run the kernels in the interpreter on the CPU."
            )
    return backend


def select_backend(table: Mapping[str, Callable], backend: str, device: torch.device) -> Callable:
    """The implementation of an op for `backend` ("auto" resolved for `device`).

    `table` maps each concrete backend ("reference", "chunked", "triton") to one
    function with the op's signature, so adding a backend is one entry per op.
    """
    return _without_autocast(table[resolve_backend(backend, device)], device)


def _without_autocast(fn: Callable, device: torch.device) -> Callable:
    # The ops compute in fp32 by contract. Under autocast (mixed-precision training)
    # their matmuls would run in bf16/fp16, change labels near ties and, on the CPU
    # path, fail to write into the fp32 buffers.
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return run


def project_normalize(
    x: torch.Tensor, projection: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = normalize(x @ projection[g]) for all g in one GEMM, in fp32.

    Returns z (N, G, d) and the clamped row norms (N, G, 1) that the backward pass of the
    normalisation needs. The projection is a skinny GEMM that BLAS/cuBLAS already do
    well; the kernels fuse what comes after it, the N x K part.
    """
    G, D, d = projection.shape
    weight = projection.detach().float().permute(1, 0, 2).reshape(D, G * d)
    y = (x.detach().float() @ weight).view(-1, G, d)
    norm = y.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # same eps as F.normalize
    return y / norm, norm


def reference_project_normalize(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The definition, written independently of `project_normalize`: autograd-friendly."""
    y = torch.einsum("nD,gDd->ngd", x.float(), projection.float())
    return F.normalize(y, dim=-1)


def chunk_rows(K: int, budget: int | None = None) -> int:
    return max(1, (CHUNK_ELEMENTS if budget is None else budget) // max(K, 1))


def first_argmax(scores: torch.Tensor, block: int = ARGMAX_BLOCK) -> torch.Tensor:
    """``scores.argmax(dim=1)`` for a 2-D tensor, first index on ties, fast on the CPU.

    torch's CPU argmax runs ~15x slower than its amax (measured here: 95 ms against 5 ms
    for 10k x 8192 fp32). So: amax over blocks of `block` codes, argmax over the block
    maxima (the first block holding the row maximum also holds its first occurrence),
    then argmax inside that block alone. Same result as torch.argmax, ties included.
    """
    n, K = scores.shape
    if K <= 2 * block:
        return scores.argmax(dim=1)
    num_blocks = K // block
    main = num_blocks * block
    block_max = scores[:, :main].unflatten(1, (num_blocks, block)).amax(dim=2)
    if main < K:
        block_max = torch.cat([block_max, scores[:, main:].amax(dim=1, keepdim=True)], dim=1)
    best_block = block_max.argmax(dim=1)
    idx = best_block[:, None] * block + torch.arange(block, device=scores.device)[None, :]
    inside = scores.gather(1, idx.clamp_max(K - 1))
    inside = torch.where(idx < K, inside, float("-inf"))  # the tail block is shorter
    return best_block * block + inside.argmax(dim=1)
