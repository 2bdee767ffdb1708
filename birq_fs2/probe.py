"""Frozen-encoder phone probes: how much phonetic information each layer carries.

Two yardsticks, both on a frozen encoder (eval mode: no dropout, no masking) and on a
corpus with phone alignments (``birq-data synth`` writes them), with the phones mapped to
one inventory (`birq_fs2.data.phones`: CMU's 39 and ``sil``):

- **linear frame probe** (HuBERT's and wav2vec 2.0's layer analysis): per layer, a
  multinomial logistic regression from the layer's output of each 40 ms encoder frame
  to the phone at the frame's centre; trained on the train speakers, the epoch chosen by
  dev frame accuracy, reported as test frame accuracy. The stacked log-mel input (what
  BEST-RQ quantizes) is the ``fbank`` row.
- **phone recogniser** (SUPERB's PR task): a softmax-weighted sum of every block's
  output, each layer-normalised, a linear layer and CTC on the phone sequence (silence
  dropped); trained on the train speakers, the epoch chosen by dev phone error rate,
  reported as test PER (jiwer's edit distance over phone tokens) with its learned layer
  weights.

The splits' speakers are disjoint (the synthetic corpora's train / dev / test), so both
numbers are on held-out speakers. Every block's output is extracted once per utterance
and kept in memory; the probes are small and train in seconds to minutes on 2 cores.
`birq-probe` (birq_fs2.cli.probe) runs them for one or more encoders with the floors (a
randomly initialised encoder, the input) and writes the report.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq2.nn import BatchLayout
from torch import Tensor, nn

from birq_fs2.data.alignments import PhoneSegment, frame_phones
from birq_fs2.data.audio import AudioError, AudioLoader, FbankExtractor, utterance_seed
from birq_fs2.data.corpus import Utterance
from birq_fs2.data.phones import CMU_PHONES, PHONE_INDEX, PHONES, SILENCE, to_cmu
from birq_fs2.models.model import BirqModel
from birq_fs2.scoring import count_errors

INPUT = "fbank"
"""The stream of the stacked log-mel input frames (before the encoder)."""

BLANK = 0
"""The CTC blank; the recogniser's classes are 1 + index in CMU_PHONES."""


def block_name(k: int) -> str:
    return f"block_{k}"


@dataclass
class ProbeSplit:
    """One split's frozen features: per utterance, every stream's (S, D) frames, the phone
    class of each frame (-1: left out) and the phone sequence (silence dropped)."""

    ids: list[str] = field(default_factory=list)
    streams: dict[str, list[Tensor]] = field(default_factory=dict)
    frame_classes: list[Tensor] = field(default_factory=list)
    phone_seqs: list[list[str]] = field(default_factory=list)
    unmapped: Counter = field(default_factory=Counter)
    """Alignment phone names without an inventory phone, by frames."""
    skipped: list[str] = field(default_factory=list)
    """Utterances whose audio could not be read (the error, naming the file)."""

    @property
    def frames(self) -> int:
        return sum(int(c.numel()) for c in self.frame_classes)


@torch.no_grad()
def extract(
    model: BirqModel,
    extractor: FbankExtractor,
    utterances: Sequence[Utterance],
    alignments: dict[str, list[PhoneSegment]],
    *,
    blocks: bool = True,
) -> ProbeSplit:
    """The input and (with `blocks`) every conformer block's output of each aligned
    utterance, unmasked, one utterance at a time (no padding can leak into a frame)."""
    model.eval()
    loader, split = AudioLoader(), ProbeSplit()
    layers = list(range(1, model.config.encoder_config.num_encoder_layers + 1)) if blocks else []
    frame_seconds = model.config.frame_ms / 1000
    for u in utterances:
        try:
            waveform = loader(u.path).waveform
        except AudioError as ex:
            split.skipped.append(str(ex))
            continue
        fbank = extractor(waveform, utterance_seed(0, "probe", "dither"))[None]
        layout = BatchLayout(fbank.shape[:2], seq_lens=[fbank.shape[1]])
        stacked, out_layout = model.stack(fbank, layout)
        outputs = {INPUT: F.layer_norm(stacked[0].float(), (stacked.shape[-1],))}
        if layers:
            _, captured = model.run_encoder(stacked, out_layout, capture=layers)
            outputs.update({block_name(k): captured[k][0].float() for k in layers})
        names = frame_phones(alignments[u.id], frame_seconds, stacked.shape[1])
        mapped = [to_cmu(p) for p in names]
        split.unmapped.update(p for p, m in zip(names, mapped, strict=True) if m is None)
        split.frame_classes.append(
            torch.tensor([PHONE_INDEX[m] if m is not None else -1 for m in mapped])
        )
        sequence = (to_cmu(s.phone) for s in alignments[u.id])
        split.phone_seqs.append([p for p in sequence if p is not None and p != SILENCE])
        split.ids.append(u.id)
        for name, frames in outputs.items():
            split.streams.setdefault(name, []).append(frames.clone())
    return split


# --- the linear frame probe ------------------------------------------------------------


@dataclass
class LinearResult:
    dev_accuracy: float
    test_accuracy: float
    epoch: int
    """The epoch chosen by dev accuracy (1-based)."""
    test_utterances: dict[str, tuple[int, int]]
    """Per test utterance: (frames wrong, frames scored), for paired statistics."""


def _frames(split: ProbeSplit, stream: str) -> tuple[Tensor, Tensor]:
    x, y = torch.cat(split.streams[stream]), torch.cat(split.frame_classes)
    keep = y >= 0
    return x[keep], y[keep]


def linear_probe(
    train: ProbeSplit, dev: ProbeSplit, test: ProbeSplit, stream: str, *,
    epochs: int = 20, seed: int = 0, lr: float = 2e-3, batch_frames: int = 1024,
) -> LinearResult:  # fmt: skip
    """Logistic regression of `stream`'s frames on the phone classes (features standardised
    with the train frames' statistics); Adam, the epoch with the best dev accuracy."""
    x, y = _frames(train, stream)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
    dev_x, dev_y = _frames(dev, stream)
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], len(PHONES))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    xn, dev_xn = (x - mean) / std, (dev_x - mean) / std
    best = (-1.0, 0, head.state_dict())
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(y), generator=gen).split(batch_frames):
            loss = F.cross_entropy(head(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (head(dev_xn).argmax(-1) == dev_y).float().mean().item()
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    per_utt, wrong, total = {}, 0, 0
    with torch.no_grad():
        for uid, frames, classes in zip(
            test.ids, test.streams[stream], test.frame_classes, strict=True
        ):
            keep = classes >= 0
            pred = head((frames[keep] - mean) / std).argmax(-1)
            bad, n = int((pred != classes[keep]).sum()), int(keep.sum())
            per_utt[uid] = (bad, n)
            wrong, total = wrong + bad, total + n
    return LinearResult(best[0], 1 - wrong / max(total, 1), best[1], per_utt)


# --- the phone recogniser (SUPERB PR) --------------------------------------------------


class WeightedSumCTC(nn.Module):
    """SUPERB's featurizer and PR downstream: softmax(w) over L layer-normalised layers,
    then one linear layer to the phones and the CTC blank."""

    def __init__(self, num_layers: int, dim: int) -> None:
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.proj = nn.Linear(dim, len(CMU_PHONES) + 1)

    def layer_weights(self) -> Tensor:
        return self.layer_logits.softmax(0)

    def forward(self, layers: Tensor) -> Tensor:
        """(N, S, L, D) frozen layers -> (N, S, C + 1) log-probabilities."""
        normed = F.layer_norm(layers, layers.shape[-1:])
        mixed = torch.einsum("nsld,l->nsd", normed, self.layer_weights())
        return self.proj(mixed).log_softmax(-1)


@dataclass
class RecogniserResult:
    dev_per: float
    test_per: float
    epoch: int
    layer_weights: list[float]
    test_utterances: dict[str, tuple[int, int]]
    """Per test utterance: (phone edits, reference phones)."""


def _stack_layers(split: ProbeSplit, streams: Sequence[str], i: int) -> Tensor:
    return torch.stack([split.streams[s][i] for s in streams], dim=1)  # (S, L, D)


def _batches(split: ProbeSplit, streams: Sequence[str], batch_utterances: int) -> list[list[int]]:
    usable = [i for i, seq in enumerate(split.phone_seqs) if seq]
    usable.sort(key=lambda i: split.streams[streams[0]][i].shape[0])
    return [usable[k : k + batch_utterances] for k in range(0, len(usable), batch_utterances)]


def _padded(split: ProbeSplit, streams: Sequence[str], batch: list[int]) -> tuple[Tensor, Tensor]:
    seqs = [_stack_layers(split, streams, i) for i in batch]
    lengths = torch.tensor([s.shape[0] for s in seqs])
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True), lengths


def _targets(split: ProbeSplit, batch: list[int]) -> tuple[Tensor, Tensor]:
    ids = [torch.tensor([1 + CMU_PHONES.index(p) for p in split.phone_seqs[i]]) for i in batch]
    return torch.cat(ids), torch.tensor([len(t) for t in ids])


def greedy_phones(log_probs: Tensor, length: int) -> list[str]:
    """Best path: argmax per frame, repeats merged, blanks dropped."""
    best = log_probs[:length].argmax(-1).tolist()
    out, prev = [], BLANK
    for c in best:
        if c != prev and c != BLANK:
            out.append(CMU_PHONES[c - 1])
        prev = c
    return out


@torch.no_grad()
def _phone_errors(
    model: WeightedSumCTC, split: ProbeSplit, streams: Sequence[str], batch_utterances: int
) -> dict[str, tuple[int, int]]:
    per_utt = {}
    for batch in _batches(split, streams, batch_utterances):
        x, lengths = _padded(split, streams, batch)
        log_probs = model(x)
        for row, i in enumerate(batch):
            ref, hyp = (
                " ".join(split.phone_seqs[i]),
                " ".join(greedy_phones(log_probs[row], int(lengths[row]))),
            )
            counts = count_errors([ref], [hyp])
            per_utt[split.ids[i]] = (counts.word_errors, counts.ref_words)
    return per_utt


def _rate(per_utt: dict[str, tuple[int, int]]) -> float:
    errors, total = (sum(v[k] for v in per_utt.values()) for k in (0, 1))
    return 100.0 * errors / max(total, 1)


def phone_recogniser(
    train: ProbeSplit, dev: ProbeSplit, test: ProbeSplit, streams: Sequence[str], *,
    epochs: int = 20, seed: int = 0, lr: float = 1e-2, batch_utterances: int = 8,
) -> RecogniserResult:  # fmt: skip
    """SUPERB-style PR over `streams` (same width); Adam, the epoch with the best dev PER."""
    torch.manual_seed(seed)
    dim = train.streams[streams[0]][0].shape[-1]
    model = WeightedSumCTC(len(streams), dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _batches(train, streams, batch_utterances)
    order = random.Random(seed)
    best = (float("inf"), 0, model.state_dict())
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in order.sample(batches, len(batches)):
            x, lengths = _padded(train, streams, batch)
            targets, target_lengths = _targets(train, batch)
            log_probs = model(x).transpose(0, 1)  # (S, N, C)
            loss = F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=BLANK,
                              zero_infinity=True)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        per = _rate(_phone_errors(model, dev, streams, batch_utterances))
        if per < best[0]:
            best = (per, epoch, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    per_utt = _phone_errors(model, test, streams, batch_utterances)
    weights = [round(w, 4) for w in model.layer_weights().tolist()]
    return RecogniserResult(best[0], _rate(per_utt), best[1], weights, per_utt)


# --- one encoder, every probe ------------------------------------------------------------


@dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 20
    """Linear probe epochs (the best on dev is kept)."""
    recogniser_epochs: int = 20
    recogniser_lr: float = 1e-2
    """SUPERB's PR learning rate for its linear downstream."""
    batch_utterances: int = 8
    seed: int = 0


def probe_encoder(
    train: ProbeSplit, dev: ProbeSplit, test: ProbeSplit, config: ProbeConfig,
    *, streams: Sequence[str] | None = None,
) -> dict:  # fmt: skip
    """The linear probe of every stream and the recogniser over the blocks (over the input
    alone when there are no blocks): a JSON-able summary."""
    names = list(streams or train.streams)
    linear = {
        s: linear_probe(train, dev, test, s, epochs=config.epochs, seed=config.seed) for s in names
    }
    blocks = [s for s in names if s != INPUT] or [INPUT]
    pr = phone_recogniser(
        train, dev, test, blocks, epochs=config.recogniser_epochs, seed=config.seed,
        lr=config.recogniser_lr, batch_utterances=config.batch_utterances,
    )  # fmt: skip
    best = max(
        (s for s in names if s != INPUT), key=lambda s: linear[s].dev_accuracy, default=INPUT
    )
    return {
        "linear": {
            s: {"dev_accuracy": r.dev_accuracy, "test_accuracy": r.test_accuracy, "epoch": r.epoch}
            for s, r in linear.items()
        },
        "best_layer": {
            "stream": best,
            **{k: getattr(linear[best], k) for k in ("dev_accuracy", "test_accuracy")},
        },
        "recogniser": {
            "streams": blocks,
            "dev_per": pr.dev_per,
            "test_per": pr.test_per,
            "epoch": pr.epoch,
            "layer_weights": pr.layer_weights,
        },  # fmt: skip
        "test_utterances": {
            "best_layer_frames": linear[best].test_utterances,
            "recogniser_phones": pr.test_utterances,
        },
    }
