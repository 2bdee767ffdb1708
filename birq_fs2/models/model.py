"""The BiRQ / BEST-RQ model.

Data path (one batch of 80-dim fbank features, 10 ms frames; the archs stack
fbank_stride = 4 of them into one 40 ms encoder frame, see birq_fs2.frames):

    fbank -> stack fbank_stride frames (`encoder_frontend.feature_extractor`) = u
    u -> parameter-free LayerNorm -> anchor quantizer -> anchor_labels
    u -> `masker` (noise spans) -> frontend -> conformer `encoder` -> h_L
    h_L[masked] -> anchor head -> cross-entropy with anchor_labels          (L_anc)
    [enhanced] u -> frontend -> blocks 1..label_layer (unmasked) -> h_k
               h_k -> `enhanced.label_norm` (instance norm per utterance by default)
               h_k[masked] -> enhanced quantizer, Gumbel labels fused with the
               enhanced head's cross-entropy (straight-through gradient into
               h_k unless `label_grad: detach`, the default)              (L_enh)
    [diversity] L_div: wav2vec 2.0's codebook diversity of the enhanced quantizer
    loss = w * L_enh + gamma * L_anc + lambda * L_div  (before refine start: L_anc alone;
           w ramps 0 -> schedule.enhanced_weight; lambda = enhanced.diversity_weight, per masked frame)

A stacked frame is an encoder frame, so "masked encoder frame" is exact: it is a frame
whose fbank_stride input fbank frames were all replaced with noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from birq_kernels import codebook_diversity_loss, gumbel_rpq_cross_entropy, rpq_labels
from fairseq2.models.transformer import AttentionBiasCache, TransformerEncoder
from fairseq2.models.wav2vec2 import Wav2Vec2Frontend
from fairseq2.nn import BatchLayout
from torch import Tensor
from torch.nn import Linear, Module
from torch.profiler import record_function

from .config import BirqConfig, MaskingConfig, QuantizerConfig


class RandomProjectionQuantizer(Module):
    """Frozen random projection (Xavier) and codebook (unit rows), as persistent buffers
    drawn from ``config.seed``: checkpoints carry them, so labels reproduce exactly."""

    def __init__(
        self, input_dim: int, config: QuantizerConfig, *, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.seed = config.seed
        G, K, d = config.num_codebooks, config.codebook_size, config.code_dim
        self.register_buffer("projection", torch.empty(G, input_dim, d, device=device))
        self.register_buffer("codebook", torch.empty(G, K, d, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.projection.device.type == "meta":  # loading: the checkpoint fills them
            return
        gen = torch.Generator().manual_seed(self.seed)
        projection = torch.empty(self.projection.shape)
        for g in range(projection.shape[0]):
            torch.nn.init.xavier_uniform_(projection[g], generator=gen)
        codebook = F.normalize(torch.randn(self.codebook.shape, generator=gen), dim=-1)
        with torch.no_grad():
            self.projection.copy_(projection)
            self.codebook.copy_(codebook)

    @property
    def num_codebooks(self) -> int:
        return self.codebook.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[1]


class BestRqMasker(Module):
    """Noise spans on the stacked input: each frame starts a span with probability
    ``start_prob``; masked frames become N(0, noise_std^2). Padding is never masked.
    `frame_ms` (one encoder frame) only serves the error messages."""

    def __init__(self, config: MaskingConfig, frame_ms: float) -> None:
        super().__init__()
        self.span_len, self.start_prob, self.noise_std = (
            config.span_len,
            config.start_prob,
            config.noise_std,
        )
        self.frame_ms = frame_ms

    def forward(self, seqs: Tensor, seqs_layout: BatchLayout) -> tuple[Tensor, Tensor]:
        N, S, _ = seqs.shape
        # fairseq2's layouts list every length, padded or not.
        lens = torch.tensor(seqs_layout.seq_lens, device=seqs.device)
        if int(lens.min()) <= self.span_len:
            raise ValueError(
                f"An utterance of {int(lens.min())} encoder frames ({int(lens.min()) * self.frame_ms:.0f} ms) is not longer "
                f"than one mask span (masking.span_len = {self.span_len}); raise the data's min_frames."
            )
        positions = torch.arange(S, device=seqs.device)[None, :]
        can_start = positions <= (lens - self.span_len)[:, None]
        starts = (torch.rand(N, S, device=seqs.device) < self.start_prob) & can_start
        # Every utterance gets at least one span, so every one contributes targets.
        none = ~starts.any(dim=1)
        if none.any():
            first = (torch.rand(N, device=seqs.device) * (lens - self.span_len + 1)).long()
            starts[none, first[none]] = True
        # A frame is masked when a span started within the last span_len frames.
        padded = F.pad(starts[:, None].float(), (self.span_len - 1, 0))
        mask = F.max_pool1d(padded, self.span_len, stride=1)[:, 0].bool() & (
            positions < lens[:, None]
        )
        noise = torch.randn_like(seqs) * self.noise_std
        return torch.where(mask[..., None], noise, seqs), mask


@dataclass
class BirqStep:
    """What the recipe's schedules decide for one step."""

    enhanced_active: bool = True
    enhanced_weight: float = 1.0
    """Weight of L_enh (ramps up from 0 after refine start with a warm-up)."""
    gamma: float = 1.0
    tau: float = 1.0
    seed: int = 0
    """Gumbel noise seed of this batch: the recipe derives it from (seed, step, rank,
    micro-batch index), separately for training and validation."""


@dataclass
class BirqOutput:
    loss: Tensor
    """Summed over masked frames (mean over codebooks): divide by num_targets."""
    anchor_loss: Tensor
    enhanced_loss: Tensor | None
    num_targets: int
    anchor_correct: Tensor
    enhanced_correct: Tensor | None
    anchor_labels: Tensor
    """(num_targets, G_a)"""
    enhanced_labels: Tensor | None
    num_frames: int
    """Unpadded encoder frames in the batch (mask rate = num_targets / num_frames)."""
    diversity_loss: Tensor | None = None
    """The batch's codebook diversity loss (a mean, not a sum); None when off."""


class BirqModel(Module):
    def __init__(
        self,
        config: BirqConfig,
        encoder_frontend: Wav2Vec2Frontend,
        encoder: TransformerEncoder,
        masker: BestRqMasker,
        anchor_quantizer: RandomProjectionQuantizer,
        anchor_head: Linear,
        enhanced_quantizer: RandomProjectionQuantizer | None,
        enhanced_head: Linear | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model_dim = config.encoder_config.model_dim
        self.label_layer = config.label_layer
        self.encoder_frontend = encoder_frontend
        self.encoder = encoder
        self.masker = masker
        self.anchor_quantizer = anchor_quantizer
        self.anchor_head = anchor_head
        self.enhanced_quantizer = enhanced_quantizer
        self.enhanced_head = enhanced_head

    @property
    def has_enhanced(self) -> bool:
        return self.enhanced_head is not None

    def stack(self, seqs: Tensor, seqs_layout: BatchLayout) -> tuple[Tensor, BatchLayout]:
        """(N, T, C) fbank -> (N, T // fbank_stride, C * fbank_stride) stacked frames, one per
        encoder frame."""
        extractor = self.encoder_frontend.feature_extractor
        assert extractor is not None
        return extractor(seqs, seqs_layout)

    def run_encoder(
        self,
        stacked: Tensor,
        layout: BatchLayout,
        *,
        upto: int | None = None,
        capture: Sequence[int] = (),
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Frontend + conformer blocks; stops after block `upto` if given, and returns the
        outputs of the blocks in `capture` (1-based) alongside."""
        seqs = self.encoder_frontend.post_extract_layer_norm(stacked)
        seqs, _ = self.encoder_frontend.process_features(seqs, layout)
        cache = AttentionBiasCache()
        captured: dict[int, Tensor] = {}
        for idx, layer in enumerate(self.encoder.layers, start=1):
            seqs = layer(seqs, layout, cache)
            if idx in capture:
                captured[idx] = seqs
            if idx == upto:
                return seqs, captured
        if self.encoder.layer_norm is not None:
            seqs = self.encoder.layer_norm(seqs)
        return seqs, captured

    def anchor_labels(self, stacked_frames: Tensor) -> Tensor:
        """BEST-RQ's labels of (M, feature_dim) stacked input frames: the anchor quantizer
        on the parameter-free per-frame LayerNorm; (M, G_a)."""
        q = self.anchor_quantizer
        normed = F.layer_norm(stacked_frames.float(), (stacked_frames.shape[-1],))
        return rpq_labels(normed, q.projection, q.codebook, check_codebook_norm=False)

    def normalize_label_input(self, hidden: Tensor, layout: BatchLayout) -> Tensor:
        """(N, S, D) label-layer output -> the normalised input of the enhanced quantizer
        (fp32), as `enhanced.label_norm` says. Padding never enters the statistics."""
        hidden = hidden.float()
        if self.config.enhanced.label_norm == "layer":
            return F.layer_norm(hidden, (hidden.shape[-1],))
        S = hidden.shape[1]
        lens = torch.tensor(layout.seq_lens, device=hidden.device)
        valid = (torch.arange(S, device=hidden.device)[None, :] < lens[:, None])[..., None]
        count = lens[:, None, None].clamp_min(1).float()
        mean = (hidden * valid).sum(dim=1, keepdim=True) / count
        var = (((hidden - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
        return (hidden - mean) * torch.rsqrt(var + 1e-5)

    def encode(
        self, seqs: Tensor, seqs_layout: BatchLayout, *, layers: Sequence[int] = ()
    ) -> tuple[Tensor, BatchLayout, dict[int, Tensor]]:
        """Unmasked encoder output (N, S, model_dim) and the outputs of `layers` (1-based):
        frame features for downstream use."""
        stacked, layout = self.stack(seqs, seqs_layout)
        out, captured = self.run_encoder(stacked, layout, capture=layers)
        return out, layout, captured

    def forward(
        self, seqs: Tensor, seqs_layout: BatchLayout, step: BirqStep | None = None
    ) -> BirqOutput:
        step = step or BirqStep()
        stacked, layout = self.stack(seqs, seqs_layout)
        masked_input, mask = self.masker(stacked, layout)

        enhanced = self.has_enhanced and step.enhanced_active
        label_layer, cfg = self.label_layer, self.config.enhanced
        reuse_masked = enhanced and cfg.label_input == "masked"
        with record_function("birq.masked_encoder"):
            hidden, captured = self.run_encoder(
                masked_input, layout, capture=(label_layer,) if reuse_masked else ()
            )
        hidden_masked = hidden[mask]  # (M, model_dim)
        num_targets = hidden_masked.shape[0]

        # Anchor labels: the BEST-RQ quantizer on the parameter-free normalised input.
        anchor_q = self.anchor_quantizer
        with record_function("birq.anchor_labels"):
            anchor_labels = self.anchor_labels(stacked[mask])
        anchor_lp = self._log_probs(self.anchor_head, hidden_masked, anchor_q)
        anchor_loss = -anchor_lp.gather(2, anchor_labels[..., None]).sum() / anchor_q.num_codebooks
        anchor_correct = (
            anchor_lp.argmax(-1) == anchor_labels
        ).float().sum() / anchor_q.num_codebooks

        enhanced_loss = enhanced_labels = enhanced_correct = diversity_loss = None
        loss = anchor_loss
        if enhanced:
            assert self.enhanced_head is not None and self.enhanced_quantizer is not None
            with record_function("birq.label_generator"):
                if reuse_masked:
                    label_hidden = captured[label_layer]
                elif cfg.label_grad == "detach":
                    with torch.no_grad():
                        label_hidden, _ = self.run_encoder(stacked, layout, upto=label_layer)
                else:
                    label_hidden, _ = self.run_encoder(stacked, layout, upto=label_layer)
            label_input = self.normalize_label_input(label_hidden, layout)[mask]
            if cfg.label_grad == "detach":
                label_input = label_input.detach()
            elif cfg.label_grad_scale != 1.0:
                # Exactly the same values (x - sg(x) is 0); the label path's gradient
                # scaled (the paper's form is 1).
                frozen = label_input.detach()
                label_input = frozen + cfg.label_grad_scale * (label_input - frozen)
            enh_q = self.enhanced_quantizer
            enhanced_lp = self._log_probs(self.enhanced_head, hidden_masked, enh_q)
            with_probs = cfg.diversity_weight > 0
            with record_function("birq.enhanced_labels_loss"):
                per_frame, enhanced_labels, *prob_sums = gumbel_rpq_cross_entropy(
                    label_input, enh_q.projection, enh_q.codebook, enhanced_lp,
                    tau=step.tau, logit_scale=cfg.logit_scale, seed=step.seed,
                    noise=cfg.gumbel_noise, with_probs=with_probs, check_codebook_norm=False,
                )  # fmt: skip
            enhanced_loss = per_frame.sum() / enh_q.num_codebooks
            enhanced_correct = (
                enhanced_lp.argmax(-1) == enhanced_labels
            ).float().sum() / enh_q.num_codebooks
            loss = step.enhanced_weight * enhanced_loss + step.gamma * anchor_loss
            if with_probs:
                diversity_loss = codebook_diversity_loss(prob_sums[0], num_targets)
                # The loss is summed over masked frames (the trainer divides by their
                # count): the batch-level term enters per frame.
                loss = loss + cfg.diversity_weight * diversity_loss * num_targets

        return BirqOutput(
            loss=loss, anchor_loss=anchor_loss, enhanced_loss=enhanced_loss, num_targets=num_targets,
            anchor_correct=anchor_correct, enhanced_correct=enhanced_correct,
            anchor_labels=anchor_labels, enhanced_labels=enhanced_labels, diversity_loss=diversity_loss,
            num_frames=int(sum(layout.seq_lens)),
        )  # fmt: skip

    @staticmethod
    def _log_probs(head: Linear, hidden: Tensor, quantizer: RandomProjectionQuantizer) -> Tensor:
        logits = head(hidden).view(
            hidden.shape[0], quantizer.num_codebooks, quantizer.codebook_size
        )
        return torch.log_softmax(logits.float(), dim=-1)
