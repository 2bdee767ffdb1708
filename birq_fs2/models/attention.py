"""Relative-position self-attention (Transformer-XL, as in the conformer) with fewer passes
over the (N, H, S, S) score tensors than fairseq2's `RelativePositionSDPA`.

Same parameters, same state-dict keys, same function: the position term
``bd[n, h, i, j] = (q_i + v_bias) . r_{S-1-i+j}`` is read out of the (N, H, S, 2S-1)
product through a strided view (the "shift trick" without its pad, reshape and copy), added
in place to the content scores, and the 1/sqrt(d) scale is folded into the queries; the
padding bias is fairseq2's own (from the layer stack's `AttentionBiasCache`). On 2 CPU cores
the tiny arch's attention forward + backward takes about half the time
(`benchmarks/train_throughput.py`). Outputs equal the stock module's to fp32 rounding
(the order of the scale and the sums differs), which the tests check.

`use_fast_relative_attention(model)` swaps every stock module of a model for this one,
sharing its parameters, so optimizers, checkpoints and exports see the same tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from fairseq2.models.transformer import AttentionBiasCache
from fairseq2.models.transformer.attention_bias import maybe_get_attention_bias_tensor
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.models.transformer.sdpa.relative import RelativePositionSDPA
from fairseq2.nn import BatchLayout
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.nn import Module
from typing_extensions import override


class _AddShiftedPositions(torch.autograd.Function):
    """scores[n, h, i, j] += bd[n, h, i, S - 1 - i + j], in place, for a contiguous
    bd of shape (N, H, S, 2S - 1). The backward scatters the gradient back into the
    (N, H, S, 2S - 1) layout through the same strided view."""

    @staticmethod
    def forward(ctx: FunctionCtx, scores: Tensor, bd: Tensor) -> Tensor:
        ctx.bd_shape = bd.shape  # type: ignore[attr-defined]
        ctx.mark_dirty(scores)
        return scores.add_(_shifted(bd))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        grad_bd = grad.new_zeros(ctx.bd_shape)
        _shifted(grad_bd).copy_(grad)
        return grad, grad_bd


def _shifted(bd: Tensor) -> Tensor:
    """The (N, H, S, S) view of a contiguous (N, H, S, 2S - 1) tensor whose element
    [i, j] is bd[i, S - 1 - i + j]: row i starts S - 1 - i elements into row i of bd."""
    N, H, S, W = bd.shape
    return bd.as_strided((N, H, S, S), (H * S * W, S * W, W - 1, 1), bd.storage_offset() + S - 1)


class FastRelativePositionSDPA(SDPA):
    """Drop-in for fairseq2's `RelativePositionSDPA` (which it is built from: the same
    `u_bias`, `v_bias`, `r_proj` and `pos_encoding` modules and parameters)."""

    def __init__(self, stock: RelativePositionSDPA) -> None:
        super().__init__()
        self.model_dim, self.num_heads = stock.model_dim, stock.num_heads
        self.bias = stock.bias
        self.pos_encoding = stock.pos_encoding
        self.u_bias, self.v_bias = stock.u_bias, stock.v_bias
        self.r_proj = stock.r_proj

    @override
    def forward(
        self,
        q: Tensor,
        q_layout: BatchLayout,
        k: Tensor,
        k_layout: BatchLayout,
        v: Tensor,
        bias_cache: AttentionBiasCache,
        *,
        needs_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if q_layout.packed or k_layout.packed:
            raise ValueError("FastRelativePositionSDPA does not support packed batches.")
        bias = maybe_get_attention_bias_tensor(self.bias, q, q_layout, k_layout, bias_cache)
        N, S, H, K = q.shape
        scale = K**-0.5
        # (N, S, H, K) -> (N, H, S, K)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q_u = (q + self.u_bias[:, None]) * scale
        q_v = (q + self.v_bias[:, None]) * scale
        # (2S - 1, model_dim) -> (H, K, 2S - 1): broadcast over the batch by matmul.
        r = self.r_proj(self.pos_encoding(k)).view(-1, H, K).permute(1, 2, 0)
        bd = torch.matmul(q_v, r)  # (N, H, S, 2S - 1)
        scores = torch.matmul(q_u, k.transpose(-1, -2))  # (N, H, S, S)
        scores = _AddShiftedPositions.apply(scores, bd)
        if bias is not None:
            scores = scores.add_(bias)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).type_as(q)
        attns = torch.matmul(weights, v).transpose(1, 2)  # (N, S, H, V)
        return attns, weights if needs_weights else None

    @override
    def extra_repr(self) -> str:
        return f"model_dim={self.model_dim}, num_heads={self.num_heads}, bias={self.bias}"


def use_fast_relative_attention(model: Module) -> int:
    """Replace every `RelativePositionSDPA` in `model` with `FastRelativePositionSDPA`
    (sharing parameters); returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RelativePositionSDPA):
                setattr(parent, name, FastRelativePositionSDPA(child))
                replaced += 1
    return replaced
