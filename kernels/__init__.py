"""birq_kernels: the quantizer hot paths of BiRQ / BEST-RQ (torch + Triton, no fairseq2).

- `rpq_labels`: anchor labels, nearest code of a frozen random-projection quantizer.
- `gumbel_rpq_cross_entropy`: enhanced labels by straight-through Gumbel-softmax, fused
  with their cross-entropy; never stores an N x K tensor for the backward pass. With
  ``with_probs=True`` it also returns the per-codebook sums of the codes' probabilities,
  which `codebook_diversity_loss` turns into wav2vec 2.0's diversity term.
- `gumbel_noise`: the counter-based noise both use, materialised (tests, references).
- `reference_*`: the plain-torch definitions the fast paths are tested against.

Backends: Triton on CUDA tensors, a chunked torch path (bounded memory) elsewhere.
"""

from ._rng import gumbel_noise
from .gumbel_rpq import (
    codebook_diversity_loss,
    gumbel_rpq_cross_entropy,
    reference_gumbel_rpq_cross_entropy,
)
from .rpq_labels import reference_rpq_labels, rpq_labels

__all__ = [
    "codebook_diversity_loss",
    "gumbel_noise",
    "gumbel_rpq_cross_entropy",
    "reference_gumbel_rpq_cross_entropy",
    "reference_rpq_labels",
    "rpq_labels",
]
