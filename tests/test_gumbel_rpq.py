import math

import pytest
import torch
import torch.nn.functional as F
from birq_kernels import (
    codebook_diversity_loss,
    gumbel_noise,
    gumbel_rpq_cross_entropy,
    reference_gumbel_rpq_cross_entropy,
    rpq_labels,
)
from conftest import make_log_probs, make_quantizer

SHAPES = [
    (1, 80, 1, 16, 8192),
    (37, 320, 1, 16, 1000),
    (130, 57, 2, 12, 129),
    (65, 83, 4, 16, 257),
]
KW = dict(tau=0.7, logit_scale=0.1, seed=2**40 + 11)


def _run(fn, x, projection, codebook, log_probs, weights, **kw):
    x = x.clone().requires_grad_()
    log_probs = log_probs.clone().requires_grad_()
    loss, labels = fn(x, projection, codebook, log_probs, **kw)
    (loss * weights).sum().backward()
    return loss.detach(), labels, x.grad, log_probs.grad


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no_noise"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_matches_reference_values_and_gradients(shape, noise):
    N, D, G, d, K = shape
    x, projection, codebook = make_quantizer(*shape, seed=N + K)
    log_probs = make_log_probs(N, G, K)
    weights = torch.randn(N, G, generator=torch.Generator().manual_seed(2))
    ref = _run(
        reference_gumbel_rpq_cross_entropy,
        x,
        projection,
        codebook,
        log_probs,
        weights,
        noise=noise,
        **KW,
    )
    got = _run(
        gumbel_rpq_cross_entropy, x, projection, codebook, log_probs, weights, noise=noise, **KW
    )
    loss_r, labels_r, gx_r, glp_r = ref
    loss, labels, gx, glp = got
    assert torch.equal(labels, labels_r)
    torch.testing.assert_close(loss, loss_r, atol=1e-5, rtol=1e-5)
    assert torch.equal(loss, -log_probs.gather(2, labels[..., None])[..., 0])
    torch.testing.assert_close(glp, glp_r, atol=1e-6, rtol=1e-5)
    scale = gx_r.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(gx, gx_r, atol=1e-5 * scale, rtol=1e-4)


def _run_with_probs(fn, x, projection, codebook, log_probs, **kw):
    """Outputs, and the gradients (x, log_probs) of loss.sum() + 0.3 L_div and (x) of L_div."""
    x = x.clone().requires_grad_()
    log_probs = log_probs.clone().requires_grad_()
    loss, labels, prob_sums = fn(x, projection, codebook, log_probs, with_probs=True, **kw)
    div = codebook_diversity_loss(prob_sums, x.shape[0])
    gx, glp = torch.autograd.grad(loss.sum() + 0.3 * div, (x, log_probs), retain_graph=True)
    (gx_div,) = torch.autograd.grad(div, x)
    return loss.detach(), labels, prob_sums.detach(), div.detach(), gx, glp, gx_div


# G > 1, K past the Triton tile (64) and not a multiple of it; 200 x 8192: two slabs.
PROB_SHAPES = [(70, 37, 2, 12, 300), (33, 20, 3, 24, 65), (200, 40, 1, 16, 8192)]


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "no_noise"])
@pytest.mark.parametrize("shape", PROB_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_prob_sums_and_diversity_gradients_match_reference(shape, noise):
    N, D, G, d, K = shape
    x, projection, codebook = make_quantizer(*shape, seed=K)
    log_probs = make_log_probs(N, G, K)
    kw = dict(noise=noise, **KW)
    ref = _run_with_probs(reference_gumbel_rpq_cross_entropy, x, projection, codebook, log_probs, **kw)  # fmt: skip
    got = _run_with_probs(gumbel_rpq_cross_entropy, x, projection, codebook, log_probs, **kw)
    loss_r, labels_r, sums_r, div_r, gx_r, glp_r, gxd_r = ref
    loss, labels, sums, div, gx, glp, gxd = got
    # The loss and labels are those of the default call, bit for bit.
    plain = gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, **kw)
    assert len(plain) == 2
    assert torch.equal(loss, plain[0]) and torch.equal(labels, plain[1])
    assert torch.equal(labels, labels_r)
    assert sums.shape == (G, K) and sums.dtype == torch.float32
    torch.testing.assert_close(sums, sums_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sums.sum(dim=1), torch.full((G,), float(N)), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(div, div_r, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(glp, glp_r, atol=1e-6, rtol=1e-5)
    for g, g_r in ((gx, gx_r), (gxd, gxd_r)):  # the sum, and the diversity term alone
        scale = g_r.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(g, g_r, atol=1e-5 * scale, rtol=1e-4)


def test_codebook_diversity_loss_extremes():
    G, K, N = 3, 10, 7
    uniform = torch.full((G, K), N / K)
    assert abs(codebook_diversity_loss(uniform, N).item()) < 1e-6
    one_hot = torch.zeros(G, K)
    one_hot[torch.arange(G), torch.tensor([0, 4, 9])] = N
    div = codebook_diversity_loss(one_hot, N)
    assert abs(div.item() - (G * K - G) / (G * K)) < 1e-6
    # Differentiable, with a finite gradient even where a code has no mass.
    sums = one_hot.clone().requires_grad_()
    codebook_diversity_loss(sums, N).backward()
    assert torch.isfinite(sums.grad).all()
    with pytest.raises(ValueError, match="`num_rows` must be a positive int"):
        codebook_diversity_loss(uniform, 0)
    with pytest.raises(ValueError, match=r"`prob_sums` must be a \(G, K\)"):
        codebook_diversity_loss(uniform[0], N)


def test_without_noise_labels_are_the_anchor_style_nearest_codes():
    x, projection, codebook = make_quantizer(300, 64, 2, 16, 500, seed=5)
    log_probs = make_log_probs(300, 2, 500)
    _, labels = gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, noise=False, **KW)
    assert torch.equal(labels, rpq_labels(x, projection, codebook))


def test_labels_use_exactly_the_published_noise():
    N, G, K = 40, 2, 300
    x, projection, codebook = make_quantizer(N, 32, G, 16, K, seed=6)
    log_probs = make_log_probs(N, G, K)
    _, labels = gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, **KW)
    z = F.normalize(torch.einsum("nD,gDd->ngd", x, projection), dim=-1)
    scores = torch.einsum("ngd,gkd->ngk", z, codebook) / KW["logit_scale"]
    assert torch.equal(labels, (scores + gumbel_noise(KW["seed"], N, G, K)).argmax(-1))
    # Another seed (another step or rank) gives other labels.
    _, other = gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, **{**KW, "seed": 12})
    assert (other != labels).float().mean() > 0.3


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_sampled_labels_follow_softmax_of_scores(backend):
    """Gumbel-max: P(label = j) = softmax(s)_j. One frame repeated N times (each row
    draws its own noise); a chi-square test over the K codes."""
    N, K, d = 40_000, 6, 16
    gen = torch.Generator().manual_seed(8)
    codebook = F.normalize(torch.randn(1, K, d, generator=gen), dim=-1)
    frame = torch.randn(1, d, generator=gen)
    x = frame.expand(N, d).contiguous()
    projection = torch.eye(d)[None]
    logit_scale = 0.5
    probs = torch.softmax((F.normalize(frame, dim=-1) @ codebook[0].t())[0] / logit_scale, dim=0)
    assert probs.min() > 0.02 and probs.max() < 0.8  # a non-degenerate target
    log_probs = torch.full((N, 1, K), -math.log(K))
    _, labels = gumbel_rpq_cross_entropy(
        x,
        projection,
        codebook,
        log_probs,
        tau=1.0,
        logit_scale=logit_scale,
        seed=77,
        backend=backend,
    )
    counts = torch.bincount(labels[:, 0], minlength=K).double()
    expected = probs.double() * N
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 22.5, (counts / N, probs)  # chi2(5) 99.9 % quantile: 20.5


def test_no_n_by_k_tensor_is_saved_for_backward():
    N, G, K = 256, 2, 1024
    x, projection, codebook = make_quantizer(N, 64, G, 16, K, seed=9)
    log_probs = make_log_probs(N, G, K).requires_grad_()
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    for with_probs in (False, True):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = gumbel_rpq_cross_entropy(
                x, projection, codebook, log_probs, with_probs=with_probs, **KW
            )
        own = [t for t in saved if t.data_ptr() != log_probs.data_ptr()]
        # z, row norms, (m, l, E), labels, with probs (max, normaliser) and prob_sums:
        # O(N * G * d); projection and codebook: O(G * K * d).
        assert own and max(t.numel() for t in own) <= max(N * G * 16, G * K * 16) < N * K
        objective = out[0].sum()
        if with_probs:
            objective = objective + codebook_diversity_loss(out[2], N)
        objective.backward()
        assert x.grad is not None and log_probs.grad is not None

    # The reference, by contrast, keeps several N x G x K tensors.
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reference_gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, **KW)
    assert sum(t.numel() >= N * G * K for t in saved) >= 2


def test_gradient_only_where_requested():
    x, projection, codebook = make_quantizer(20, 16, 1, 16, 64)
    log_probs = make_log_probs(20, 1, 64).requires_grad_()
    loss, _ = gumbel_rpq_cross_entropy(x, projection, codebook, log_probs, **KW)
    loss.sum().backward()
    assert x.grad is None
    assert torch.equal(log_probs.grad.sum(-1), -torch.ones(20, 1))
    # prob_sums reaches x only: without x's gradient, it adds nothing.
    log_probs.grad = None
    loss, _, sums = gumbel_rpq_cross_entropy(
        x, projection, codebook, log_probs, with_probs=True, **KW
    )
    (loss.sum() + codebook_diversity_loss(sums, 20)).backward()
    assert x.grad is None
    assert torch.equal(log_probs.grad.sum(-1), -torch.ones(20, 1))


def test_half_precision_log_probs_and_frames():
    N, G, K = 200, 2, 300
    x, projection, codebook = make_quantizer(N, 48, G, 16, K, seed=10)
    log_probs = make_log_probs(N, G, K)
    weights = torch.ones(N, G)
    ref = _run(
        reference_gumbel_rpq_cross_entropy,
        x.bfloat16().float(),
        projection,
        codebook,
        log_probs.bfloat16().float(),
        weights,
        **KW,
    )
    loss, labels, gx, glp = _run(
        gumbel_rpq_cross_entropy,
        x.bfloat16(),
        projection,
        codebook,
        log_probs.bfloat16(),
        weights,
        **KW,
    )
    assert labels.dtype == torch.int64 and loss.dtype == torch.float32
    assert gx.dtype == torch.bfloat16 and glp.dtype == torch.bfloat16
    # Stated tolerance: the same labels (math is fp32 after upcasting), the loss exactly
    # the bf16 log-prob, gradients within bf16 rounding of the fp32 reference.
    assert torch.equal(labels, ref[1])
    torch.testing.assert_close(loss, ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx.float(), ref[2], atol=2e-2 * ref[2].abs().max().item(), rtol=1e-2)
    torch.testing.assert_close(glp.float(), ref[3])


class TestBadInput:
    def setup_method(self):
        self.x, self.projection, self.codebook = make_quantizer(10, 20, 2, 16, 50)
        self.log_probs = make_log_probs(10, 2, 50)

    def call(self, **over):
        args = dict(
            x=self.x,
            projection=self.projection,
            codebook=self.codebook,
            log_probs=self.log_probs,
            **KW,
        )
        args.update(over)
        return gumbel_rpq_cross_entropy(**args)

    def test_log_probs_shape(self):
        with pytest.raises(
            ValueError, match=r"`log_probs` must have shape \(N, G, K\) = \(10, 2, 50\)"
        ):
            self.call(log_probs=self.log_probs[:, :, :49])

    def test_log_probs_dtype(self):
        with pytest.raises(ValueError, match=r"`log_probs` must be a floating-point"):
            self.call(log_probs=self.log_probs.long())

    @pytest.mark.parametrize("name", ["tau", "logit_scale"])
    def test_non_positive_scalars(self, name):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive number"):
            self.call(**{name: 0.0})

    def test_bad_seed(self):
        with pytest.raises(ValueError, match=r"`seed` must be in"):
            self.call(seed=-3)

    def test_empty_frames(self):
        with pytest.raises(ValueError, match=r"`x` is empty"):
            self.call(x=self.x[:0], log_probs=self.log_probs[:0])

    def test_codebook_not_normalised(self):
        with pytest.raises(ValueError, match=r"`codebook` rows must be L2-normalised"):
            self.call(codebook=self.codebook * 0.5)
