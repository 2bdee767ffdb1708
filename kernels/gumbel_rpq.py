"""BiRQ's enhanced-label path fused with its cross-entropy (straight-through Gumbel).

For frames x (N, D), a frozen projection (G, D, d), a frozen unit-row codebook (G, K, d)
and the prediction head's log-probabilities (N, G, K):

    z       = normalize(x @ projection[g])                       (N, G, d)
    s       = <codebook[g], z> / logit_scale                     (N, G, K)
    u       = s + gumbel(seed, n, g, j)        (noise=False: u = s)
    labels  = argmax_j u                                         (N, G)
    pi      = softmax(u / tau)                                   the soft sample
    loss    = -log_probs[n, g, labels]                           (N, G)

The loss is read as ``-sum_j y_j * log_probs_j`` with the straight-through sample
``y = onehot(labels) - sg(pi) + pi``: its value is the hard label's cross-entropy, its
gradient reaches ``log_probs`` through the one-hot and ``x`` through ``pi`` (upstream
gradient ``-log_probs``). With per-row softmax statistics (max m, normaliser l and
``E = sum_j pi_j log_probs_j``) the gradient of u needs no N x K storage:

    dloss/du_j = pi_j * (E - log_probs_j) / tau

so the fused versions keep only z, the row norms, (m, l, E), the labels and the seed,
and regenerate noise and pi tile by tile in the backward pass.

Codebook diversity (``with_probs=True``; wav2vec 2.0, Baevski et al. 2020, eq. 4). The
op also returns the per-codebook sums of the noise-free softmax of the scores,

    q          = softmax_j(s)          no noise, no tau (wav2vec 2.0's choice)   (N, G, K)
    prob_sums  = sum_n q               differentiable, back to x through s       (G, K)

and `codebook_diversity_loss(prob_sums, N)` turns them into
``L_div = (G K - sum_g exp(H(prob_sums[g] / N))) / (G K)``. For an upstream gradient w
(G, K) of prob_sums, ``dq-term/ds_j = q_j (w_j - <q, w>)``; the fused versions store two
more row statistics, max and normaliser of softmax(s), and recompute q tile by tile:

- forward: the online pass also tracks (max, normaliser) of s; a second pass over the
  code tiles recomputes q with the final statistics and adds its column sums to
  prob_sums (Triton: one atomic add per code, program and tile).
- backward: one pass over the code tiles, nothing per row beyond (max, normaliser). The
  row scalar <q, w> is only known at the end of the row, so the Triton kernel adds
  ``q_j w_j`` to each tile's ``du`` (one GEMM into grad_z as before), accumulates
  ``<q, w>`` and ``B = sum_j q_j c_j`` (BLOCK_N x BLOCK_D) alongside and subtracts
  ``<q, w> B`` at the end. w is first centred per codebook on its prob_sums-weighted
  mean (the gradient is unchanged as sum_j q_j = 1) so that the subtraction does not
  cancel. The chunked path holds whole rows of a slab and subtracts directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    HAS_TRITON,
    check_log_probs,
    check_positive,
    check_quantizer_inputs,
    chunk_rows,
    first_argmax,
    project_normalize,
    reference_project_normalize,
    select_backend,
)
from ._rng import as_int32, gumbel_noise, gumbel_noise_rows, seed_keys
from ._triton_common import GUMBEL_BLOCK_K, GUMBEL_BLOCK_N, SHAPE_ARGS, KernelSpec

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._rng import row_keys_tl
    from ._triton_common import gumbel_scores, load_code_tile, load_z_tile

# --------------------------------------------------------------------------- reference


def reference_gumbel_rpq_cross_entropy(
    x: torch.Tensor,
    projection: torch.Tensor,
    codebook: torch.Tensor,
    log_probs: torch.Tensor,
    *,
    tau: float,
    logit_scale: float,
    seed: int,
    noise: bool = True,
    with_probs: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Plain-torch autograd definition of `gumbel_rpq_cross_entropy`.

    Materialises every N x G x K intermediate (noise, scores, soft sample, one-hot).
    With `with_probs`, also prob_sums = softmax(s).sum over rows (s without noise or tau).
    """
    N, G, _, _, K = check_quantizer_inputs(x, projection, codebook)
    check_log_probs(log_probs, N, G, K, x.device)
    z = reference_project_normalize(x, projection)
    s = torch.einsum("ngd,gkd->ngk", z, codebook.float()) / logit_scale
    clean = s
    if noise:
        s = s + gumbel_noise(seed, N, G, K, device=x.device)
    labels = s.argmax(dim=-1)
    soft = torch.softmax(s / tau, dim=-1)
    hard = F.one_hot(labels, K).to(soft.dtype)
    sample = hard - soft.detach() + soft  # straight-through
    loss = -(sample * log_probs).sum(dim=-1)
    if with_probs:
        return loss, labels, torch.softmax(clean, dim=-1).sum(dim=0)
    return loss, labels


def codebook_diversity_loss(prob_sums: torch.Tensor, num_rows: int) -> torch.Tensor:
    """wav2vec 2.0's diversity loss (eq. 4) from `gumbel_rpq_cross_entropy`'s prob_sums.

    ``p = prob_sums / num_rows`` is each codebook's batch-mean code distribution;
    ``L = (G K - sum_g exp(H(p_g))) / (G K)``: 0 when every code is used equally, ``(G K -
    G) / (G K)`` when each codebook puts all its mass on one code. Plain torch, so its
    gradient flows back into prob_sums. ``0 log 0`` counts as 0 (the log is clamped at
    the smallest normal float, so the gradient stays finite there).
    """
    if not isinstance(prob_sums, torch.Tensor) or prob_sums.dim() != 2:
        raise ValueError("`prob_sums` must be a (G, K) torch.Tensor.")
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows <= 0:
        raise ValueError(f"`num_rows` must be a positive int, got {num_rows!r}.")
    G, K = prob_sums.shape
    p = prob_sums.float() / num_rows
    entropy = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(dim=-1)
    return (G * K - entropy.exp().sum()) / (G * K)


# ---------------------------------------------------------------------- chunked torch


def _slab_scores(z_slab, codes_t, inv_scale):
    """The noise-free scores s of a slab of rows (a new tensor)."""
    return torch.mm(z_slab, codes_t).mul_(inv_scale)


def _add_noise_(u, seed, row_ids, noise):
    if noise:
        u += gumbel_noise_rows(seed, row_ids, u.shape[1])
    return u


def _chunked_forward(z, codebook, log_probs, inv_scale, inv_tau, seed, noise, with_probs):
    N, G, _ = z.shape
    K = codebook.shape[1]
    rows = min(N, chunk_rows(K))
    labels = torch.empty(N, G, device=z.device, dtype=torch.int64)
    loss = torch.empty(N, G, device=z.device, dtype=torch.float32)
    stats = torch.empty(N, G, 3, device=z.device, dtype=torch.float32)  # m, l, E
    prob_stats = prob_sums = None
    if with_probs:  # max and normaliser of softmax(s); its column sums
        prob_stats = torch.empty(N, G, 2, device=z.device, dtype=torch.float32)
        prob_sums = torch.zeros(G, K, device=z.device, dtype=torch.float32)
    arange_n = torch.arange(N, device=z.device)
    for g in range(G):
        codes_t = codebook[g].t().contiguous()
        for start in range(0, N, rows):
            stop = min(N, start + rows)
            u = _slab_scores(z[start:stop, g], codes_t, inv_scale)
            if with_probs:
                m_s = u.amax(dim=1, keepdim=True)
                q = torch.sub(u, m_s).exp_()
                l_s = q.sum(dim=1)
                prob_sums[g] += q.div_(l_s[:, None]).sum(dim=0)
                prob_stats[start:stop, g, 0] = m_s.squeeze(1)
                prob_stats[start:stop, g, 1] = l_s
                del q
            u = _add_noise_(u, seed, arange_n[start:stop] * G + g, noise)
            lab = first_argmax(u)
            w = u.mul_(inv_tau)
            m = w.amax(dim=1, keepdim=True)
            p = w.sub_(m).exp_()
            denom = p.sum(dim=1)
            lp = log_probs[start:stop, g].float()
            e = (p.mul_(lp)).sum(dim=1) / denom
            labels[start:stop, g] = lab
            loss[start:stop, g] = -lp.gather(1, lab[:, None]).squeeze(1)
            stats[start:stop, g, 0] = m.squeeze(1)
            stats[start:stop, g, 1] = denom
            stats[start:stop, g, 2] = e
    return loss, labels, stats, prob_stats, prob_sums


def _chunked_grad_z(
    z, codebook, log_probs, stats, grad_loss, inv_scale, inv_tau, seed, noise, probs
):
    N, G, d = z.shape
    K = codebook.shape[1]
    rows = min(N, chunk_rows(K))
    grad_z = torch.empty(N, G, d, device=z.device, dtype=torch.float32)
    arange_n = torch.arange(N, device=z.device)
    for g in range(G):
        codes = codebook[g]
        codes_t = codes.t().contiguous()
        for start in range(0, N, rows):
            stop = min(N, start + rows)
            u = _slab_scores(z[start:stop, g], codes_t, inv_scale)
            grad_s = None
            if probs is not None:
                # d<w, sum_n q_n>/ds = q * (w - <q, w>), q = softmax(s) from the stored stats.
                prob_stats, _, grad_probs = probs
                m_s, l_s = prob_stats[start:stop, g].unbind(dim=1)
                q = torch.sub(u, m_s[:, None]).exp_().div_(l_s[:, None])
                w = grad_probs[g]
                grad_s = q.mul_(w - (q * w).sum(dim=1, keepdim=True))
            u = _add_noise_(u, seed, arange_n[start:stop] * G + g, noise)
            m, denom, e = stats[start:stop, g].unbind(dim=1)
            pi = u.mul_(inv_tau).sub_(m[:, None]).exp_().div_(denom[:, None])
            lp = log_probs[start:stop, g].float()
            # dloss/du = pi * (E - lp) / tau, scaled by the incoming gradient.
            coef = (grad_loss[start:stop, g] * inv_tau)[:, None]
            grad_u = pi.mul_(torch.sub(e[:, None], lp).mul_(coef))
            if grad_s is not None:
                grad_u += grad_s  # u = s + noise: ds = du
            grad_z[start:stop, g] = torch.mm(grad_u, codes).mul_(inv_scale)
    return grad_z


def _chunked_backward(
    z, codebook, log_probs, labels, stats, grad_loss, inv_scale, inv_tau, seed, noise,
    want_x, want_lp, probs,
):  # fmt: skip
    """`probs` is None or (prob_stats, prob_sums, grad_prob_sums)."""
    grad_z = grad_lp = None
    if want_x:
        grad_z = _chunked_grad_z(
            z, codebook, log_probs, stats, grad_loss, inv_scale, inv_tau, seed, noise, probs
        )
    if want_lp:
        grad_lp = torch.zeros_like(log_probs)
        grad_lp.scatter_(2, labels[:, :, None], (-grad_loss[:, :, None]).to(grad_lp.dtype))
    return grad_z, grad_lp


# ----------------------------------------------------------------------------- triton

if HAS_TRITON:

    @triton.jit
    def _gumbel_rpq_fwd_kernel(
        z_ptr,  # (N, G, d) fp32 contiguous
        codebook_ptr,  # (G, K, d) fp32 contiguous
        log_probs_ptr,  # (N, G, K) any float, strided
        labels_ptr,  # (N, G) int64
        loss_ptr,  # (N, G) fp32
        stats_ptr,  # (N, G, 3) fp32: m, l, E
        N,
        G,
        K,
        d,
        stride_lp_n,
        stride_lp_g,
        stride_lp_k,
        inv_scale,
        inv_tau,
        key_row,
        key_col,
        NOISE: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        # With WITH_PROBS only (None otherwise, so the kernel compiles as without them):
        prob_stats_ptr=None,  # (N, G, 2) fp32 out: max and normaliser of softmax(s)
        prob_sums_ptr=None,  # (G, K) fp32, zeroed: += sum over the rows of softmax(s)
        WITH_PROBS: tl.constexpr = False,
    ):
        pid_n = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        dim_ok = dims < d
        z = load_z_tile(z_ptr, rows, row_ok, g, G, d, dims, dim_ok)
        row_key = row_keys_tl(rows, g, G, key_row)  # dead code, so compiled out, without NOISE
        lp_rows = log_probs_ptr + rows.to(tl.int64) * stride_lp_n + g * stride_lp_g
        if WITH_PROBS:
            m_s = tl.full([BLOCK_N], float("-inf"), tl.float32)
            l_s = tl.zeros([BLOCK_N], tl.float32)

        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
        denom = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < K
            c = load_code_tile(codebook_ptr, codes, code_ok, g, K, d, dims, dim_ok)
            s, u = gumbel_scores(z, c, codes, inv_scale, row_key, key_col, NOISE)
            u = tl.where(code_ok[None, :], u, float("-inf"))
            if WITH_PROBS:  # online max and normaliser of softmax(s), no noise, no tau
                s = tl.where(code_ok[None, :], s, float("-inf"))
                m_s_new = tl.maximum(m_s, tl.max(s, axis=1))
                l_s = l_s * tl.exp(m_s - m_s_new) + tl.sum(tl.exp(s - m_s_new[:, None]), axis=1)
                m_s = m_s_new
            tile_best, tile_idx = tl.max(
                u, axis=1, return_indices=True, return_indices_tie_break_left=True
            )
            better = tile_best > best
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)

            lp = tl.load(
                lp_rows[:, None] + codes[None, :] * stride_lp_k,
                mask=row_ok[:, None] & code_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            # Online softmax of u / tau with the pi-weighted sum of log_probs alongside.
            w = u * inv_tau
            m_new = tl.maximum(m, tl.max(w, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(w - m_new[:, None])
            denom = denom * alpha + tl.sum(p, axis=1)
            acc = acc * alpha + tl.sum(p * lp, axis=1)
            m = m_new

        lp_label = tl.load(lp_rows + best_idx * stride_lp_k, mask=row_ok, other=0.0)
        out = rows * G + g
        tl.store(labels_ptr + out, best_idx.to(tl.int64), mask=row_ok)
        tl.store(loss_ptr + out, -lp_label.to(tl.float32), mask=row_ok)
        tl.store(stats_ptr + out * 3, m, mask=row_ok)
        tl.store(stats_ptr + out * 3 + 1, denom, mask=row_ok)
        tl.store(stats_ptr + out * 3 + 2, acc / denom, mask=row_ok)
        if WITH_PROBS:
            tl.store(prob_stats_ptr + out * 2, m_s, mask=row_ok)
            tl.store(prob_stats_ptr + out * 2 + 1, l_s, mask=row_ok)
            inv_l_s = 1.0 / l_s
            # Second pass: q with the final row statistics, summed over this program's rows.
            for k0 in range(0, K, BLOCK_K):
                codes = k0 + tl.arange(0, BLOCK_K)
                code_ok = codes < K
                c = load_code_tile(codebook_ptr, codes, code_ok, g, K, d, dims, dim_ok)
                s, _ = gumbel_scores(z, c, codes, inv_scale, row_key, key_col, False)
                q = tl.exp(s - m_s[:, None]) * inv_l_s[:, None]
                q = tl.where(row_ok[:, None], q, 0.0)
                tl.atomic_add(
                    prob_sums_ptr + g * K + codes, tl.sum(q, axis=0), mask=code_ok, sem="relaxed"
                )

    @triton.jit
    def _gumbel_rpq_bwd_kernel(
        z_ptr,  # (N, G, d) fp32
        codebook_ptr,  # (G, K, d) fp32
        log_probs_ptr,  # (N, G, K) strided
        labels_ptr,  # (N, G) int64
        stats_ptr,  # (N, G, 3)
        grad_loss_ptr,  # (N, G) fp32 contiguous
        grad_z_ptr,  # (N, G, d) fp32 out
        grad_lp_ptr,  # (N, G, K) contiguous out, dtype of log_probs
        N,
        G,
        K,
        d,
        stride_lp_n,
        stride_lp_g,
        stride_lp_k,
        inv_scale,
        inv_tau,
        key_row,
        key_col,
        NOISE: tl.constexpr,
        WRITE_GRAD_LP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        # With WITH_PROBS only (None otherwise, so the kernel compiles as without them):
        prob_stats_ptr=None,  # (N, G, 2) fp32: the forward's max and normaliser of softmax(s)
        grad_probs_ptr=None,  # (G, K) fp32: gradient w of prob_sums, centred per codebook
        WITH_PROBS: tl.constexpr = False,
    ):
        pid_n = tl.program_id(0)
        g = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        dim_ok = dims < d
        out = rows * G + g
        z = load_z_tile(z_ptr, rows, row_ok, g, G, d, dims, dim_ok)
        m = tl.load(stats_ptr + out * 3, mask=row_ok, other=0.0)
        inv_l = 1.0 / tl.load(stats_ptr + out * 3 + 1, mask=row_ok, other=1.0)
        e = tl.load(stats_ptr + out * 3 + 2, mask=row_ok, other=0.0)
        grad_loss = tl.load(grad_loss_ptr + out, mask=row_ok, other=0.0)
        label = tl.load(labels_ptr + out, mask=row_ok, other=-1).to(tl.int32)
        coef = grad_loss * inv_tau
        row_key = row_keys_tl(rows, g, G, key_row)  # dead code, so compiled out, without NOISE
        lp_rows = log_probs_ptr + rows.to(tl.int64) * stride_lp_n + g * stride_lp_g
        grad_rows = grad_lp_ptr + out.to(tl.int64) * K
        if WITH_PROBS:
            m_s = tl.load(prob_stats_ptr + out * 2, mask=row_ok, other=0.0)
            inv_l_s = 1.0 / tl.load(prob_stats_ptr + out * 2 + 1, mask=row_ok, other=1.0)
            qw = tl.zeros([BLOCK_N], tl.float32)  # <q, w>
            qc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)  # sum_j q_j c_j

        grad_z = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            codes = k0 + tl.arange(0, BLOCK_K)
            code_ok = codes < K
            tile_ok = row_ok[:, None] & code_ok[None, :]
            c = load_code_tile(codebook_ptr, codes, code_ok, g, K, d, dims, dim_ok)
            # The forward's scores, bit for bit: same helper, same noise coordinates.
            s, u = gumbel_scores(z, c, codes, inv_scale, row_key, key_col, NOISE)
            pi = tl.exp(u * inv_tau - m[:, None]) * inv_l[:, None]
            lp = tl.load(lp_rows[:, None] + codes[None, :] * stride_lp_k, mask=tile_ok, other=0.0)
            grad_u = pi * (e[:, None] - lp.to(tl.float32)) * coef[:, None]
            if WITH_PROBS:
                # ds = q * (w - <q, w>); the <q, w> part is subtracted after the loop.
                w = tl.load(grad_probs_ptr + g * K + codes, mask=code_ok, other=0.0)
                q = tl.exp(s - m_s[:, None]) * inv_l_s[:, None]
                q = tl.where(tile_ok, q, 0.0)
                qw_tile = q * w[None, :]
                grad_u += qw_tile
                qw += tl.sum(qw_tile, axis=1)
                qc += tl.dot(q, c, input_precision="ieee")
            grad_u = tl.where(tile_ok, grad_u, 0.0)
            grad_z += tl.dot(grad_u, c, input_precision="ieee")
            if WRITE_GRAD_LP:
                is_label = codes[None, :] == label[:, None]
                grad_lp = tl.where(is_label, -grad_loss[:, None], 0.0)
                tl.store(
                    grad_rows[:, None] + codes[None, :],
                    grad_lp.to(grad_lp_ptr.dtype.element_ty),
                    mask=tile_ok,
                )
        if WITH_PROBS:
            grad_z -= qw[:, None] * qc
        tl.store(
            grad_z_ptr + out[:, None] * d + dims[None, :],
            grad_z * inv_scale,
            mask=row_ok[:, None] & dim_ok[None, :],
        )

    # log_probs travels in its own dtype (and strides); the backward writes grad_lp in it.
    _LP_ARGS = {"stride_lp_n": "i64", "stride_lp_g": "i64", "stride_lp_k": "i32"}
    _SCALAR_ARGS = {"inv_scale": "fp32", "inv_tau": "fp32", "key_row": "i32", "key_col": "i32"}
    GUMBEL_FWD_SPEC = KernelSpec(
        "gumbel_rpq_fwd",
        _gumbel_rpq_fwd_kernel,
        {
            "z_ptr": "*fp32",
            "codebook_ptr": "*fp32",
            "log_probs_ptr": "*{lp}",
            "labels_ptr": "*i64",
            "loss_ptr": "*fp32",
            "stats_ptr": "*fp32",
            **SHAPE_ARGS,
            **_LP_ARGS,
            **_SCALAR_ARGS,
            "prob_stats_ptr": "*fp32",
            "prob_sums_ptr": "*fp32",
        },
        GUMBEL_BLOCK_N,
        GUMBEL_BLOCK_K,
        optional={"prob_stats_ptr": "WITH_PROBS", "prob_sums_ptr": "WITH_PROBS"},
    )
    GUMBEL_BWD_SPEC = KernelSpec(
        "gumbel_rpq_bwd",
        _gumbel_rpq_bwd_kernel,
        {
            "z_ptr": "*fp32",
            "codebook_ptr": "*fp32",
            "log_probs_ptr": "*{lp}",
            "labels_ptr": "*i64",
            "stats_ptr": "*fp32",
            "grad_loss_ptr": "*fp32",
            "grad_z_ptr": "*fp32",
            "grad_lp_ptr": "*{lp}",
            **SHAPE_ARGS,
            **_LP_ARGS,
            **_SCALAR_ARGS,
            "prob_stats_ptr": "*fp32",
            "grad_probs_ptr": "*fp32",
        },
        GUMBEL_BLOCK_N,
        GUMBEL_BLOCK_K,
        optional={"prob_stats_ptr": "WITH_PROBS", "grad_probs_ptr": "WITH_PROBS"},
    )


def _triton_forward(z, codebook, log_probs, inv_scale, inv_tau, seed, noise, with_probs):
    N, G, d = z.shape
    K = codebook.shape[1]
    labels = torch.empty(N, G, device=z.device, dtype=torch.int64)
    loss = torch.empty(N, G, device=z.device, dtype=torch.float32)
    stats = torch.empty(N, G, 3, device=z.device, dtype=torch.float32)
    prob_stats = prob_sums = None
    if with_probs:
        prob_stats = torch.empty(N, G, 2, device=z.device, dtype=torch.float32)
        prob_sums = torch.zeros(G, K, device=z.device, dtype=torch.float32)
    key_row, key_col = seed_keys(seed)
    GUMBEL_FWD_SPEC.launch(
        z, codebook, log_probs, labels, loss, stats, N, G, K, d,
        *log_probs.stride(), inv_scale, inv_tau, as_int32(key_row), as_int32(key_col),
        prob_stats, prob_sums, NOISE=noise, WITH_PROBS=with_probs,
    )  # fmt: skip
    return loss, labels, stats, prob_stats, prob_sums


def _triton_backward(
    z, codebook, log_probs, labels, stats, grad_loss, inv_scale, inv_tau, seed, noise,
    want_x, want_lp, probs,
):  # fmt: skip
    """`probs` is None or (prob_stats, prob_sums, grad_prob_sums)."""
    # One kernel pass yields grad_z whether or not x wants it; only grad_lp is optional.
    N, G, d = z.shape
    K = codebook.shape[1]
    grad_z = torch.empty_like(z)
    grad_lp = torch.empty(N, G, K, device=z.device, dtype=log_probs.dtype) if want_lp else grad_z
    prob_stats = grad_probs = None
    if probs is not None:
        prob_stats, prob_sums, grad_probs = probs
        # Centre w on its prob_sums-weighted mean: the same gradient (sum_j q_j = 1), and
        # the kernel's final `- <q, w> sum_j q_j c_j` then subtracts small numbers.
        weights = prob_sums / prob_sums.sum(dim=1, keepdim=True)
        grad_probs = grad_probs - (grad_probs * weights).sum(dim=1, keepdim=True)
        grad_probs = grad_probs.contiguous()
    key_row, key_col = seed_keys(seed)
    GUMBEL_BWD_SPEC.launch(
        z, codebook, log_probs, labels, stats, grad_loss, grad_z, grad_lp, N, G, K, d,
        *log_probs.stride(), inv_scale, inv_tau, as_int32(key_row), as_int32(key_col),
        prob_stats, grad_probs, NOISE=noise, WRITE_GRAD_LP=want_lp,
        WITH_PROBS=probs is not None,
    )  # fmt: skip
    return grad_z, (grad_lp if want_lp else None)


# --------------------------------------------------------------------------- autograd


_UINT64 = (1 << 64) - 1


class GumbelRPQCrossEntropy(torch.autograd.Function):
    """Fused forward/backward; saves O(N * G * d) state, never O(N * K).

    `passes` is a (forward, backward) pair of one fused backend: `_chunked_*` or `_triton_*`.
    With `with_probs` it returns (loss, labels, prob_sums) and saves two more row
    statistics (N, G, 2) and prob_sums (G, K).
    """

    @staticmethod
    def forward(
        ctx, x, projection, codebook, log_probs, tau, logit_scale, seed, noise, with_probs,
        passes,
    ):  # fmt: skip
        seed &= _UINT64  # apply() receives it as a signed int64 (see _fused)
        z, norm = project_normalize(x, projection)
        codebook = codebook.detach().float().contiguous()
        inv_scale, inv_tau = 1.0 / logit_scale, 1.0 / tau
        loss, labels, stats, prob_stats, prob_sums = passes[0](
            z, codebook, log_probs.detach(), inv_scale, inv_tau, seed, noise, with_probs
        )
        ctx.save_for_backward(
            z, norm, stats, labels, log_probs, projection, codebook, prob_stats, prob_sums
        )
        ctx.config = (inv_scale, inv_tau, seed, noise, passes, x.dtype)
        ctx.mark_non_differentiable(labels)
        if with_probs:
            return loss, labels, prob_sums
        return loss, labels

    @staticmethod
    def backward(ctx, grad_loss, _grad_labels, grad_prob_sums=None):
        z, norm, stats, labels, log_probs, projection, codebook, prob_stats, prob_sums = (
            ctx.saved_tensors
        )
        inv_scale, inv_tau, seed, noise, passes, x_dtype = ctx.config
        want_x, want_lp = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        grad_loss = grad_loss.float().contiguous()
        grad_x = None
        probs = None
        if grad_prob_sums is not None and want_x:  # prob_sums reaches x only
            probs = (prob_stats, prob_sums, grad_prob_sums.float().contiguous())
        grad_z, grad_lp = passes[1](
            z, codebook, log_probs.detach(), labels, stats, grad_loss,
            inv_scale, inv_tau, seed, noise, want_x, want_lp, probs,
        )  # fmt: skip
        if want_x:
            # Through z = y / |y|: dy = (dz - z <z, dz>) / |y|; then through y = x P.
            grad_y = (grad_z - z * (z * grad_z).sum(dim=-1, keepdim=True)) / norm
            grad_x = torch.einsum("ngd,gDd->nD", grad_y, projection.float()).to(x_dtype)
        return grad_x, None, None, grad_lp, None, None, None, None, None, None


def _fused(forward, backward):
    """The autograd op over one fused backend's passes, called like the reference."""
    passes = (forward, backward)

    def run(x, projection, codebook, log_probs, *, tau, logit_scale, seed, noise, with_probs):
        # The seed as a signed int64 (the same 64 bits): torch's profiler records the
        # arguments of autograd functions and cannot store an int above 2**63 - 1.
        seed = (seed & _UINT64) - (1 << 64) if seed & (1 << 63) else seed
        return GumbelRPQCrossEntropy.apply(
            x, projection, codebook, log_probs, tau, logit_scale, seed, bool(noise),
            bool(with_probs), passes,
        )  # fmt: skip

    return run


_BACKENDS = {
    "reference": reference_gumbel_rpq_cross_entropy,
    "chunked": _fused(_chunked_forward, _chunked_backward),
    "triton": _fused(_triton_forward, _triton_backward),
}


def gumbel_rpq_cross_entropy(
    x: torch.Tensor,
    projection: torch.Tensor,
    codebook: torch.Tensor,
    log_probs: torch.Tensor,
    *,
    tau: float,
    logit_scale: float,
    seed: int,
    noise: bool = True,
    with_probs: bool = False,
    backend: str = "auto",
    check_codebook_norm: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Straight-through Gumbel-softmax RPQ labels and their cross-entropy, fused.

    Args:
        x: (N, D) frames (the label layer's normalised output), fp32/bf16/fp16.
        projection: (G, D, d) frozen random projections.
        codebook: (G, K, d) frozen codebooks, L2-normalised rows.
        log_probs: (N, G, K) log-probabilities of the prediction head(s).
        tau: Gumbel-softmax temperature of the soft sample (backward only).
        logit_scale: kappa; scores are cosine similarities divided by it.
        seed: 64-bit seed of the counter-based noise (derive it from step and rank).
        noise: False gives the deterministic nearest code with the same soft backward.
        with_probs: also return prob_sums, for `codebook_diversity_loss`.
        backend: "auto" | "chunked" | "triton" | "reference".

    Returns:
        loss (N, G) fp32 = -log_probs at the labels, and labels (N, G) int64.
        Gradients flow to ``x`` and ``log_probs``. With ``with_probs``, a third output
        prob_sums (G, K) fp32: the sum over the N rows of ``softmax_j(s)``, the noise-free
        softmax of the scores without tau (as wav2vec 2.0's diversity term: the
        distribution the quantizer input assigns to the codes, whatever the sampling
        temperature), differentiable back to ``x``. The Triton forward adds per-program
        partial sums with atomics, so on a GPU their order (and prob_sums' last bits) is
        not deterministic; labels and loss are. The fused backward takes prob_sums'
        gradient without an N x K tensor (see the module docstring).
    """
    N, G, _, _, K = check_quantizer_inputs(
        x, projection, codebook, check_codebook_norm=check_codebook_norm
    )
    check_log_probs(log_probs, N, G, K, x.device)
    tau = check_positive("tau", tau)
    logit_scale = check_positive("logit_scale", logit_scale)
    seed_keys(seed)  # validates the seed
    if N * G >= 2**32:
        raise ValueError(f"N * G must be < 2**32 for the counter-based RNG, got {N * G}.")
    return select_backend(_BACKENDS, backend, x.device)(
        x, projection, codebook, log_probs,
        tau=tau, logit_scale=logit_scale, seed=seed, noise=noise, with_probs=bool(with_probs),
    )  # fmt: skip
