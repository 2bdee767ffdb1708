"""How much phonetic information a stream of frame labels carries, as HuBERT measures it
(Hsu et al. 2021, section IV-B), against true phone alignments of the same frames.

With p(y, z) the joint distribution of phone y and label z over the frames:

- phone purity   = sum_z max_y p(y, z)   (E_z max_y p(y | z): how pure a code is in phones)
- cluster purity = sum_y max_z p(y, z)   (E_y max_z p(z | y): how concentrated a phone is)
- PNMI           = I(y; z) / H(y)        (the fraction of the phone uncertainty a label removes)

plus the label stream's own code usage and perplexity exp(H(z)). PNMI is 1 for labels
that determine the phone, 0 for labels independent of it, constant labels included.
Phone purity alone rewards many small codes and cluster purity few large ones; PNMI is
the number to compare streams by, at equal frame counts: the plug-in estimate of I(y; z)
is biased upwards by roughly (codes - 1)(phones - 1) / (2 N) nats, a lot when the codes
are many and the frames few. `chance_pnmi` is the PNMI of the same labels shuffled over
the frames (no phone information, the same code histogram): the floor to read PNMI
against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LabelQuality:
    phone_purity: float
    cluster_purity: float
    pnmi: float
    codes_used: int
    perplexity: float
    num_frames: int
    chance_pnmi: float
    """PNMI of the labels permuted over the frames (seeded): the estimator's bias."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _ids(values: Tensor) -> tuple[Tensor, int]:
    _, inverse = torch.unique(values, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def entropy(p: Tensor) -> Tensor:
    """Entropy in nats of a distribution (zeros allowed)."""
    p = p[p > 0]
    return -(p * p.log()).sum()


def joint_distribution(a: Tensor, b: Tensor) -> Tensor:
    """p(a, b) (float64) of two label sequences of the same frames, over the values
    each one takes (in sorted order)."""
    ia, num_a = _ids(a.flatten().cpu())
    ib, num_b = _ids(b.flatten().cpu())
    return _joint(ia, ib, num_a, num_b)


def _joint(ia: Tensor, ib: Tensor, num_a: int, num_b: int) -> Tensor:
    joint = torch.zeros(num_a, num_b, dtype=torch.float64)
    joint.index_put_((ia, ib), torch.ones_like(ia, dtype=torch.float64), accumulate=True)
    return joint / joint.sum()


def mutual_information(joint: Tensor) -> Tensor:
    """I(a; b) in nats of a joint distribution p(a, b)."""
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    return (joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()


def _pnmi(joint: Tensor) -> float:
    """I(y; z) / H(y) of p(phone y, label z)."""
    h_y = entropy(joint.sum(1))
    # A single phone leaves no uncertainty to explain: PNMI is 0 by convention.
    return float((mutual_information(joint) / h_y).clamp(0.0, 1.0)) if h_y > 0 else 0.0


def label_quality(labels: Tensor, phones: Tensor, *, seed: int = 0) -> LabelQuality:
    """Quality of `labels` (N,) against `phones` (N,), both integer ids of the same N
    frames (any id values; only equality matters)."""
    if labels.shape != phones.shape or labels.dim() != 1:
        raise ValueError(
            f"`labels` and `phones` must be 1-D of the same length, got {tuple(labels.shape)} "
            f"and {tuple(phones.shape)}."
        )
    if labels.numel() == 0:
        raise ValueError("No frames: label quality needs at least one labelled frame.")
    z, num_z = _ids(labels.flatten().cpu())
    y, num_y = _ids(phones.flatten().cpu())
    joint = _joint(y, z, num_y, num_z)
    shuffled = z[torch.randperm(z.numel(), generator=torch.Generator().manual_seed(seed))]
    chance = _pnmi(_joint(y, shuffled, num_y, num_z))
    return LabelQuality(
        phone_purity=float(joint.max(dim=0).values.sum()),
        cluster_purity=float(joint.max(dim=1).values.sum()),
        pnmi=_pnmi(joint),
        codes_used=num_z,
        perplexity=float(torch.exp(entropy(joint.sum(0)))),
        num_frames=int(labels.numel()),
        chance_pnmi=chance,
    )


def stream_quality(
    streams: Mapping[str, Sequence[Tensor]], phones: Sequence[str]
) -> dict[str, LabelQuality]:
    """`label_quality` of several label streams of the same frames: each stream's parts
    (one (S_i,) tensor per utterance) concatenated, against the frames' phone names."""
    ids = {p: i for i, p in enumerate(sorted(set(phones)))}
    phone_ids = torch.tensor([ids[p] for p in phones])
    return {
        name: label_quality(torch.cat(list(parts)), phone_ids) for name, parts in streams.items()
    }


def codebook_usage(labels: Tensor, codebook_size: int) -> tuple[float, float]:
    """(distinct codes used, perplexity = exp(entropy)) of (N, G) labels, mean over codebooks."""
    used, ppl = [], []
    for g in range(labels.shape[1]):
        counts = torch.bincount(labels[:, g], minlength=codebook_size).float()
        p = counts[counts > 0] / counts.sum()
        used.append(float((counts > 0).sum()))
        ppl.append(float(torch.exp(entropy(p))))
    return sum(used) / len(used), sum(ppl) / len(ppl)


def normalized_mutual_information(a: Tensor, b: Tensor) -> float:
    """NMI (arithmetic normalisation) between two label sequences of the same frames."""
    if a.numel() == 0:
        return 0.0
    joint = joint_distribution(a, b)
    denom = (entropy(joint.sum(1)) + entropy(joint.sum(0))) / 2
    return float(mutual_information(joint) / denom) if denom > 0 else 1.0
