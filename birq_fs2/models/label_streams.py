"""Frame labels of a batch as the model computes them: the anchor labels of the input and
the random-projection labels of any conformer block's output (BiRQ's enhanced labels come
from block `label_layer`), noise-free, on the unmasked input. Used by the pretraining
recipe's validation (label quality, the collapse guard's second reading) and by
`birq-labels` (every block)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from birq_kernels import rpq_labels
from fairseq2.nn import BatchLayout
from torch import Tensor

from birq_fs2.models.model import BirqModel, RandomProjectionQuantizer


def _quantize(normed: Tensor, quantizer: RandomProjectionQuantizer) -> Tensor:
    return rpq_labels(normed, quantizer.projection, quantizer.codebook, check_codebook_norm=False)[
        :, 0
    ]


def layer_quantizer(model: BirqModel) -> RandomProjectionQuantizer:
    """The enhanced quantizer, or for a BEST-RQ model the one its config would build (the
    same seed and shape BiRQ would use), so that both families are read alike."""
    if model.enhanced_quantizer is not None:
        return model.enhanced_quantizer
    return RandomProjectionQuantizer(model.model_dim, model.config.enhanced)


@torch.no_grad()
def frame_label_streams(
    model: BirqModel,
    seqs: Tensor,
    layout: BatchLayout,
    layers: Sequence[int],
    quantizer: RandomProjectionQuantizer | None = None,
) -> list[dict[str, Tensor]]:
    """Labels of every encoder frame of a batch of (N, T, C) fbank features, one dict per
    utterance: ``anchor`` and ``layer_<k>`` for each conformer block k in `layers`
    (1-based), each (S_i,) for the utterance's S_i unpadded encoder frames."""
    stacked, out_layout = model.stack(seqs, layout)
    N, S, _ = stacked.shape
    streams = {"anchor": model.anchor_labels(stacked.flatten(0, 1))[:, 0].view(N, S)}
    if layers:
        _, captured = model.run_encoder(stacked, out_layout, upto=max(layers), capture=layers)
        q = quantizer if quantizer is not None else layer_quantizer(model)
        for layer in layers:
            normed = model.normalize_label_input(captured[layer], out_layout)
            streams[f"layer_{layer}"] = _quantize(normed.flatten(0, 1), q).view(N, S)
    return [
        {name: labels[i, :n] for name, labels in streams.items()}
        for i, n in enumerate(out_layout.seq_lens)
    ]
