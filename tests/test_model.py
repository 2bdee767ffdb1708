"""The birq model family: archs, BEST-RQ equivalence, gradient routing, buffers, errors."""

from __future__ import annotations

import json

import pytest
import torch
from birq_kernels import rpq_labels
from fairseq2.nn import BatchLayout
from fairseq2.nn.utils.module import reset_non_persistent_buffers, to_empty
from helpers import python

from birq_fs2.models.config import ARCHS, BirqConfig
from birq_fs2.models.factory import create_birq_model
from birq_fs2.models.model import BestRqMasker, BirqStep


def batch(seed=0, lens=(400, 320, 260)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), max(lens), 80, generator=gen)
    for i, n in enumerate(lens):
        x[i, n:] = 0.0
    return x, BatchLayout(x.shape[:2], seq_lens=list(lens))


def build(arch="tiny", seed=0, **enhanced):
    config = ARCHS[arch]()
    for key, value in enhanced.items():
        setattr(config.enhanced, key, value)
    torch.manual_seed(seed)
    return create_birq_model(config)


def test_tiny_forward_backward_and_param_counts():
    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params <= 5_000_000
    x, layout = batch()
    out = model(x, layout, BirqStep(tau=1.0, seed=1))
    assert out.num_targets > 0 and out.enhanced_loss is not None
    assert 0.3 < out.num_targets / out.num_frames < 0.7  # tiny's masking: ~47 %
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    for arch, lo, hi in (("base", 90e6, 115e6), ("large", 550e6, 650e6)):
        with torch.device("meta"):
            big = create_birq_model(ARCHS[arch]())
        assert lo < sum(p.numel() for p in big.parameters()) < hi, arch


def test_enhanced_off_is_exactly_bestrq():
    birq, bestrq = build("tiny"), build("bestrq_tiny")
    assert bestrq.enhanced_head is None and birq.enhanced_head is not None
    shared = bestrq.state_dict()
    assert all(torch.equal(v, birq.state_dict()[k]) for k, v in shared.items())  # same init
    x, layout = batch(1)
    for model in (birq, bestrq):
        model.train()
    torch.manual_seed(5)
    ref = bestrq(x, layout)
    torch.manual_seed(5)
    warmup = birq(x, layout, BirqStep(enhanced_active=False))
    assert torch.equal(warmup.loss, ref.loss) and warmup.enhanced_loss is None
    torch.manual_seed(5)
    full = birq(x, layout, BirqStep(gamma=0.5, tau=1.0, seed=3))
    assert torch.equal(full.anchor_loss, ref.loss)
    torch.testing.assert_close(full.loss, full.enhanced_loss + 0.5 * ref.loss)


def _enhanced_grads(label_grad, with_output=False, **overrides):
    model = build(label_grad=label_grad, label_layer=2, **overrides)
    model.eval()  # no dropout: both runs see identical activations
    x, layout = batch(2)
    torch.manual_seed(7)
    out = model(x, layout, BirqStep(tau=0.7, seed=11))
    out.enhanced_loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return (grads, out) if with_output else grads


def test_label_grad_straight_through_reaches_label_layers_only_through_the_labels():
    st, stop = _enhanced_grads("straight_through"), _enhanced_grads("detach")
    # Blocks above label_layer only see the prediction path: identical gradients.
    for name in st:
        if name.startswith(("encoder.layers.2.", "encoder.layers.3.", "enhanced_head")):
            torch.testing.assert_close(st[name], stop[name], atol=1e-6, rtol=1e-5)
    # Blocks 1..label_layer also receive the straight-through label gradient with "straight_through".
    for layer in (0, 1):
        names = [n for n in st if n.startswith(f"encoder.layers.{layer}.")]
        diff = max((st[n] - stop[n]).abs().max().item() for n in names)
        assert diff > 1e-6, layer


def test_label_grad_scale_scales_the_label_path_only():
    full, out_full = _enhanced_grads("straight_through", with_output=True)
    none = _enhanced_grads("detach")
    tenth, out_tenth = _enhanced_grads("straight_through", with_output=True, label_grad_scale=0.1)
    # The same labels and losses: only the gradient along the label path changes.
    assert torch.equal(out_tenth.enhanced_labels, out_full.enhanced_labels)
    assert torch.equal(out_tenth.loss, out_full.loss)
    for name in full:
        # grad = prediction path + scale * label path, the prediction path being "detach"'s.
        expected = none[name] + 0.1 * (full[name] - none[name])
        torch.testing.assert_close(tenth[name], expected, atol=1e-6, rtol=1e-4)
    assert any(
        not torch.allclose(tenth[n], full[n]) for n in full if n.startswith("encoder.layers.0.")
    )


def test_label_input_masked_reuses_the_masked_forward():
    def first_block_calls(model) -> int:
        calls = []
        hook = model.encoder.layers[0].register_forward_hook(lambda *_: calls.append(1))
        x, layout = batch(3)
        out = model(x, layout, BirqStep(tau=1.0, seed=2))
        out.loss.backward()
        hook.remove()
        assert out.enhanced_labels.shape == (out.num_targets, 1)
        return len(calls)

    # One encoder pass for "masked"; the default adds a partial pass on the clean input.
    assert first_block_calls(build(label_input="masked")) == 1
    assert first_block_calls(build()) == 2


def test_quantizer_buffers_are_seeded_persistent_and_meta_safe():
    a, b = build(seed=1), build(seed=2)  # different weights, same quantizer seeds
    for name in ("anchor_quantizer.projection", "anchor_quantizer.codebook",
                 "enhanced_quantizer.projection", "enhanced_quantizer.codebook"):  # fmt: skip
        assert name in a.state_dict()
        assert torch.equal(a.state_dict()[name], b.state_dict()[name])
    assert not torch.equal(a.anchor_quantizer.codebook, a.enhanced_quantizer.codebook[:, :, :16])
    codebook = a.anchor_quantizer.codebook
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(codebook.shape[:2]))
    # Built on the meta device, then loaded as fairseq2's loader does: same outputs.
    with torch.device("meta"):
        c = create_birq_model(ARCHS["tiny"]())
    to_empty(c, torch.device("cpu"))
    c.load_state_dict(a.state_dict())
    reset_non_persistent_buffers(c)
    a.eval(), c.eval()
    x, layout = batch(4)
    torch.testing.assert_close(a.encode(x, layout)[0], c.encode(x, layout)[0], rtol=0, atol=0)


class _FixedSpans(torch.nn.Module):
    """Masks encoder frames 10..19 of every utterance (instead of random spans)."""

    def forward(self, seqs, layout):
        mask = torch.zeros(seqs.shape[:2], dtype=torch.bool)
        mask[:, 10:20] = True
        return torch.where(mask[..., None], torch.zeros_like(seqs), seqs), mask


def test_anchor_labels_are_batch_independent():
    """A padded utterance gets the same anchor labels batched with longer ones as alone."""
    model = build()
    model.masker = _FixedSpans()
    x, layout = batch(5)  # utterance 2 (260 frames) is padded to 400 in the batch
    batched = model(x, layout, BirqStep(enhanced_active=False)).anchor_labels
    alone_x = x[2:3, :260]
    alone = model(
        alone_x, BatchLayout(alone_x.shape[:2], seq_lens=[260]), BirqStep(enhanced_active=False)
    )
    assert batched.shape == (30, 1) and alone.anchor_labels.shape == (10, 1)
    assert torch.equal(batched[20:30], alone.anchor_labels)
    assert not torch.equal(batched[0:10], batched[20:30])  # the utterances differ


def test_encode_returns_requested_layers():
    model = build()
    x, layout = batch(6)
    out, out_layout, layers = model.encode(x, layout, layers=(1, 3))
    assert out.shape == (3, 100, 144) and sorted(layers) == [1, 3]
    assert layers[1].shape == out.shape and list(out_layout.seq_lens) == [100, 80, 65]


def test_masker_rate_padding_and_short_utterances():
    arch = ARCHS["base"]()
    config = arch.masking
    masker = BestRqMasker(config, arch.frame_ms)
    seqs = torch.zeros(8, 1000, 4)
    torch.manual_seed(0)
    masked, mask = masker(seqs, BatchLayout((8, 1000), seq_lens=[1000] * 7 + [600]))
    expected = 1 - (1 - config.start_prob) ** config.span_len
    assert abs(mask[:7].float().mean().item() - expected) < 0.05
    assert not mask[7, 600:].any()
    assert masked[mask].std().item() == pytest.approx(config.noise_std, rel=0.1)
    assert torch.equal(masked[~mask], seqs[~mask])
    with pytest.raises(ValueError, match=r"8 encoder frames \(320 ms\).*masking.span_len = 10"):
        masker(torch.zeros(2, 50, 4), BatchLayout((2, 50), seq_lens=[50, 8]))
    # The frame duration follows the stacking factor (20 ms encoder frames at stride 2).
    arch.encoder_config.fbank_stride = 2
    with pytest.raises(ValueError, match=r"\(160 ms\)"):
        BestRqMasker(config, arch.frame_ms)(torch.zeros(1, 8, 4), BatchLayout((1, 8), seq_lens=[8]))


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: setattr(c.enhanced, "label_layer", 9), "enhanced.label_layer"),
        (lambda c: setattr(c.enhanced, "label_layer", 0), "enhanced.label_layer"),
        (lambda c: setattr(c.encoder_config, "feature_dim", 300), "encoder_config.feature_dim"),
        (lambda c: setattr(c.enhanced, "label_grad", "straight"), "enhanced.label_grad"),
        (lambda c: setattr(c.enhanced, "label_grad", "stop"), "write `label_grad: detach`"),
        (lambda c: setattr(c.enhanced, "logit_scale", 0.0), "enhanced.logit_scale"),
        (lambda c: setattr(c.enhanced, "label_grad_scale", 1.5), "enhanced.label_grad_scale"),
        (
            lambda c: setattr(c.enhanced, "label_grad_scale", 0.5),
            "set label_grad: straight_through",
        ),
        (lambda c: setattr(c.enhanced, "label_norm", "batch"), "enhanced.label_norm"),
        (lambda c: setattr(c.enhanced, "diversity_weight", 0.1), "enhanced.diversity_weight"),
        (lambda c: setattr(c.masking, "start_prob", 1.5), "masking.start_prob"),
    ],
)
def test_bad_configs_name_the_key(mutate, key):
    config: BirqConfig = ARCHS["tiny"]()
    mutate(config)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        create_birq_model(config)


def test_family_and_archs_are_registered_in_fairseq2():
    code = """
import json, torch
from fairseq2 import init_fairseq2
from birq_fs2.models.hub import get_birq_model_hub
init_fairseq2(no_progress=True)
hub = get_birq_model_hub()
model = hub.create_new_model(hub.get_arch_config("tiny"), device=torch.device("cpu"))
try:
    hub.get_arch_config("nope")
    unknown = "no error"
except Exception as ex:
    unknown = str(ex)
print(json.dumps({"archs": sorted(hub.get_archs()), "type": type(model).__name__, "unknown": unknown}))
"""
    proc = python(code, FAIRSEQ2_EXTENSION_TRACE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["archs"] == sorted(ARCHS) and out["type"] == "BirqModel"
    assert "nope" in out["unknown"]


def test_instance_label_norm_excludes_padding_and_ignores_the_batch():
    model = build(label_norm="instance")
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 50, 144, generator=gen) * 4 + 2
    lens = [50, 31, 12]
    for i, n in enumerate(lens):
        hidden[i, n:] = 1e4  # whatever sits in padding must not matter
    batched = model.normalize_label_input(hidden, BatchLayout((3, 50), seq_lens=lens))
    for i, n in enumerate(lens):
        alone = model.normalize_label_input(
            hidden[i : i + 1, :n], BatchLayout((1, n), seq_lens=[n])
        )
        torch.testing.assert_close(batched[i, :n], alone[0], rtol=1e-5, atol=1e-5)
        # Per utterance and channel: zero mean, unit variance over the utterance's frames.
        torch.testing.assert_close(alone[0].mean(0), torch.zeros(144), rtol=0, atol=1e-4)
        torch.testing.assert_close(
            alone[0].var(0, unbiased=False), torch.ones(144), rtol=1e-3, atol=1e-3
        )
    # "layer": the per-frame LayerNorm.
    layer = build(label_norm="layer").normalize_label_input(
        hidden, BatchLayout((3, 50), seq_lens=lens)
    )
    torch.testing.assert_close(layer, torch.nn.functional.layer_norm(hidden, (144,)))
    x, layout = batch(4)
    out = model(x, layout, BirqStep(tau=1.0, seed=1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.enhanced_labels.shape == (out.num_targets, 1)


def test_diversity_weight_adds_the_codebook_diversity_loss():
    x, layout = batch(7)
    step = BirqStep(tau=1.0, seed=3)
    grads = {}
    outs = {}
    for weight in (0.0, 0.5):
        model = build(diversity_weight=weight, label_grad="straight_through")
        torch.manual_seed(0)  # the same mask
        outs[weight] = out = model(x, layout, step)
        out.loss.backward()
        grads[weight] = model.encoder.layers[0].self_attn.q_proj.weight.grad.clone()
    a, b = outs[0.0], outs[0.5]
    assert a.diversity_loss is None and 0.0 < b.diversity_loss.item() < 1.0
    # Same labels and losses otherwise; the term enters per masked frame.
    assert torch.equal(a.enhanced_labels, b.enhanced_labels)
    torch.testing.assert_close(b.loss, a.loss + 0.5 * b.diversity_loss * b.num_targets)
    # Its gradient reaches the label generator (block 1) through the code softmax.
    assert not torch.allclose(grads[0.0], grads[0.5])


@pytest.mark.parametrize("label_grad", ["detach", "straight_through"])
def test_bf16_autocast_keeps_the_labels_and_finite_gradients(label_grad):
    """The presets' mixed precision (bf16 autocast): the quantizers compute in fp32 (the
    anchor labels are those of fp32 on the same input), losses and every gradient of the
    Gumbel path are finite."""
    model = build(label_grad=label_grad)
    x, layout = batch(5)
    step = BirqStep(tau=1.0, seed=2)
    torch.manual_seed(0)
    ref = model(x, layout, step)
    torch.manual_seed(0)  # the same mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, layout, step)
    assert torch.equal(out.anchor_labels, ref.anchor_labels)
    assert torch.isfinite(out.loss) and torch.isfinite(out.enhanced_loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "enhanced_head.weight" in grads
    assert all(torch.isfinite(g).all() for g in grads.values())
    # The enhanced quantizer on bf16 activations: the labels of the same values in fp32.
    hidden = torch.randn(64, 144).to(torch.bfloat16)
    q = model.enhanced_quantizer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = rpq_labels(hidden, q.projection, q.codebook, check_codebook_norm=False)
    assert torch.equal(
        low, rpq_labels(hidden.float(), q.projection, q.codebook, check_codebook_norm=False)
    )
