import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

# The interpreter suite needs TRITON_INTERPRET=1 before triton is imported; the main
# session runs it in a subprocess (tests/test_triton.py) instead of collecting it here.
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    collect_ignore_glob = ["interpreter/*"]


def make_quantizer(N, D, G, d, K, *, seed=0, dtype=torch.float32):
    """Seeded (x, projection, codebook) with Xavier-like projections and unit code rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    projection = torch.randn(G, D, d, generator=gen) * (2.0 / (D + d)) ** 0.5
    codebook = F.normalize(torch.randn(G, K, d, generator=gen), dim=-1)
    return x.to(dtype), projection, codebook


def make_log_probs(N, G, K, *, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(N, G, K, generator=gen) * 2.0, dim=-1)


def signed_one_hot_codebook(K, d):
    """Identity projection and codes +-e_i: code j = (+1 if (j // d) is even else -1) * e_(j % d).

    Similarities are single components of z, exact whatever the summation order of the
    GEMM (numpy's and MKL's micro-kernels round identical columns differently), so the
    repeated codes give bit-exact ties.
    """
    codes = torch.zeros(K, d)
    j = torch.arange(K)
    codes[j, j % d] = torch.where((j // d) % 2 == 0, 1.0, -1.0)
    return torch.eye(d)[None], codes[None]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small synthesised corpus (train/dev/test, disjoint speakers), once per session."""
    from birq_fs2.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, hours=0.02, num_speakers=6, seed=3, jobs=2, progress=False)
    return out
