"""The throughput knobs (birq_fs2.recipes.speed): each computes what the stock path computes."""

from __future__ import annotations

import pytest
import torch
from fairseq2.models.transformer import AttentionBiasCache
from fairseq2.models.transformer.sdpa.relative import RelativePositionSDPA
from fairseq2.nn import BatchLayout
from helpers import FIXTURES
from torch.nn import Dropout

from birq_fs2.data.corpus import load_split
from birq_fs2.data.pipeline import DataStats, SpeechPipelineConfig, build_speech_pipeline
from birq_fs2.models.attention import FastRelativePositionSDPA, use_fast_relative_attention
from birq_fs2.models.config import ARCHS
from birq_fs2.models.dropout import FastDropout, use_fast_dropout
from birq_fs2.models.factory import create_birq_model
from birq_fs2.models.model import BirqStep
from birq_fs2.recipes.speed import SpeedSection, apply_speed, tune_malloc


def build(arch="tiny", seed=0):
    torch.manual_seed(seed)
    return create_birq_model(ARCHS[arch]())


@pytest.mark.parametrize(
    ("lens", "heads"), [((37, 37), 4), ((50, 23, 9), 4), ((1,), 2), ((64, 64, 3), 1)]
)
def test_fused_attention_equals_fairseq2s(lens, heads):
    model_dim = 8 * heads
    stock = build().encoder.layers[0].self_attn.sdpa
    if heads != stock.num_heads:  # another head count: a stock module of that shape
        stock = RelativePositionSDPA(
            model_dim, heads, type(stock.pos_encoding)(model_dim, 128), stock.bias
        )
        torch.nn.init.normal_(stock.r_proj.weight)
    fast = FastRelativePositionSDPA(stock)
    N, S, K = len(lens), max(lens), stock.model_dim // heads
    layout = BatchLayout((N, S), seq_lens=list(lens))
    gen = torch.Generator().manual_seed(len(lens))
    inputs = [torch.randn(N, S, heads, K, generator=gen) for _ in range(3)]
    weight = torch.randn(N, S, heads, K, generator=gen)

    def run(module):
        qkv = [t.clone().requires_grad_() for t in inputs]
        stock.zero_grad(set_to_none=True)
        out, attn = module(
            qkv[0], layout, qkv[1], layout, qkv[2], AttentionBiasCache(), needs_weights=True
        )
        (out * weight).sum().backward()
        return (
            out.detach(),
            attn.detach(),
            [t.grad for t in qkv] + [p.grad.clone() for p in stock.parameters()],
        )

    out_ref, attn_ref, grads_ref = run(stock)
    out, attn, grads = run(fast)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn, attn_ref, rtol=1e-5, atol=1e-6)
    assert len(grads) == 6  # q, k, v, u_bias, v_bias, r_proj.weight
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_swaps_share_parameters_and_keep_state_dict_keys():
    model = build()
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert use_fast_relative_attention(model) == 4
    assert use_fast_dropout(model) > 0
    assert not any(isinstance(m, RelativePositionSDPA) for m in model.modules())
    assert not any(type(m) is Dropout for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    assert use_fast_relative_attention(model) == 0  # idempotent


def test_fast_model_computes_the_stock_function():
    """Eval mode (no dropout): the encoder outputs of every layer agree; in training mode
    the anchor labels (a function of the input alone) are identical."""
    stock, fast = build(), build()
    apply_speed(fast, SpeedSection(tune_malloc=False))
    gen = torch.Generator().manual_seed(3)
    lens = [400, 333, 120]
    x = torch.randn(3, 400, 80, generator=gen)
    layout = BatchLayout(x.shape[:2], seq_lens=lens)
    for m in (stock, fast):
        m.eval()
    with torch.no_grad():
        ref, _, ref_layers = stock.encode(x, layout, layers=(1, 2, 3, 4))
        out, _, layers = fast.encode(x, layout, layers=(1, 2, 3, 4))
    for i in ref_layers:
        valid = torch.arange(100)[None, :] < torch.tensor([n // 4 for n in lens])[:, None]
        torch.testing.assert_close(layers[i][valid], ref_layers[i][valid], rtol=1e-4, atol=1e-4)
    outs = []
    for m in (stock, fast):
        m.train()
        torch.manual_seed(7)  # same masks
        outs.append(m(x, layout, BirqStep(tau=1.0, seed=1)))
    assert torch.equal(outs[0].anchor_labels, outs[1].anchor_labels)
    assert outs[0].num_targets == outs[1].num_targets


def test_fast_dropout_distribution_and_gradient():
    p = 0.1
    dropout = FastDropout(p)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.backward(torch.full_like(y, 2.0))
    torch.testing.assert_close(x.grad, kept.float() * 2 / (1 - p))
    # bf16 inputs: the keep probability is still exactly 1 - p (drawn in fp32).
    yb = dropout(torch.ones(1_000_000, dtype=torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert abs((yb != 0).float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / 1e6) ** 0.5
    dropout.eval()
    assert torch.equal(dropout(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)


def test_tune_malloc_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_malloc() is True


def test_feature_cache_gives_the_same_batches():
    """Two epochs with the cache equal two epochs without it (features are a pure function
    of the audio and the (seed, utterance) dither); the second epoch decodes nothing."""
    utterances = load_split(FIXTURES, "dev-tiny")  # with a corrupt and an empty file: skipped

    def epochs(cache_gb: float, n: int = 2) -> list[torch.Tensor]:
        config = SpeechPipelineConfig(
            max_frames_per_batch=3200, feature_cache_gb=cache_gb, num_parallel_calls=1
        )
        pipeline = build_speech_pipeline(utterances, config, seed=3, stats=DataStats())
        out = []
        for _ in range(n):
            out += [b.seqs for b in pipeline]
            pipeline.reset()
        return out

    plain, cached = epochs(0), epochs(1.0)
    assert len(plain) == len(cached) > 0
    for a, b in zip(plain, cached, strict=True):
        assert torch.equal(a, b)


def test_feature_cache_stops_at_its_limit():
    from birq_fs2.data.pipeline import FeatureCache

    cache = FeatureCache(max_bytes=1000)
    cache.put("a", torch.zeros(200))  # 800 bytes
    cache.put("b", torch.zeros(200))  # would exceed: not kept
    assert cache.get("a") is not None and cache.get("b") is None
    assert cache.num_bytes == 800


def test_gumbel_kernel_under_torch_profiler_with_a_64_bit_seed():
    """fairseq2's profiler (record_shapes) records autograd-function arguments; a seed above
    2**63 - 1 (half of the derived seeds) used to crash it."""
    from birq_kernels import gumbel_rpq_cross_entropy
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 16, generator=gen)
    proj = torch.randn(1, 16, 8, generator=gen)
    codebook = torch.nn.functional.normalize(torch.randn(1, 32, 8, generator=gen), dim=-1)
    lp = torch.log_softmax(torch.randn(20, 1, 32, generator=gen), -1)
    seed = 2**64 - 12345
    ref_loss, ref_labels = gumbel_rpq_cross_entropy(
        x, proj, codebook, lp, tau=1.0, logit_scale=0.1, seed=seed
    )
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True):
        xg = x.clone().requires_grad_()
        loss, labels = gumbel_rpq_cross_entropy(
            xg, proj, codebook, lp, tau=1.0, logit_scale=0.1, seed=seed
        )
        loss.sum().backward()
    assert torch.equal(labels, ref_labels) and torch.equal(loss, ref_loss)
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.slow
def test_throughput_benchmark_measures_runs_at_once(tmp_path):
    """benchmarks/train_throughput.py part 3: the same pair of pretraining runs one at a
    time and at once, each run of the pair at once on its share of the cores."""
    import json
    import shutil
    import sys

    from helpers import ROOT, run

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(ROOT / "benchmarks/results/throughput/throughput.json", out)  # parts 1-2 kept
    cmd = [sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--quick",
           "--jobs-only", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = run(cmd, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = json.loads((out / "throughput.json").read_text())["jobs"]
    at_once = jobs["ways"]["fast path, 2 runs at once"]
    assert at_once["runs_at_once"] == 2 and at_once["threads_per_run"] == max(1, jobs["cores"] // 2)
    for way in jobs["ways"].values():  # every run trained: steps timed, a loss per publish
        assert way["pretrain_steps_per_hour"] > 0 and all(v > 0 for v in way["s_per_step"].values())
    assert all(len(r["final_loss"]) == 2 for rows in jobs["runs"].values() for r in rows)
    md = (out / "throughput.md").read_text()
    assert "## Experiments per hour: runs at once" in md and "## Where one step's time goes" in md


@pytest.mark.slow
def test_throughput_benchmark_measures_bf16_side_by_side(tmp_path):
    """benchmarks/train_throughput.py part 4: bf16 autocast as 2 ranks (torchrun, the
    trainer's mixed precision) next to the stock path and the same 2 ranks in fp32."""
    import json
    import shutil
    import sys

    from helpers import ROOT, run

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(ROOT / "benchmarks/results/throughput/throughput.json", out)  # parts 1-3 kept
    cmd = [sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--quick", "--bf16-only",
           "--models", "bestrq", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = run(cmd, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    bf16 = json.loads((out / "throughput.json").read_text())["bf16"]
    row = bf16["summary"]["bestrq"]
    assert set(row) == {"stock", "fast_2ranks", "fast_2ranks_bf16"}
    for path in ("fast_2ranks", "fast_2ranks_bf16"):  # every run trained and was timed
        assert row[path]["s_per_step"] > 0 and row[path]["speedup"] > 0
    losses = [row[p]["final_loss"] for p in row]
    assert all(0 < v < 20 for v in losses)
    md = (out / "throughput.md").read_text()
    assert "## bf16 autocast" in md and "## Experiments per hour: runs at once" in md
