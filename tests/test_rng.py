import math

import pytest
import torch
from birq_kernels import gumbel_noise
from birq_kernels._rng import gumbel_noise_rows, seed_keys


def test_noise_is_a_pure_function_of_seed_and_coordinates():
    a = gumbel_noise(1234, 7, 3, 300)
    b = gumbel_noise(1234, 7, 3, 300)
    assert torch.equal(a, b)
    # Any slab of rows regenerates the same values (what the chunked path relies on).
    rows = torch.tensor([5 * 3 + 1, 2 * 3 + 0, 6 * 3 + 2])
    slab = gumbel_noise_rows(1234, rows, 300)
    assert torch.equal(slab, a.view(-1, 300)[rows])
    tail = gumbel_noise_rows(1234, rows, 300, col_start=100)
    assert torch.equal(tail, a.view(-1, 300)[rows, 100:])
    # A larger tensor extends a smaller one: element (n, g, j) does not depend on N.
    big = gumbel_noise(1234, 20, 3, 300)
    assert torch.equal(big[:7], a)


def test_noise_changes_with_seed_including_high_bits():
    a = gumbel_noise(1, 4, 2, 64)
    for other in (2, 1 + 2**32, 1 + 2**63):
        b = gumbel_noise(other, 4, 2, 64)
        assert (a != b).float().mean() > 0.99


def test_noise_follows_gumbel_distribution():
    noise = gumbel_noise(99, 400, 2, 512).flatten().double()
    n = noise.numel()
    euler_gamma = 0.5772156649015329
    # Mean and variance of Gumbel(0, 1): gamma and pi^2 / 6 (5 standard errors).
    assert abs(noise.mean().item() - euler_gamma) < 5 * math.sqrt(math.pi**2 / 6 / n)
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.02
    # CDF exp(-exp(-x)) at a few points (Kolmogorov-Smirnov-style bound).
    for q in (-1.0, 0.0, 1.0, 3.0):
        empirical = (noise <= q).double().mean().item()
        assert abs(empirical - math.exp(-math.exp(-q))) < 3e-3
    # Neighbouring codes and neighbouring rows are uncorrelated.
    grid = gumbel_noise(5, 2000, 1, 256)[:, 0]
    assert (
        abs(torch.corrcoef(torch.stack([grid[:, :-1].flatten(), grid[:, 1:].flatten()]))[0, 1])
        < 0.01
    )
    assert abs(torch.corrcoef(torch.stack([grid[:-1].flatten(), grid[1:].flatten()]))[0, 1]) < 0.01


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seed_is_a_value_error(seed):
    with pytest.raises(ValueError, match="seed"):
        seed_keys(seed)


def test_bad_sizes_are_value_errors():
    with pytest.raises(ValueError, match="`K`"):
        gumbel_noise(0, 2, 2, -1)


def test_extreme_bit_patterns_give_finite_noise():
    from birq_kernels._rng import bits_to_gumbel_

    # 0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF and the patterns next to the ends of the range
    bits = torch.tensor([0, 2**31 - 1, -(2**31), -1, 511, 512, -512, -513], dtype=torch.int32)
    noise = bits_to_gumbel_(bits)
    assert torch.isfinite(noise).all()
    assert noise.max().item() < 17.0 and noise.min().item() > -3.0
    # The largest pattern maps to the largest noise, the smallest to the smallest.
    assert noise[3] == noise.max() and noise[0] == noise.min()
