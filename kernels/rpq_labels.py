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
    select_backend,
)
from ._triton_common import LABELS_BLOCK_K, LABELS_BLOCK_N, SHAPE_ARGS, KernelSpec

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton_common import cosine_scores, load_code_tile, load_z_tile


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
        z = load_z_tile(z_ptr, rows, row_ok, g, G, d, dims, dim_ok)
        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < K
            c = load_code_tile(codebook_ptr, codes, code_ok, g, K, d, dims, dim_ok)
            sims = cosine_scores(z, c)
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

    LABELS_SPEC = KernelSpec(
        "rpq_labels",
        _rpq_labels_kernel,
        {"z_ptr": "*fp32", "codebook_ptr": "*fp32", "labels_ptr": "*i64", **SHAPE_ARGS},
        LABELS_BLOCK_N,
        LABELS_BLOCK_K,
    )


def _rpq_labels_triton(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    N, G, d = z.shape
    K = codebook.shape[1]
    labels = torch.empty(N, G, device=z.device, dtype=torch.int64)
    LABELS_SPEC.launch(z, codebook, labels, N, G, K, d)
    return labels


def _projected(labels_fn):
    """Run a (z, fp32 codebook) -> labels path on (x, projection, codebook)."""

    def run(x, projection, codebook):
        with torch.no_grad():
            z, _ = project_normalize(x, projection)
            return labels_fn(z.contiguous(), codebook.detach().float().contiguous())

    return run


_BACKENDS = {
    "reference": reference_rpq_labels,
    "chunked": _projected(_rpq_labels_chunked),
    "triton": _projected(_rpq_labels_triton),
}


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
    return select_backend(_BACKENDS, backend, x.device)(x, projection, codebook)
