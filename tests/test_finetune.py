"""CTC fine-tuning, decoding, scoring, evaluation and transcription end to end."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import yaml
from fairseq2.nn import BatchLayout
from helpers import FIXTURES, metrics, pretrain_cmd, run
from helpers import finetune_cmd as base_finetune_cmd
from helpers import model_state as shard

from birq_fs2.data.audio import AudioLoader, FbankConfig, FbankExtractor, utterance_seed
from birq_fs2.data.corpus import Utterance, load_split
from birq_fs2.data.dataset import subset
from birq_fs2.data.vocab import CharVocabulary, normalize_transcript
from birq_fs2.inference import ctc_greedy_ids
from birq_fs2.metrics import FINETUNE_METRICS, display
from birq_fs2.scoring import count_errors


def finetune_cmd(out: Path, corpus: Path, *overrides: str) -> list[str]:
    return base_finetune_cmd(
        out, corpus, "regime.num_steps=12",
        "regime.publish_metrics_every_n_steps=2", "regime.checkpoint_every_n_steps=4",
        "regime.validate_every_n_steps=4", "regime.keep_last_n_checkpoints=null",
        "regime.keep_best_n_checkpoints=null", "pretrained.freeze_encoder_for_n_steps=4",
        "optimizer.config.lr=0.003", "dataset.pipeline.max_frames_per_batch=6000", *overrides,
    )  # fmt: skip


def name(key: str) -> str:
    return display(key, FINETUNE_METRICS)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    proc = run(pretrain_cmd(
        out, corpus, "regime.num_steps=4",
        "regime.publish_metrics_every_n_steps=2", "regime.checkpoint_every_n_steps=4",
        "regime.validate_every_n_steps=4", "lr_scheduler.config.num_warmup_steps=2",
        "dataset.pipeline.max_frames=400", "dataset.pipeline.max_frames_per_batch=3200",
    ))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, corpus, pretrained) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "run"
    proc = run(finetune_cmd(out, corpus, f"pretrained.model={pretrained}"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


# ------------------------------------------------------------------- decoding, scoring


def test_greedy_ctc_decoding_of_a_known_logit_sequence():
    vocab = CharVocabulary.build([])
    ids = {c: vocab.symbols.index(c) for c in "CAT|OD"}
    blank = vocab.blank_idx
    # Frame argmaxes: C C _ A A T | | D _ O O, then padding.
    path0 = [ids["C"], ids["C"], blank, ids["A"], ids["A"], ids["T"], ids["|"], ids["|"], ids["D"],
             blank, ids["O"], ids["O"]]  # fmt: skip
    path1 = [ids["A"], blank, ids["A"], ids["T"]]  # a blank separates a doubled letter
    logits = torch.randn(2, 14, len(vocab)) * 0.1
    for row, path in enumerate((path0, path1)):
        for t, i in enumerate(path):
            logits[row, t, i] = 5.0
    logits[1, len(path1) :, ids["C"]] = 9.0  # padding frames must not be decoded
    layout = BatchLayout((2, 14), [len(path0), len(path1)])
    texts = [vocab.decode(p) for p in ctc_greedy_ids(logits, layout)]
    assert texts == ["CAT DO", "AAT"]  # repeats merge unless a blank separates them


def test_error_rates_equal_jiwer_on_fixture_transcripts():
    refs = [u.text for u in load_split(FIXTURES, "dev-tiny") if u.text]
    assert len(refs) >= 4
    hyps = ["the old dog followed a red boat!", "ANNA PAINTED GREEN BOOKS", "", refs[3] + " again"]
    hyps += refs[4:]
    counts = count_errors(refs, hyps)
    norm_refs = [normalize_transcript(r) for r in refs]
    norm_hyps = [normalize_transcript(h) for h in hyps]
    assert counts.wer == pytest.approx(100 * jiwer.wer(norm_refs, norm_hyps))
    assert counts.cer == pytest.approx(100 * jiwer.cer(norm_refs, norm_hyps))
    assert counts.word_errors == 1 + 1 + 6 + 1 and count_errors(refs, refs).wer == 0.0


def test_labelled_subset_is_fixed_by_seed_and_id():
    utts = [Utterance(f"u{i}", Path(f"/x/u{i}.flac")) for i in range(400)]
    half = subset(utts, 0.5, seed=1)
    assert 150 < len(half) < 250
    assert [u.id for u in subset(utts[::-1], 0.5, seed=1)] == [u.id for u in half][::-1]
    assert [u.id for u in subset(utts[:100], 0.5, seed=1)] == [
        u.id for u in half if int(u.id[1:]) < 100
    ]
    assert {u.id for u in subset(utts, 0.5, seed=2)} != {u.id for u in half}


# ---------------------------------------------------------------------- fine-tuning


def test_finetuning_lowers_ctc_loss_from_a_frozen_then_trained_encoder(finetuned, pretrained):
    train = metrics(finetuned)
    assert train[12][name("ctc_loss")] < train[2][name("ctc_loss")] - 0.1
    assert train[2][name("encoder_frozen")] == 1 and train[12][name("encoder_frozen")] == 0
    valid = metrics(finetuned, "valid")
    assert {4, 8, 12} <= set(valid) and 0 <= valid[12][name("cer")] <= 100
    assert name("wer") in valid[12]
    # The encoder starts as the pretrained one and stays so while frozen; then it trains.
    source = shard(pretrained, 4)
    frozen, trained = shard(finetuned, 4), shard(finetuned, 12)
    encoder_keys = [k for k in source if k.startswith(("encoder.", "encoder_frontend."))]
    assert len(encoder_keys) > 50
    assert all(torch.equal(frozen[k], source[k]) for k in encoder_keys)
    assert not all(torch.equal(trained[k], source[k]) for k in encoder_keys)
    assert (finetuned / "dict.ltr.txt").exists()


@pytest.mark.parametrize("case", ["mismatch", "missing", "mel_bins"])
def test_a_bad_pretrained_encoder_is_one_error_line(tmp_path, corpus, pretrained, case):
    if case == "mismatch":
        overrides = [
            f"pretrained.model={pretrained}",
            "model.config_overrides.encoder_config.num_encoder_layers=2",
        ]
        words = [str(pretrained), "does not fit"]
    elif case == "missing":
        overrides = ["pretrained.model=no_such_card"]
        words = ["no_such_card: no model card of that name"]
    else:  # data features the model's front end cannot take: stopped at setup
        overrides = ["dataset.pipeline.features.num_mel_bins=40"]
        words = ["features have 40 mel bins", "expects 80 fbank channels"]
    proc = run(finetune_cmd(tmp_path / "run", corpus, *overrides))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    flat = " ".join(out.split())  # rich wraps long lines
    assert all(w in flat for w in words) and "Traceback" not in out, out[-3000:]


def test_resuming_on_data_with_another_vocabulary_stops(tmp_path, corpus, finetuned):
    run_dir = tmp_path / "run"
    shutil.copytree(finetuned, run_dir)
    (run_dir / "dict.ltr.txt").write_text("| 1\nA 1\nB 1\n")  # not the corpus's vocabulary
    proc = run(finetune_cmd(run_dir, corpus, "regime.num_steps=16"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "different character vocabulary" in out and "Traceback" not in out, out[-3000:]


def test_export_evaluate_and_transcribe(tmp_path, finetuned, corpus, capsys):
    from birq_fs2.cli.evaluate import main as evaluate_main
    from birq_fs2.cli.transcribe import main as transcribe_main
    from birq_fs2.export import export_checkpoint
    from birq_fs2.inference import Transcriber

    card = export_checkpoint(finetuned, tmp_path / "asr", "birq_test_asr")
    meta = yaml.safe_load(card.read_text())
    assert (
        meta["model_family"] == "wav2vec2_asr"
        and meta["vocabulary"] == "birq_test_asr.dict.ltr.txt"
    )
    best = max(
        (float((finetuned / "checkpoints" / "scores" / f"step_{s}.txt").read_text()), s)
        for s in (4, 8, 12)
    )[1]
    assert meta["exported_from"] == f"run/checkpoints/step_{best}"
    assert meta["features"] == FbankConfig().to_dict()  # the preset's pipeline

    # The exported card and the run directory give the same transcripts.
    test_files = [str(u.path) for u in load_split(corpus, "test")][:4]
    from_card = [t.text for t in Transcriber(str(tmp_path / "asr")).transcribe(test_files)]
    from_run = [t.text for t in Transcriber(str(finetuned)).transcribe(test_files)]
    assert from_card == from_run and all(t is not None for t in from_card)

    # Evaluate on the fixture subset: bad files are named and skipped, the score is jiwer's.
    out = tmp_path / "eval"
    code = evaluate_main(
        ["--model", str(tmp_path / "asr"), "--data", str(FIXTURES / "dev-tiny"), "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 1  # some files could not be scored
    summary = json.loads((out / "summary.json").read_text())
    problems = {Path(p["path"]).name: p["problem"] for p in summary["skipped"]}
    assert "100-1000-0003.flac" in problems and "100-1000-0004.flac" in problems
    assert "no transcript" in problems.values()
    assert "100-1000-0003.flac" in captured.err and "Traceback" not in captured.err
    rows = [line.split("\t") for line in (out / "hypotheses.tsv").read_text().splitlines()[1:]]
    assert len(rows) == summary["num_utterances"] == 3
    refs = [normalize_transcript(r[3]) for r in rows]
    hyps = [normalize_transcript(r[4]) if len(r) > 4 else "" for r in rows]
    assert summary["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps), abs=0.01)
    assert summary["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps), abs=0.01)

    # Transcribe: 16 kHz stereo == mono; 8 kHz stereo is resampled; a corrupt file is named.
    mono, rate = sf.read(test_files[0], dtype="float32")
    assert rate == 16_000
    stereo16 = tmp_path / "stereo16.wav"
    sf.write(stereo16, torch.tensor(mono)[:, None].repeat(1, 2).numpy(), 16_000)
    stereo8 = tmp_path / "stereo8k.wav"
    low = AF.resample(torch.tensor(mono), 16_000, 8_000)
    sf.write(stereo8, torch.stack([low, 0.5 * low], dim=1).numpy(), 8_000)
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"fLaC" + bytes(100))
    model = ["--model", str(tmp_path / "asr")]
    assert transcribe_main([str(stereo16), *model]) == 0
    assert capsys.readouterr().out.strip() == from_card[0]
    assert Transcriber(str(tmp_path / "asr")).features(stereo8).shape[0] == pytest.approx(
        len(mono) / 160, abs=3
    )
    code = transcribe_main([str(stereo8), str(broken), str(stereo16), *model])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(stereo8), str(stereo16)]
    assert lines[1].split("\t")[1] == from_card[0]
    assert f"{broken}:" in captured.err and "Traceback" not in captured.err


def test_inference_uses_the_features_the_model_was_trained_with(tmp_path, finetuned):
    """A model trained with other feature settings gets them at inference: from its
    card's `features` field, or from its run's config; the defaults only without either."""
    from birq_fs2.export import export_checkpoint
    from birq_fs2.inference import Transcriber

    card = export_checkpoint(finetuned, tmp_path / "asr", "birq_features")
    fields = yaml.safe_load(card.read_text())
    fields["features"] = {"num_mel_bins": 80, "normalize": "none", "dither": 0.0}
    card.write_text(yaml.safe_dump(fields))
    audio = next(FIXTURES.glob("dev-tiny/*/*/100-1000-0000.flac"))
    got = Transcriber(str(tmp_path / "asr")).features(audio)
    waveform = AudioLoader()(audio).waveform
    seed = utterance_seed(0, "transcribe", "dither")
    expected = FbankExtractor(FbankConfig(80, "none", 0.0))(waveform, seed)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, FbankExtractor()(waveform, seed))  # the defaults differ
    # The run folder reads its config.yaml's dataset.pipeline.features.
    assert Transcriber(str(finetuned)).feature_config == FbankConfig()
    del fields["features"]  # an older card: the defaults
    card.write_text(yaml.safe_dump(fields))
    assert Transcriber(str(tmp_path / "asr")).feature_config == FbankConfig()
    fields["features"] = {"num_mel_bins": "many"}
    card.write_text(yaml.safe_dump(fields))
    with pytest.raises(ValueError, match=r"`features`: invalid feature settings"):
        Transcriber(str(tmp_path / "asr"))


def test_model_errors_are_one_line(tmp_path, pretrained, capsys):
    from birq_fs2.cli.evaluate import main as evaluate_main
    from birq_fs2.cli.transcribe import main as transcribe_main

    audio = next(FIXTURES.glob("dev-tiny/*/*/100-1000-0000.flac"))
    cases = [
        (
            transcribe_main,
            [str(audio), "--model", "no_such_model_card"],
            "no_such_model_card: no model card",
        ),
        (transcribe_main, [str(audio), "--model", str(pretrained)], "not a CTC model"),
        (transcribe_main, [str(audio), "--model", str(tmp_path)], "expected one model card"),
        (
            evaluate_main,
            ["--model", str(pretrained), "--data", str(FIXTURES / "dev-tiny")],
            "not a CTC model",
        ),
    ]
    for main, argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


class _Payload:
    """Unpickled without weights_only, this makes a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _poison(weights: Path, marker: Path) -> None:
    state = dict(torch.load(weights, weights_only=True)) if weights.suffix == ".pt" else {}
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
        weights.unlink()
        weights = weights.with_suffix(".pt")
    state["payload"] = _Payload(marker)
    torch.save(state, weights)


def test_weights_that_would_run_code_are_refused(tmp_path, corpus, pretrained, finetuned, capsys):
    from birq_fs2.checkpoints import checkpoint_steps, model_state_files
    from birq_fs2.cli.export import main as export_main
    from birq_fs2.cli.transcribe import main as transcribe_main

    marker = tmp_path / "payload-ran"
    # A run folder whose model checkpoint carries a payload: birq-export and the
    # fine-tuning encoder transfer refuse it, naming the file.
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained, run_dir)
    (weights,) = model_state_files(run_dir, max(checkpoint_steps(run_dir)))
    _poison(weights, marker)
    assert export_main([str(run_dir), str(tmp_path / "out"), "--name", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{weights}: refused" in err and len(err.splitlines()) == 1, err
    proc = run(finetune_cmd(tmp_path / "ft", corpus, f"pretrained.model={run_dir}"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "refused" in out and "Traceback" not in out, out[-3000:]

    # A card folder (what --model takes) whose weights file is such a pickle.
    card_dir = tmp_path / "card"
    assert export_main([str(finetuned), str(card_dir), "--name", "asr"]) == 0
    card = yaml.safe_load((card_dir / "asr.yaml").read_text())
    _poison(card_dir / card["checkpoint"], marker)
    card["checkpoint"] = "asr.pt"
    (card_dir / "asr.yaml").write_text(yaml.safe_dump(card))
    capsys.readouterr()
    audio = next(FIXTURES.glob("dev-tiny/*/*/100-1000-0000.flac"))
    assert transcribe_main([str(audio), "--model", str(card_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{card_dir / 'asr.pt'}: refused" in err and len(err.splitlines()) == 1, err
    assert not marker.exists()  # no payload ran anywhere


@pytest.mark.parametrize("part", ["trainer", "optimizer", "data_reader"])
def test_resuming_a_poisoned_run_folder_refuses_it_and_runs_nothing(
    tmp_path, corpus, pretrained, part
):
    """fairseq2 reads these states with an unrestricted unpickler; the extension's
    allow-list loader refuses the payload on resume, naming the file, in one line."""
    from birq_fs2.checkpoints import checkpoint_steps

    marker = tmp_path / "payload-ran"
    run_dir = tmp_path / "run"
    shutil.copytree(pretrained, run_dir)
    step_dir = run_dir / "checkpoints" / f"step_{max(checkpoint_steps(run_dir))}"
    (target,) = sorted((step_dir / part).rglob("*.pt"))
    state = torch.load(target, weights_only=False)  # our own fixture's file
    state["payload"] = _Payload(marker)
    torch.save(state, target)
    proc = run(
        pretrain_cmd(
            run_dir,
            corpus,
            "regime.num_steps=6",
            "regime.publish_metrics_every_n_steps=2",
            "regime.checkpoint_every_n_steps=6",
            "regime.validate_every_n_steps=6",
            "lr_scheduler.config.num_warmup_steps=2",
            "dataset.pipeline.max_frames=400",
            "dataset.pipeline.max_frames_per_batch=3200",
        ),
        COLUMNS="1000",
    )  # fmt: skip  (a wide console: the line unwrapped)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    refused = [line for line in out.splitlines() if "refused" in line]
    assert len(refused) == 1 and f"{target}: refused" in refused[0], out[-3000:]
    assert "mkdir" in refused[0]  # the global it names
    assert "Traceback" not in out and not marker.exists()
