"""Random-projection quantization labels (BEST-RQ's anchor labels).

    labels[n, g] = argmax_j <codebook[g, j], normalize(x[n] @ projection[g])>

(first index on ties, as ``torch.argmax``). Three implementations side by side:

- `reference_rpq_labels`: the definition in plain torch; it builds the N x G x K
  similarity tensor and is what "correct" means.
- `_rpq_labels_chunked`: plain torch, one slab of rows at a time into a reused buffer,
  so extra memory is O(rows_per_slab * K) whatever N is, and the similarities stay in
  cache between the GEMM that writes them and the argmax that reads them.
- `_rpq_labels_kernel`: Triton, one program per (BLOCK_N rows, codebook); a running
  argmax over BLOCK_K code tiles, so N x K is never written anywhere.
"""

from __future__ import annotations

import torch

from ._common import (
    HAS_TRITON,
    check_quantizer_inputs,
    chunk_rows,
    first_argmax,
    project_normalize,
    reference_project_normalize,
    resolve_backend,
)

if HAS_TRITON:
    import triton
    import triton.language as tl


def reference_rpq_labels(
    x: torch.Tensor, projection: torch.Tensor, codebook: torch.Tensor
) -> torch.Tensor:
    """Plain-torch definition of `rpq_labels` (fp32 math, N x G x K intermediate)."""
    check_quantizer_inputs(x, projection, codebook)
    with torch.no_grad():
        z = reference_project_normalize(x, projection)
        sims = torch.einsum("ngd,gkd->ngk", z, codebook.float())
        return sims.argmax(dim=-1)


def _rpq_labels_chunked(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    N, G, _ = z.shape
    K = codebook.shape[1]
    rows = min(N, chunk_rows(K))
    sims = torch.empty(rows, K, device=z.device, dtype=torch.float32)
    labels = torch.empty(G, N, device=z.device, dtype=torch.int64)
    for g in range(G):
        codes_t = codebook[g].float().t().contiguous()  # (d, K)
        z_g = z[:, g].contiguous()
        for start in range(0, N, rows):
            stop = min(N, start + rows)
            slab = sims[: stop - start]
            torch.mm(z_g[start:stop], codes_t, out=slab)
            labels[g, start:stop] = first_argmax(slab)
    return labels.t().contiguous()


if HAS_TRITON:

    @triton.jit
    def _rpq_labels_kernel(
        z_ptr,  # (N, G, d) fp32, contiguous
        codebook_ptr,  # (G, K, d) fp32, contiguous
        labels_ptr,  # (N, G) int64, contiguous
        N,
        G,
        K,
        d,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        dim_ok = dims < d
        z = tl.load(
            z_ptr + (rows[:, None] * G + g) * d + dims[None, :],
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < K
            c = tl.load(
                codebook_ptr + (g * K + codes[:, None]) * d + dims[None, :],
                mask=code_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            # IEEE fp32 (not TF32): labels must match the fp32 reference exactly.
            sims = tl.dot(z, tl.trans(c), input_precision="ieee")
            # Padded codes are -inf, never 0: every real similarity may be negative.
            sims = tl.where(code_ok[None, :], sims, float("-inf"))
            tile_best, tile_idx = tl.max(
                sims, axis=1, return_indices=True, return_indices_tie_break_left=True
            )
            # Strict '>' keeps the earlier tile on exact ties: first index overall.
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)
        tl.store(labels_ptr + rows * G + g, best_idx.to(tl.int64), mask=row_ok)


# Code tile of the labels kernel. Measured on an H200 (tile_sweep_h200.json, 4 warps):
# 64 x 128 tiles ran 3.60 -> 2.72 ms at N = 40k, G = 4 and 0.42 -> 0.30 ms at 10k x 1
# against 64 x 64, with identical labels. The Gumbel kernels keep 64: their backward
# already holds 254 registers per thread.
LABELS_BLOCK_K = 128


def block_sizes(d: int, K: int, block_n: int = 64, max_block_k: int = 64) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D) for the Triton kernels.

    tl.dot needs every block dim >= 16; d is padded to a power of two (padding is zero,
    so it changes no similarity). Sizes were picked from the AOT compile (kernels/aot.py:
    <= 64 KiB of shared memory and no spills on sm_80/sm_90) and, for the labels kernel's
    code tile, from a sweep on an H200.
    """
    block_d = max(16, triton.next_power_of_2(d))
    block_k = min(max_block_k, max(16, triton.next_power_of_2(K)))
    return block_n, block_k, block_d


def _rpq_labels_triton(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    N, G, d = z.shape
    K = codebook.shape[1]
    labels = torch.empty(N, G, device=z.device, dtype=torch.int64)
    block_n, block_k, block_d = block_sizes(d, K, max_block_k=LABELS_BLOCK_K)
    grid = (triton.cdiv(N, block_n), G)
    _rpq_labels_kernel[grid](
        z, codebook, labels, N, G, K, d,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip
    return labels


def rpq_labels(
    x: torch.Tensor,
    projection: torch.Tensor,
    codebook: torch.Tensor,
    *,
    backend: str = "auto",
    check_codebook_norm: bool = True,
) -> torch.Tensor:
    """Nearest-code labels of a frozen random-projection quantizer.

    Args:
        x: (N, D) frames, fp32/bf16/fp16. Computation is fp32 whatever the input dtype.
        projection: (G, D, d) frozen random projections, one per codebook.
        codebook: (G, K, d) frozen codebooks with L2-normalised rows.
        backend: "auto" (Triton on CUDA, chunked torch elsewhere), "chunked", "triton"
            or "reference".
        check_codebook_norm: verify that codebook rows are unit vectors (one small
            reduction and, on CUDA, one host sync; turn off in a hot loop once checked).

    Returns:
        (N, G) int64 labels; ties resolve to the first index. No gradient.
    """
    check_quantizer_inputs(x, projection, codebook, check_codebook_norm=check_codebook_norm)
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return reference_rpq_labels(x, projection, codebook)
    with torch.no_grad():
        z, _ = project_normalize(x, projection)
        codebook = codebook.detach().float().contiguous()
        if backend == "triton":
            return _rpq_labels_triton(z.contiguous(), codebook)
        return _rpq_labels_chunked(z, codebook)
