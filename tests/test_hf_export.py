"""The layer-norm convolution option and the transformers export (`birq-export --format hf`)."""

from __future__ import annotations

import json

import pytest
import torch
from fairseq2.nn import BatchLayout
from helpers import FIXTURES, finetune_cmd, pretrain_cmd, run

from birq_fs2.data.audio import AudioError, AudioLoader, FbankConfig, FbankExtractor
from birq_fs2.models.config import tiny
from birq_fs2.models.factory import create_birq_model

transformers = pytest.importorskip("transformers")


def _model(norm: str, causal: bool, seed: int = 0):
    config = tiny()
    config.conv_module.norm, config.conv_module.causal = norm, causal
    torch.manual_seed(seed)
    model = create_birq_model(config)
    with torch.no_grad():  # away from the init's zeros and ones (biases, norms, u/v)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _fbank_batch(model, n: int = 3):
    """Real features of fixture utterances, padded into one batch (and each alone)."""
    loader, extract = AudioLoader(), FbankExtractor(FbankConfig())
    feats = []
    for f in sorted((FIXTURES / "dev-tiny").rglob("*.flac")):
        try:  # the fixtures hold deliberately broken files too
            feats.append(extract(loader(f).waveform.reshape(-1), len(feats)))
        except AudioError:
            continue
        if len(feats) == n:
            break
    T = max(f.shape[0] for f in feats)
    batch = torch.zeros(len(feats), T, feats[0].shape[1])
    for i, f in enumerate(feats):
        batch[i, : f.shape[0]] = f
    layout = BatchLayout(batch.shape[:2], seq_lens=[f.shape[0] for f in feats])
    return batch, layout, feats


@pytest.mark.parametrize("norm, causal", [("layer_norm", True), ("layer_norm", False)])
def test_layer_norm_conv_padded_batch_equals_each_utterance_alone_in_training(norm, causal):
    """No normalisation statistic sees padded frames: in training mode (dropout off) a
    padded batch gives each utterance what it gets alone. Batch norm does not (the check
    can fail)."""
    for kind in ("layer_norm", "batch_norm"):
        model = _model(kind if kind == "batch_norm" else norm, causal)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model.train()
        batch, layout, feats = _fbank_batch(model)
        with torch.no_grad():
            together, out_layout, _ = model.encode(batch, layout)
            worst = 0.0
            for i, f in enumerate(feats):
                alone, _, _ = model.encode(f[None], BatchLayout((1, f.shape[0]), seq_lens=None))
                S = out_layout.seq_lens[i]
                worst = max(worst, (together[i, :S] - alone[0, :S]).abs().max().item())
        if kind == "batch_norm":
            assert worst > 1e-2, worst
        else:
            assert worst < 1e-5, worst


def test_every_layer_matches_wav2vec2_bert_after_a_save_and_reload(tmp_path):
    from birq_fs2.hf_export import feature_extractor_config, to_wav2vec2_bert

    model = _model("layer_norm", True).eval()
    to_wav2vec2_bert(model).save_pretrained(tmp_path)
    # Stock class through AutoModel: no remote code.
    hf = transformers.AutoModel.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert type(hf).__name__ == "Wav2Vec2BertModel"
    batch, layout, _ = _fbank_batch(model)
    stacked, stacked_layout = model.stack(batch, layout)
    n = model.config.encoder_config.num_encoder_layers
    with torch.no_grad():
        ours, captured = model.run_encoder(stacked, stacked_layout, capture=range(1, n + 1))
        lens = torch.tensor(stacked_layout.seq_lens)
        mask = torch.arange(stacked.shape[1])[None] < lens[:, None]
        theirs = hf(input_features=stacked, attention_mask=mask.long(), output_hidden_states=True)
    assert len(theirs.hidden_states) == n + 1
    for layer in range(1, n + 1):
        diff = (theirs.hidden_states[layer] - captured[layer])[mask].abs().max().item()
        assert diff <= 1e-4, (layer, diff)
    assert (theirs.last_hidden_state - ours)[mask].abs().max().item() <= 1e-4

    # The feature extractor settings describe our features (80 bins, 4 stacked frames);
    # transformers' own extractor gets close to them (it normalises with the unbiased
    # variance and adds no dither).
    settings = feature_extractor_config(model.config)
    extractor = transformers.SeamlessM4TFeatureExtractor(**settings)
    wav = AudioLoader()(next((FIXTURES / "dev-tiny").rglob("*.flac"))).waveform.reshape(-1)
    ours_feats = FbankExtractor(FbankConfig(dither=0.0))(wav, 0)
    T = ours_feats.shape[0] // 4
    theirs_feats = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")[
        "input_features"
    ][0]
    assert theirs_feats.shape == (T, 320)
    assert (theirs_feats - ours_feats[: 4 * T].reshape(T, 320)).abs().max().item() < 0.02


def _two_step_run(run_dir, corpus, *overrides: str):
    proc = run(pretrain_cmd(
        run_dir, corpus, "regime.num_steps=2", "regime.publish_metrics_every_n_steps=2",
        "regime.checkpoint_every_n_steps=2", "regime.validate_every_n_steps=2",
        "lr_scheduler.config.num_warmup_steps=1", "dataset.pipeline.max_frames=400",
        "dataset.pipeline.max_frames_per_batch=3200", *overrides,
    ))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return run_dir


LAYER_NORM_CAUSAL = (
    "model.config_overrides.conv_module.norm=layer_norm",
    "model.config_overrides.conv_module.causal=true",
)


@pytest.fixture(scope="module")
def ln_run(tmp_path_factory, corpus):
    """A real (short) BiRQ pretraining run with w2v-BERT 2.0's convolution module."""
    return _two_step_run(tmp_path_factory.mktemp("ln") / "run", corpus, *LAYER_NORM_CAUSAL)


def test_birq_export_hf_from_a_run_folder_and_refuses_batch_norm(tmp_path, corpus, ln_run, capsys):
    """The run exported by the command; an encoder with the default convolution module is
    refused, saying why and what to set."""
    from birq_fs2.cli.export import main as export_main
    from birq_fs2.models.source import resolve_model

    run_dir = ln_run
    out = tmp_path / "hf"
    assert export_main([str(run_dir), str(out), "--format", "hf"]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "preprocessor_config.json").read_text())["stride"] == 4
    hf = transformers.Wav2Vec2BertModel.from_pretrained(out).eval()
    ours = resolve_model(run_dir).load()
    batch, layout, _ = _fbank_batch(ours, n=2)
    stacked, stacked_layout = ours.stack(batch, layout)
    mask = torch.arange(stacked.shape[1])[None] < torch.tensor(stacked_layout.seq_lens)[:, None]
    with torch.no_grad():
        a, _ = ours.run_encoder(stacked, stacked_layout)
        b = hf(input_features=stacked, attention_mask=mask.long()).last_hidden_state
    assert (a - b)[mask].abs().max().item() <= 1e-4

    capsys.readouterr()
    bn_run = _two_step_run(tmp_path / "bn", corpus, "model.arch=bestrq_tiny")
    assert export_main([str(bn_run), str(tmp_path / "hf-bn"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "batch_norm" in err and "conv_module.norm=layer_norm" in err, err
    assert not (tmp_path / "hf-bn" / "model.safetensors").exists()


def test_conv_module_typo_is_refused_naming_the_key():
    config = tiny()
    config.conv_module.norm = "group_norm"  # type: ignore[assignment]
    assert any("conv_module.norm" in e for e in config.validate().errors)


def test_fine_tuning_a_layer_norm_encoder_needs_the_birq_ctc_family(tmp_path, corpus, ln_run):
    """fairseq2's wav2vec2_asr builds batch-norm convolutions: the transfer stops with the
    overrides to set; with them (family birq_ctc) it fine-tunes, and the CTC model exports,
    reloads and transcribes."""
    from birq_fs2.cli.transcribe import main as transcribe_main
    from birq_fs2.export import export_checkpoint
    from birq_fs2.inference import Transcriber

    steps = ("regime.num_steps=2", "regime.validate_every_n_steps=2",
             "regime.checkpoint_every_n_steps=2", "regime.publish_metrics_every_n_steps=1")  # fmt: skip
    proc = run(finetune_cmd(tmp_path / "wrong", corpus, f"pretrained.model={ln_run}", *steps))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "model.family=birq_ctc" in out and "Traceback" not in out, out[
        -3000:
    ]
    ft = tmp_path / "ft"
    proc = run(finetune_cmd(
        ft, corpus, f"pretrained.model={ln_run}", "model.family=birq_ctc", *LAYER_NORM_CAUSAL, *steps
    ))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    card = export_checkpoint(ft, tmp_path / "asr", "ln_asr")
    model = Transcriber(str(card.parent)).model
    assert model.encoder.layers[0].conv.layer_norm is not None
    audio = next((FIXTURES / "dev-tiny").rglob("100-1000-0000.flac"))
    assert transcribe_main([str(audio), "--model", str(card.parent)]) == 0


def test_transfer_refuses_an_encoder_whose_convolutions_differ_only_in_causality():
    """Causal and centred convolutions hold the same tensors: the transfer compares the
    modules, and names both overrides to set."""
    from birq_fs2.models.asr import (
        BirqCtcConfig,
        EncoderTransferError,
        asr_config_for,
        create_birq_ctc_model,
        transfer_encoder,
    )

    pretrained = _model("layer_norm", True)
    config = BirqCtcConfig(**vars(asr_config_for(pretrained.config.encoder_config)))
    config.conv_module.norm = "layer_norm"  # centred
    with pytest.raises(EncoderTransferError, match="conv_module.causal=true"):
        transfer_encoder(pretrained, create_birq_ctc_model(config), "run")
    config.conv_module.causal = True
    assert transfer_encoder(pretrained, create_birq_ctc_model(config), "run") > 0
