"""Triton kernels without a GPU: interpreter agreement, and AOT compiles for sm_80/sm_90."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_log_probs, make_quantizer, signed_one_hot_codebook

triton = pytest.importorskip("triton")

TESTS = Path(__file__).parent


@pytest.mark.triton_interpret
def test_kernels_under_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "interpreter")],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail


@pytest.mark.aot
@pytest.mark.parametrize("cc", [80, 90])
@pytest.mark.parametrize("kernel", ["rpq_labels", "gumbel_rpq_fwd", "gumbel_rpq_bwd"])
def test_kernels_compile_for_gpu_targets(kernel, cc, record_property):
    from birq_kernels.aot import compile_kernel

    info = compile_kernel(kernel, cc, lp_dtype="bf16" if kernel == "gumbel_rpq_bwd" else "fp32")
    _check_compiled(info, cc, record_property)


def _check_compiled(info, cc, record_property) -> None:
    for key, value in info.as_dict().items():
        record_property(key, value)
    print(f"\n{info}")
    assert info.target == f"sm_{cc}" and info.ptx_lines > 100
    # Fits the smallest shared memory of the targeted GPUs (sm_86/89: 99 KiB per block).
    assert 0 < info.shared_bytes <= 99 * 1024
    if info.registers is not None:
        assert info.registers <= 255
        assert info.spill_bytes == 0


@pytest.mark.aot
@pytest.mark.parametrize("cc", [80, 90])
@pytest.mark.parametrize("kernel", ["gumbel_rpq_fwd", "gumbel_rpq_bwd"])
def test_gumbel_kernels_with_probs_compile_for_gpu_targets(kernel, cc, record_property):
    # The diversity term's configuration (WITH_PROBS): forward with its second pass and
    # atomics, backward with the extra accumulator; no spills either.
    from birq_kernels.aot import compile_kernel, kernel_source

    info = compile_kernel(kernel, cc, lp_dtype="bf16", with_probs=True)
    _check_compiled(info, cc, record_property)
    # Without the flag its pointers are None constants, as the launcher passes them.
    src = kernel_source(kernel)
    optional = [k for k, v in src.signature.items() if k.startswith(("prob_", "grad_probs"))]
    assert len(optional) == 2 and all(src.signature[k] == "constexpr" for k in optional)


@pytest.mark.aot
@pytest.mark.parametrize("kernel", ["gumbel_rpq_fwd", "gumbel_rpq_bwd"])
def test_gumbel_kernels_compile_with_int_arguments_equal_to_one(kernel):
    # On a GPU, Triton turns an int argument equal to 1 into a constant (G = 1 is the
    # usual BEST-RQ setup): the RNG must not call tensor methods on it (seen on an H200).
    from birq_kernels._triton_common import NUM_WARPS
    from birq_kernels.aot import kernel_source
    from triton.backends.compiler import GPUTarget

    src = kernel_source(kernel, constants={"G": 1, "key_row": 1, "key_col": 1})
    compiled = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS}
    )
    assert compiled.asm["ptx"].count("\n") > 100


def test_kernel_specs_match_the_kernels():
    # A kernel argument added without its spec entry must fail at import, not let the
    # AOT compile type a different signature from the one the launcher passes.
    from birq_kernels._triton_common import SHAPE_ARGS, KernelSpec
    from birq_kernels.aot import SPECS
    from birq_kernels.rpq_labels import _rpq_labels_kernel

    assert set(SPECS) == {"rpq_labels", "gumbel_rpq_fwd", "gumbel_rpq_bwd"}
    for spec in SPECS.values():
        assert {"BLOCK_N", "BLOCK_K", "BLOCK_D"} <= set(spec.constexprs)
    assert set(SPECS["gumbel_rpq_fwd"].optional.values()) == {"WITH_PROBS"}
    assert set(SPECS["gumbel_rpq_bwd"].optional.values()) == {"WITH_PROBS"}
    with pytest.raises(TypeError, match="update the spec"):
        KernelSpec("bad", _rpq_labels_kernel, {"z_ptr": "*fp32", **SHAPE_ARGS}, 64, 128)
    spec = SPECS["rpq_labels"]
    with pytest.raises(TypeError, match="optional argument"):
        KernelSpec("bad", spec.kernel, spec.arg_types, 64, 128, optional={"z_ptr": "NOPE"})
    # The launcher refuses a flag without its buffers (checked before any launch).
    fwd = SPECS["gumbel_rpq_fwd"]
    with pytest.raises(TypeError, match="exactly when WITH_PROBS is set"):
        fwd.launch(*[None] * len(fwd.arg_types), NOISE=True, WITH_PROBS=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_on_cuda_matches_reference():
    from birq_kernels import (
        gumbel_rpq_cross_entropy,
        reference_gumbel_rpq_cross_entropy,
        reference_rpq_labels,
        rpq_labels,
    )
    from conftest import make_log_probs, make_quantizer

    x, projection, codebook = (t.cuda() for t in make_quantizer(4097, 320, 2, 16, 8192))
    assert torch.equal(
        rpq_labels(x, projection, codebook), reference_rpq_labels(x, projection, codebook)
    )
    log_probs = make_log_probs(4097, 2, 8192).cuda()
    kw = dict(tau=0.5, logit_scale=0.1, seed=7)
    outs = []
    for fn in (reference_gumbel_rpq_cross_entropy, gumbel_rpq_cross_entropy):
        xx, lp = x.clone().requires_grad_(), log_probs.clone().requires_grad_()
        loss, labels = fn(xx, projection, codebook, lp, **kw)
        loss.sum().backward()
        outs.append((loss.detach(), labels, xx.grad, lp.grad))
    (loss_r, y_r, gx_r, glp_r), (loss_f, y, gx, glp) = outs
    assert (y == y_r).float().mean() > 0.9999  # GPU log/exp may differ by an ulp at near-ties
    same = y == y_r
    torch.testing.assert_close(loss_f[same], loss_r[same], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_r, atol=1e-4 * gx_r.abs().max().item(), rtol=1e-3)
    torch.testing.assert_close(glp, glp_r, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- CUDA: broader checks

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# N x D x G x d x K: one frame, d padded (12 -> 16) with K past a tile, and BEST-RQ sizes.
CUDA_SHAPES = [(1, 24, 1, 16, 64), (333, 37, 2, 12, 300), (4097, 320, 1, 16, 8192),
               (4097, 320, 4, 16, 8192)]  # fmt: skip
CUDA_KW = dict(tau=0.6, logit_scale=0.1, seed=2**33 + 5)


def _cuda_quantizer(shape, x_dtype, seed):
    x, projection, codebook = make_quantizer(*shape, seed=seed)
    return x.to(x_dtype).cuda(), projection.cuda(), codebook.cuda()


def _assert_same_labels_up_to_ties(got, expected, x, projection, codebook, *, tol=1e-5):
    """Labels equal, except where the two codes' fp64 similarities are within `tol`: two
    fp32 GEMMs that sum in different orders may break a near-tie either way."""
    diff = got != expected
    n_diff = int(diff.sum())
    print(f"\n{n_diff} of {got.numel()} labels differ")
    if n_diff == 0:
        return
    assert n_diff <= max(1, got.numel() // 1000), f"{n_diff} of {got.numel()} labels differ"
    z = F.normalize(torch.einsum("nD,gDd->ngd", x.double(), projection.double()), dim=-1)
    rows, groups = diff.nonzero(as_tuple=True)
    zz, cb = z[rows, groups], codebook.double()[groups]
    s_got = (zz * cb[torch.arange(len(rows)), got[rows, groups]]).sum(-1)
    s_exp = (zz * cb[torch.arange(len(rows)), expected[rows, groups]]).sum(-1)
    assert (s_got - s_exp).abs().max().item() <= tol, (s_got, s_exp)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_rpq_labels_match_reference_and_chunked(shape, x_dtype):
    from birq_kernels import reference_rpq_labels, rpq_labels

    x, projection, codebook = _cuda_quantizer(shape, x_dtype, seed=shape[0] + shape[2])
    got = rpq_labels(x, projection, codebook, backend="triton")
    assert got.shape == (shape[0], shape[2]) and got.dtype == torch.int64
    assert int(got.min()) >= 0 and int(got.max()) < shape[4]
    for expected in (
        reference_rpq_labels(x, projection, codebook),
        rpq_labels(x, projection, codebook, backend="chunked"),
    ):
        _assert_same_labels_up_to_ties(got, expected, x, projection, codebook)


@pytest.mark.gpu
@cuda
def test_cuda_rpq_labels_exact_ties():
    from birq_kernels import reference_rpq_labels, rpq_labels

    projection, codebook = (t.cuda() for t in signed_one_hot_codebook(K=300, d=16))
    x = torch.full((3, 16), -0.1)
    x[0, 5], x[1, 2], x[2] = 1.0, -2.0, 0.0
    got = rpq_labels(x.cuda(), projection, codebook, backend="triton")
    assert got[:, 0].tolist() == [5, 18, 0]
    assert torch.equal(got, reference_rpq_labels(x.cuda(), projection, codebook))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("lp_dtype", [torch.float32, torch.bfloat16], ids=["lp32", "lp16"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["x32", "x16"])
@pytest.mark.parametrize("shape", CUDA_SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_cuda_gumbel_matches_reference_and_chunked(shape, x_dtype, lp_dtype):
    from birq_kernels import gumbel_rpq_cross_entropy, reference_gumbel_rpq_cross_entropy

    N, _, G, _, K = shape
    x, projection, codebook = _cuda_quantizer(shape, x_dtype, seed=K + G)
    log_probs = make_log_probs(N, G, K).to(lp_dtype).cuda()
    weights = torch.randn(N, G, generator=torch.Generator().manual_seed(3)).cuda()
    results = {}
    for name, fn, kw in (
        ("reference", reference_gumbel_rpq_cross_entropy, {}),
        ("chunked", gumbel_rpq_cross_entropy, {"backend": "chunked"}),
        ("triton", gumbel_rpq_cross_entropy, {"backend": "triton"}),
    ):
        xx, lp = x.clone().requires_grad_(), log_probs.clone().requires_grad_()
        loss, labels = fn(xx, projection, codebook, lp, **CUDA_KW, **kw)
        (loss * weights).sum().backward()
        results[name] = (loss.detach().float(), labels, xx.grad, lp.grad)
    loss, labels, gx, glp = results["triton"]
    assert torch.isfinite(loss).all() and torch.isfinite(gx).all() and glp.dtype == lp_dtype
    x_tol = 1e-4 if x_dtype == torch.float32 else 1e-2  # grad_x is rounded to x's dtype
    for name in ("reference", "chunked"):
        loss_r, labels_r, gx_r, glp_r = results[name]
        same = labels == labels_r
        print(f"\n{name}: {int((~same).sum())} of {labels.numel()} labels differ")
        assert same.float().mean().item() >= 0.9999, name
        torch.testing.assert_close(loss[same], loss_r[same], atol=1e-5, rtol=1e-5)
        rows = same.all(dim=1)  # grad_lp rows whose labels agree in every group
        lp_tol = dict(atol=1e-6, rtol=1e-5) if lp_dtype == torch.float32 else dict(atol=1e-5, rtol=1e-2)  # fmt: skip
        torch.testing.assert_close(glp[rows].float(), glp_r[rows].float(), **lp_tol)
        # grad_x does not depend on the labels (only on pi and log_probs).
        torch.testing.assert_close(
            gx.float(), gx_r.float(), atol=x_tol * gx_r.abs().max().item(), rtol=x_tol * 10
        )


@pytest.mark.gpu
@cuda
def test_cuda_gumbel_prob_sums_and_diversity_gradients():
    from birq_kernels import codebook_diversity_loss, gumbel_rpq_cross_entropy

    N, D, G, d, K = 4097, 320, 2, 16, 8192
    x, projection, codebook = _cuda_quantizer((N, D, G, d, K), torch.float32, seed=4)
    log_probs = make_log_probs(N, G, K).cuda()
    results = {}
    for backend in ("chunked", "triton"):
        xx, lp = x.clone().requires_grad_(), log_probs.clone().requires_grad_()
        loss, labels, sums = gumbel_rpq_cross_entropy(
            xx, projection, codebook, lp, with_probs=True, backend=backend, **CUDA_KW
        )
        div = codebook_diversity_loss(sums, N)
        (gx_div,) = torch.autograd.grad(div, xx, retain_graph=True)
        (loss.sum() + 0.3 * div).backward()
        results[backend] = (sums.detach(), xx.grad, gx_div)
    for got, expected in zip(results["triton"], results["chunked"], strict=True):
        torch.testing.assert_close(
            got, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-3
        )


@pytest.mark.gpu
@cuda
def test_cuda_kernels_never_allocate_n_by_k():
    from birq_kernels import gumbel_rpq_cross_entropy, rpq_labels

    N, D, G, d, K = 16384, 320, 4, 16, 8192
    x, projection, codebook = _cuda_quantizer((N, D, G, d, K), torch.float32, seed=0)
    torch.manual_seed(0)
    log_probs = torch.log_softmax(2 * torch.randn(N, G, K, device="cuda"), dim=-1)
    log_probs = log_probs.to(torch.bfloat16).requires_grad_()
    n_by_k = N * G * K * 4  # one fp32 N x G x K tensor: 2 GiB
    rpq_labels(x[:64], projection, codebook)  # compile outside the measurement
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    rpq_labels(x, projection, codebook)
    torch.cuda.synchronize()
    labels_extra = torch.cuda.max_memory_allocated() - base
    xx = x.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss, _ = gumbel_rpq_cross_entropy(xx, projection, codebook, log_probs, **CUDA_KW)
    loss.sum().backward()
    torch.cuda.synchronize()
    gumbel_extra = torch.cuda.max_memory_allocated() - base
    grad_lp_bytes = log_probs.numel() * log_probs.element_size()  # a required output
    print(f"\nextra MiB: labels {labels_extra / 2**20:.1f}, gumbel {gumbel_extra / 2**20:.1f}")
    assert labels_extra < 64 * 2**20 < n_by_k / 16
    assert gumbel_extra < grad_lp_bytes + 128 * 2**20  # the eager reference: > 5 n_by_k
