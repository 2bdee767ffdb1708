"""The Triton kernels themselves, run by Triton's interpreter on the CPU.

Collected only with TRITON_INTERPRET=1 (tests/test_triton.py runs this file in a
subprocess). Sizes stay small: the interpreter executes every program in numpy.
"""

import functools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from birq_kernels import (
    codebook_diversity_loss,
    gumbel_rpq_cross_entropy,
    reference_gumbel_rpq_cross_entropy,
    reference_rpq_labels,
    rpq_labels,
)
from conftest import make_log_probs, make_quantizer, signed_one_hot_codebook

assert os.environ.get("TRITON_INTERPRET") == "1"

# K below, at and past the 64-code tile; d below 16 (padded) and above; G > 1; N = 1.
SHAPES = [(1, 24, 1, 16, 64), (70, 37, 2, 12, 300), (33, 20, 3, 24, 65)]
KW = dict(tau=0.6, logit_scale=0.1, seed=2**33 + 5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rpq_labels_kernel(shape):
    x, projection, codebook = make_quantizer(*shape, seed=shape[0])
    expected = reference_rpq_labels(x, projection, codebook)
    assert torch.equal(rpq_labels(x, projection, codebook, backend="triton"), expected)


def test_rpq_labels_kernel_exact_ties():
    # Signed one-hot codes: every similarity is one component of z, exact in any
    # summation order, so the duplicates of the best code tie bit for bit.
    projection, codebook = signed_one_hot_codebook(K=300, d=16)
    x = torch.full((3, 16), -0.1)
    x[0, 5] = 1.0  # best: +e_5, first at code 5, again at 37, 69, ... (later tiles)
    x[1, 2] = -2.0  # best: -e_2, first at code 18
    x[2] = 0.0  # all similarities 0: the first code
    got = rpq_labels(x, projection, codebook, backend="triton")
    assert got[:, 0].tolist() == [5, 18, 0]
    assert torch.equal(got, reference_rpq_labels(x, projection, codebook))


def test_rpq_labels_kernel_all_negative_similarities():
    gen = torch.Generator().manual_seed(0)
    K, d = 200, 16
    codebook = F.normalize(torch.rand(1, K, d, generator=gen) + 0.05, dim=-1)
    x = -(torch.rand(20, d, generator=gen) + 0.05)
    got = rpq_labels(x, torch.eye(d)[None], codebook, backend="triton")
    assert torch.equal(got, reference_rpq_labels(x, torch.eye(d)[None], codebook))


def _reference_and_triton(run, x, log_probs):
    """`run(fn, x_leaf, log_probs_leaf)` for the reference and for the Triton path, each on
    fresh leaf copies of the inputs."""
    triton = functools.partial(gumbel_rpq_cross_entropy, backend="triton")
    return [
        run(fn, x.clone().requires_grad_(), log_probs.clone().requires_grad_())
        for fn in (reference_gumbel_rpq_cross_entropy, triton)
    ]


@pytest.mark.parametrize("lp_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no_noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gumbel_kernels_forward_and_backward(shape, noise, lp_dtype):
    N, D, G, d, K = shape
    x, projection, codebook = make_quantizer(*shape, seed=K)
    log_probs = make_log_probs(N, G, K).to(lp_dtype)
    weights = torch.randn(N, G, generator=torch.Generator().manual_seed(3))

    def run(fn, xx, lp):
        loss, labels = fn(xx, projection, codebook, lp, noise=noise, **KW)
        (loss * weights).sum().backward()
        return loss.detach(), labels, xx.grad, lp.grad

    (loss_r, labels_r, gx_r, glp_r), (loss, labels, gx, glp) = _reference_and_triton(
        run, x, log_probs
    )
    assert torch.equal(labels, labels_r)
    torch.testing.assert_close(loss, loss_r.float(), atol=1e-5, rtol=1e-5)
    assert glp.dtype == lp_dtype
    # bf16: the reference rounds (onehot - pi + pi) * w, the kernel writes -w exactly.
    tol = dict(atol=1e-6, rtol=1e-5) if lp_dtype == torch.float32 else dict(atol=1e-5, rtol=1e-2)
    torch.testing.assert_close(glp.float(), glp_r.float(), **tol)
    torch.testing.assert_close(gx, gx_r, atol=1e-5 * gx_r.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gumbel_kernels_with_probs(shape):
    """prob_sums (atomics over programs and tiles) and the gradients of loss.sum() +
    0.3 L_div, and of L_div alone, against autograd through the reference."""
    N, D, G, d, K = shape
    x, projection, codebook = make_quantizer(*shape, seed=K + 1)
    log_probs = make_log_probs(N, G, K)

    def run(fn, xx, lp):
        loss, labels, sums = fn(xx, projection, codebook, lp, with_probs=True, **KW)
        div = codebook_diversity_loss(sums, N)
        gx, glp = torch.autograd.grad(loss.sum() + 0.3 * div, (xx, lp), retain_graph=True)
        (gx_div,) = torch.autograd.grad(div, xx)
        return loss.detach(), labels, sums.detach(), gx, glp, gx_div

    reference, triton = _reference_and_triton(run, x, log_probs)
    loss_r, labels_r, sums_r, gx_r, glp_r, gxd_r = reference
    loss, labels, sums, gx, glp, gxd = triton
    assert torch.equal(labels, labels_r)
    torch.testing.assert_close(loss, loss_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sums, sums_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(glp, glp_r, atol=1e-6, rtol=1e-5)
    for g, g_r in ((gx, gx_r), (gxd, gxd_r)):
        torch.testing.assert_close(g, g_r, atol=1e-5 * g_r.abs().max().item(), rtol=1e-4)


def test_gumbel_kernel_samples_follow_softmax():
    N, K, d = 3000, 4, 16
    gen = torch.Generator().manual_seed(4)
    codebook = F.normalize(torch.randn(1, K, d, generator=gen), dim=-1)
    frame = torch.randn(1, d, generator=gen)
    probs = torch.softmax((F.normalize(frame, dim=-1) @ codebook[0].t())[0] / 0.5, dim=0)
    log_probs = torch.full((N, 1, K), -math.log(K))
    _, labels = gumbel_rpq_cross_entropy(
        frame.expand(N, d).contiguous(), torch.eye(d)[None], codebook, log_probs,
        tau=1.0, logit_scale=0.5, seed=123, backend="triton",
    )  # fmt: skip
    counts = torch.bincount(labels[:, 0], minlength=K).double()
    chi2 = ((counts - probs * N) ** 2 / (probs * N)).sum().item()
    assert chi2 < 18.0  # chi2(3) 99.95 % quantile: 17.7
