"""Label-quality metrics (HuBERT's phone purity, cluster purity, PNMI) on known cases."""

from __future__ import annotations

import math

import pytest
import torch

from birq_fs2.label_stats import label_quality


def _phones(n=20_000, num_phones=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Zipf-like phone frequencies, as in speech.
    weights = 1.0 / torch.arange(1, num_phones + 1).float()
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def test_labels_equal_to_phones_score_one():
    phones = _phones()
    q = label_quality(phones * 7 + 3, phones)  # any relabelling of the phones
    assert q.pnmi == pytest.approx(1.0)
    assert q.phone_purity == pytest.approx(1.0) and q.cluster_purity == pytest.approx(1.0)
    assert q.codes_used == 40 and q.chance_pnmi < 0.05


def test_random_labels_carry_almost_nothing():
    phones = _phones()
    labels = torch.randint(0, 64, phones.shape, generator=torch.Generator().manual_seed(1))
    q = label_quality(labels, phones)
    # The plug-in MI estimate is biased up by about (K-1)(P-1) / (2 N) nats.
    assert 0.0 <= q.pnmi < 0.03 and q.pnmi == pytest.approx(q.chance_pnmi, abs=0.01)
    assert q.perplexity == pytest.approx(64, rel=0.02)


def test_constant_labels_score_zero_and_split_codes_lower_cluster_purity():
    phones = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    q = label_quality(torch.zeros(10, dtype=torch.long), phones)
    assert q.pnmi == 0.0 and q.codes_used == 1 and q.perplexity == pytest.approx(1.0)
    assert q.phone_purity == pytest.approx(0.5) and q.cluster_purity == pytest.approx(1.0)
    # Phone 2 split over two codes: still pure codes, less concentrated phones.
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    q = label_quality(labels, phones)
    assert q.phone_purity == pytest.approx(1.0) and q.cluster_purity == pytest.approx(0.8)
    h_y = -sum(p * math.log(p) for p in (0.2, 0.3, 0.5))
    h_y_given_z = 0.0  # every code is one phone
    assert q.pnmi == pytest.approx((h_y - h_y_given_z) / h_y)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same length"):
        label_quality(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="No frames"):
        label_quality(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
