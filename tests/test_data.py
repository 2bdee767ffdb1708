"""Speech data: corpora, manifests, checks, the fairseq2 pipeline and its reader state."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
import soundfile
import torch
from fairseq2.datasets import Seq2SeqBatch, SequenceBatch
from helpers import python

from birq_fs2.cli.data import main as birq_data
from birq_fs2.data.audio import AudioError, AudioLoader, FbankConfig
from birq_fs2.data.check import check_utterances
from birq_fs2.data.corpus import (
    CorpusError,
    load_split,
    load_vocabulary,
    read_manifest,
    scan_librispeech,
    write_manifest,
)
from birq_fs2.data.pipeline import DataStats, SpeechPipelineConfig, build_speech_pipeline
from birq_fs2.data.synth import synthesize_corpus
from birq_fs2.data.vocab import CharVocabulary, normalize_transcript
from birq_fs2.frames import num_fbank_frames

FIXTURES = Path(__file__).parent / "fixtures" / "librispeech"
CHAPTER = FIXTURES / "dev-tiny" / "100" / "1000"


def small_config(**over) -> SpeechPipelineConfig:
    base = dict(min_frames=50, max_frames=400, max_frames_per_batch=1600, shuffle_window=0,
                batch_shuffle_window=1, num_parallel_calls=1, num_prefetch=0)  # fmt: skip
    return SpeechPipelineConfig(**{**base, **over})


def read_all(pipeline) -> list:
    return list(pipeline)


# ----------------------------------------------------------------------- vocabulary


def test_vocabulary_round_trip(tmp_path):
    vocab = CharVocabulary.build(["the cat's hat", "A DOG!"])
    assert vocab.symbols[:2] == ["<blank>", "<pad>"] and "|" in vocab.symbols
    ids = vocab.encode("The  cat's, hat")
    assert ids.dtype == torch.int64 and 0 not in ids.tolist()
    assert vocab.decode(ids.tolist()) == "THE CAT'S HAT"
    vocab.save(tmp_path / "dict.ltr.txt")
    assert CharVocabulary.load(tmp_path / "dict.ltr.txt") == vocab
    assert len(vocab) == 2 + 26 + 2  # every letter, even those the transcripts lack
    assert vocab.decode(vocab.encode("zebra").tolist()) == "ZEBRA"
    small = CharVocabulary(["<blank>", "<pad>", "|", "A"])
    with pytest.raises(ValueError, match="'Z' of 'zebra' is not in the vocabulary"):
        small.encode("zebra")
    assert normalize_transcript("Hello,  world-wide!") == "HELLO WORLD WIDE"


# ------------------------------------------------------------------ corpus, manifests


def test_librispeech_scan_reads_transcripts_and_marks_missing_ones():
    utts = {u.id: u for u in scan_librispeech(FIXTURES / "dev-tiny")}
    assert sorted(utts) == [f"100-1000-000{i}" for i in range(6)]
    assert utts["100-1000-0000"].text == "THE OLD DOG FOLLOWED THE RED BOAT"
    assert utts["100-1000-0005"].text is None and utts["100-1000-0000"].speaker == "100"


def test_manifest_round_trip(tmp_path, corpus):
    utts = load_split(corpus, "train")
    write_manifest(utts, tmp_path, "train", corpus)
    lines = (tmp_path / "train.tsv").read_text().splitlines()
    assert Path(lines[0]) == corpus.resolve() and len(lines) == len(utts) + 1
    back = read_manifest(tmp_path, "train")
    assert [u.path.resolve() for u in back] == [u.path.resolve() for u in utts]
    assert [u.text for u in back] == [u.text for u in utts]
    for u in back[:5]:  # sample counts come from headers and match the audio
        assert u.num_samples == len(soundfile.read(u.path)[0])
    ltr = (tmp_path / "train.ltr").read_text().splitlines()[0]
    assert ltr.endswith("|") and ltr.replace(" ", "").replace("|", " ").strip() == back[0].text
    # load_split reads both layouts the same way.
    assert [u.id for u in load_split(tmp_path, "train")] == [u.id for u in utts]


def test_manifest_cli_with_valid_split(tmp_path, corpus):
    assert (
        birq_data(
            ["manifest", str(corpus / "train"), "--dest", str(tmp_path), "--valid-percent", "20"]
        )
        == 0
    )
    train, valid = read_manifest(tmp_path, "train"), read_manifest(tmp_path, "valid")
    total = len(load_split(corpus, "train"))
    assert len(train) + len(valid) == total and abs(len(valid) - round(0.2 * total)) <= 1
    assert not {u.id for u in train} & {u.id for u in valid}
    assert (tmp_path / "dict.ltr.txt").exists()


def test_manifest_cli_names_every_unusable_file_and_keeps_the_rest(tmp_path, capsys):
    subset = tmp_path / "dev-tiny"
    shutil.copytree(FIXTURES / "dev-tiny", subset)
    chapter = subset / "100" / "1000"
    good = (chapter / "100-1000-0000.flac").read_bytes()
    (chapter / "100-1000-0006.flac").write_bytes(good[: len(good) // 2])  # cut mid-stream
    assert birq_data(["manifest", str(subset), "--dest", str(tmp_path / "m"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    for name, kind in [("0003", "corrupt"), ("0004", "empty"), ("0006", "corrupt")]:
        assert f"{kind}" in out and str(chapter / f"100-1000-{name}.flac") in out, out
    assert "3 of 7 files left out of the manifest" in err and "Traceback" not in err
    kept = [u.path.name for u in read_manifest(tmp_path / "m", "dev-tiny")]
    assert kept == [
        "100-1000-0000.flac",
        "100-1000-0001.flac",
        "100-1000-0002.wav",
        "100-1000-0005.flac",
    ]


def test_bad_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(CorpusError, match=r"train\.tsv: no such manifest"):
        read_manifest(tmp_path, "train")
    (tmp_path / "train.tsv").write_text("/root\nfoo.flac\tnot-a-number\n")
    with pytest.raises(CorpusError, match=r"train\.tsv:2: expected"):
        read_manifest(tmp_path, "train")
    (tmp_path / "train.tsv").write_text("/root\na.flac\t10\nb.flac\t10\n")
    (tmp_path / "train.wrd").write_text("ONE\n")
    with pytest.raises(CorpusError, match=r"train\.wrd: 1 transcripts for 2 rows"):
        read_manifest(tmp_path, "train")
    with pytest.raises(CorpusError, match="neither a manifest 'dev.tsv' nor a LibriSpeech subset"):
        load_split(tmp_path, "dev")


# --------------------------------------------------------------------- audio, check


def test_loader_downmixes_and_resamples():
    decoded = AudioLoader()(CHAPTER / "100-1000-0002.wav")
    assert decoded.source_rate == 8000 and decoded.source_channels == 2
    assert decoded.waveform.dim() == 1
    assert abs(len(decoded.waveform) - 2 * decoded.source_samples) <= 2


@pytest.mark.parametrize(
    "name, kind, words",
    [
        ("100-1000-0003.flac", "corrupt", "cannot be decoded"),
        ("100-1000-0004.flac", "empty", "empty file"),
        ("missing.flac", "unreadable", "cannot be read"),
    ],  # fmt: skip
)
def test_loader_errors_name_the_file(name, kind, words):
    with pytest.raises(AudioError, match=words) as info:
        AudioLoader()(CHAPTER / name)
    assert info.value.kind == kind and str(CHAPTER / name) in str(info.value)


def test_check_finds_every_problem():
    problems = check_utterances(scan_librispeech(FIXTURES / "dev-tiny"), min_frames=100)
    found = {(Path(p.path).name, p.kind) for p in problems}
    assert found == {
        ("100-1000-0002.wav", "wrong_rate"),
        ("100-1000-0002.wav", "stereo"),
        ("100-1000-0003.flac", "corrupt"),
        ("100-1000-0004.flac", "empty"),
        ("100-1000-0005.flac", "too_short"),
        ("100-1000-0005.flac", "missing_transcript"),
    }


def test_check_cli_reports_paths_and_exits_nonzero(capsys):
    assert birq_data(["check", str(FIXTURES), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert str(CHAPTER / "100-1000-0003.flac") in out and "corrupt" in out
    assert "6 files in dev-tiny" in err


def test_check_cli_passes_a_clean_corpus(corpus, capsys):
    assert birq_data(["check", str(corpus), "--splits", "dev", "--quiet"]) == 0
    assert "no problems" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert birq_data(["check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birq-data check: error:") and "\n" not in err and "Traceback" not in err
    assert str(tmp_path / "nope") in err


# --------------------------------------------------------------------------- synth


def test_synth_is_deterministic_and_speakers_are_disjoint(tmp_path, corpus):
    again = tmp_path / "again"
    synthesize_corpus(again, hours=0.02, num_speakers=6, seed=3, jobs=1, progress=False)
    # The shared corpus may have gained the vocabulary that fine-tuning saves next to it.
    files = sorted(
        p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file() and p.name != "dict.ltr.txt"
    )
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(
        corpus, again, [str(f) for f in files], shallow=False
    )
    assert not mismatch and not errors and len(match) == len(files)

    speakers = {sub: {p.name for p in (corpus / sub).iterdir()} for sub in ("train", "dev", "test")}
    assert all(speakers.values())
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["dev"] & speakers["test"])
    table = (corpus / "SPEAKERS.TXT").read_text().splitlines()[1:]
    assert {line.split("|")[0].strip() for line in table} == set().union(*speakers.values())
    # 16 kHz mono FLAC, transcripts for every file, and a different seed changes them.
    utts = load_split(corpus, "train")
    assert all(u.text for u in utts)
    info = soundfile.info(str(utts[0].path))
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    other = tmp_path / "other"
    synthesize_corpus(other, hours=0.005, num_speakers=3, seed=4, jobs=1, progress=False)
    assert (other / "SPEAKERS.TXT").read_text() != (corpus / "SPEAKERS.TXT").read_text()


def test_synth_without_espeak_says_which_package(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synthesize_corpus(tmp_path, hours=0.01, num_speakers=3, progress=False)


# ------------------------------------------------------------------------- pipeline


def test_pipeline_batches_respect_lengths_padding_and_budget(corpus):
    config = small_config(max_frames=300, max_frames_per_batch=1200)
    stats = DataStats()
    utts = load_split(corpus, "train")
    batches = read_all(build_speech_pipeline(utts, config, seed=1, stats=stats))
    seen = []
    for batch in batches:
        assert isinstance(batch, SequenceBatch)
        seqs = batch.seqs
        B, T, C = seqs.shape
        assert C == 80 and B * T <= 1200 and T <= 300
        lens = batch.seq_lens if batch.seq_lens is not None else [T] * B
        assert max(lens) == T and min(lens) >= config.min_frames
        for row, n in zip(seqs, lens, strict=True):
            assert torch.all(row[n:] == 0)
            if n < config.max_frames:  # not cropped: normalised over exactly these frames
                assert row[:n].mean(0).abs().max() < 1e-3
                assert (row[:n].std(0, unbiased=False) - 1).abs().max() < 1e-2
        seen += batch.example["ids"]
    assert sorted(seen) == sorted(u.id for u in utts)  # nothing lost
    expected_crops = sum(num_fbank_frames(soundfile.info(str(u.path)).frames) > 300 for u in utts)
    assert stats.counts["cropped"] == expected_crops > 0


def test_pipeline_skips_bad_files_and_counts_them():
    stats = DataStats()
    utts = scan_librispeech(FIXTURES / "dev-tiny")
    batches = read_all(
        build_speech_pipeline(utts, small_config(min_frames=100), seed=0, stats=stats)
    )
    ids = sorted(i for b in batches for i in b.example["ids"])
    assert ids == ["100-1000-0000", "100-1000-0001", "100-1000-0002"]
    assert stats.counts == {"corrupt": 1, "empty": 1, "too_short": 1}
    assert stats.num_skipped == 3


def test_asr_batches_carry_character_targets(corpus):
    vocab = load_vocabulary(corpus)
    assert (corpus / "dict.ltr.txt").exists()  # saved with the data
    utts = load_split(corpus, "dev")
    texts = {u.id: u.text for u in utts}
    batches = read_all(build_speech_pipeline(utts, small_config(), seed=0, vocab=vocab))
    for batch in batches:
        assert isinstance(batch, Seq2SeqBatch)
        lens = batch.target_seq_lens or [batch.target_seqs.shape[1]] * batch.target_seqs.shape[0]
        for utt_id, row, n in zip(batch.example["ids"], batch.target_seqs, lens, strict=True):
            assert vocab.decode(row[:n].tolist()) == texts[utt_id]


def test_asr_pipeline_skips_missing_transcripts():
    stats = DataStats()
    utts = scan_librispeech(FIXTURES / "dev-tiny")
    vocab = CharVocabulary.build(u.text for u in utts if u.text)
    batches = read_all(
        build_speech_pipeline(utts, small_config(min_frames=10), seed=0, vocab=vocab, stats=stats)
    )
    assert sorted(i for b in batches for i in b.example["ids"]) == [
        "100-1000-0000",
        "100-1000-0001",
        "100-1000-0002",
    ]
    assert stats.counts["missing_transcript"] == 1


def test_pipeline_is_seeded_and_sharded(corpus):
    utts = load_split(corpus, "train")
    config = small_config(shuffle_window=0, batch_shuffle_window=4)

    def ids(**kw):
        return [b.example["ids"] for b in build_speech_pipeline(utts, config, **kw)]

    first = ids(seed=5)
    assert first == ids(seed=5)
    assert first != ids(seed=6)
    a = [i for b in ids(seed=5, rank=0, world_size=2) for i in b]
    b = [i for b in ids(seed=5, rank=1, world_size=2) for i in b]
    assert not set(a) & set(b) and sorted(a + b) == sorted(u.id for u in utts)

    # Features do not depend on the order or the batch an utterance lands in: dither and
    # crops are keyed by (seed, utterance id).
    def features(pipeline):
        out = {}
        for batch in pipeline:
            lens = batch.seq_lens or [batch.seqs.shape[1]] * batch.seqs.shape[0]
            for utt_id, row, n in zip(batch.example["ids"], batch.seqs, lens, strict=True):
                out[utt_id] = row[:n]
        return out

    shuffled = features(build_speech_pipeline(utts, config, seed=5))
    in_order = features(build_speech_pipeline(utts, small_config(), seed=5, shuffle=False))
    assert shuffled.keys() == in_order.keys()
    assert all(torch.equal(shuffled[k], in_order[k]) for k in shuffled)
    other_seed = features(build_speech_pipeline(utts, config, seed=6))
    assert not all(torch.equal(shuffled[k], other_seed[k]) for k in shuffled)  # new dither


def test_reader_state_resumes_where_it_stopped(corpus):
    utts = load_split(corpus, "train")
    config = small_config(shuffle_window=0, batch_shuffle_window=4)
    pipeline = build_speech_pipeline(utts, config, seed=9)
    it = iter(pipeline)
    for _ in range(2):
        next(it)
    state = pipeline.state_dict()
    rest = [b.example["ids"] for b in it]
    assert rest

    resumed = build_speech_pipeline(utts, config, seed=9)
    resumed.load_state_dict(state)
    again = list(resumed)
    assert [b.example["ids"] for b in again] == rest
    # and the features are identical too
    fresh = build_speech_pipeline(utts, config, seed=9)
    fresh.load_state_dict(state)
    assert torch.equal(next(iter(fresh)).seqs, again[0].seqs)


def test_bad_pipeline_config_names_the_key():
    with pytest.raises(ValueError, match="`min_frames`"):
        small_config(min_frames=500, max_frames=400).check()
    with pytest.raises(ValueError, match="`max_frames_per_batch`"):
        small_config(max_frames_per_batch=10).check()
    with pytest.raises(ValueError, match="a multiple of `max_frames` \\(400\\): 1600 or 2000"):
        small_config(max_frames_per_batch=1700).check()
    with pytest.raises(ValueError, match="features: `normalize`"):
        small_config(features=FbankConfig(normalize="batch")).check()


# ------------------------------------------------------------- fairseq2 registration


def test_dataset_card_pointing_at_a_corpus_trains_from_it(tmp_path, corpus):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "mine.yaml").write_text(
        f"name: my_corpus\ndataset_family: birq_asr\ndataset_config:\n  path: {corpus}\n"
    )
    code = """
import json
from fairseq2 import init_fairseq2
from fairseq2.datasets import DatasetHubAccessor
from fairseq2.gang import create_fake_gangs
import torch
from birq_fs2.data.dataset import AsrDataset, AsrDatasetConfig
from birq_fs2.data.pipeline import SpeechPipelineConfig
init_fairseq2(no_progress=True)
hub = DatasetHubAccessor("birq_asr", AsrDataset, AsrDatasetConfig)()
ds = hub.open_dataset("my_corpus")
reader = ds.create_reader("dev", create_fake_gangs(torch.device("cpu")),
    SpeechPipelineConfig(min_frames=50, max_frames=400, max_frames_per_batch=1600), seed=1)
batch = next(iter(reader))[0]
print(json.dumps({"splits": ds.splits(), "shape": list(batch.source_seqs.shape), "vocab": len(ds.vocabulary)}))
"""
    proc = python(code, FAIRSEQ2_USER_ASSET_DIR=str(cards), FAIRSEQ2_EXTENSION_TRACE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["splits"] == ["dev", "test", "train"] and out["shape"][2] == 80 and out["vocab"] > 10


def test_truncated_audio_and_non_utf8_transcripts(tmp_path, capsys):
    chapter = tmp_path / "dev" / "7" / "8"
    chapter.mkdir(parents=True)
    good = (CHAPTER / "100-1000-0000.flac").read_bytes()
    (chapter / "7-8-0000.flac").write_bytes(good)
    (chapter / "7-8-0001.flac").write_bytes(good[: len(good) // 2])  # cut mid-stream
    (chapter / "7-8.trans.txt").write_bytes(b"7-8-0000 CAF\xe9 OLD DOG\n7-8-0001 THE OLD DOG\n")
    assert birq_data(["check", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert f"{chapter / '7-8-0001.flac'}: cannot be decoded as audio: corrupt or truncated" in out
    assert f"{chapter / '7-8.trans.txt'}: not UTF-8" in out
    # The pipeline skips the truncated file (counted) and keeps going.
    stats = DataStats()
    batches = read_all(
        build_speech_pipeline(load_split(tmp_path, "dev"), small_config(), seed=0, stats=stats)
    )
    assert [i for b in batches for i in b.example["ids"]] == ["7-8-0000"]
    assert stats.counts == {"corrupt": 1}


def test_audio_deleted_or_truncated_after_the_manifest_is_skipped_counted_and_named(tmp_path):
    chapter = tmp_path / "dev" / "7" / "8"
    chapter.mkdir(parents=True)
    good = (CHAPTER / "100-1000-0000.flac").read_bytes()
    for i in range(4):
        (chapter / f"7-8-000{i}.flac").write_bytes(good)
    (chapter / "7-8.trans.txt").write_text("".join(f"7-8-000{i} THE OLD DOG\n" for i in range(4)))
    write_manifest(load_split(tmp_path, "dev"), tmp_path / "m", "dev", tmp_path / "dev")
    utterances = read_manifest(tmp_path / "m", "dev")  # what a running recipe holds
    (chapter / "7-8-0001.flac").unlink()  # then the files change under it
    (chapter / "7-8-0002.flac").write_bytes(good[: len(good) // 3])
    stats = DataStats()
    batches = read_all(build_speech_pipeline(utterances, small_config(), seed=0, stats=stats))
    assert sorted(i for b in batches for i in b.example["ids"]) == ["7-8-0000", "7-8-0003"]
    assert sum(stats.counts.values()) == 2 and stats.num_skipped == 2
    named = " ".join(m for ms in stats.examples.values() for m in ms)
    assert str(chapter / "7-8-0001.flac") in named and str(chapter / "7-8-0002.flac") in named


def test_text_sources():
    import random

    from birq_fs2.data.synth import SynthError, pydoc_sentences, sentence_source

    pool = pydoc_sentences()
    assert len(pool) > 100
    assert all(3 <= len(s.split()) <= 20 and normalize_transcript(s) == s.upper() for s in pool)
    a, b = (
        sentence_source("grammar", random.Random(0)),
        sentence_source("grammar", random.Random(0)),
    )
    first = [next(a) for _ in range(5)]
    assert first == [next(b) for _ in range(5)] and len(set(first)) > 1  # seeded, varied
    with pytest.raises(SynthError, match="Unknown text source 'novels'"):
        sentence_source("novels", random.Random(0))


@pytest.mark.skipif(
    not Path("/usr/share/wordnet").is_dir(), reason="Debian wordnet-base not installed"
)
def test_wordnet_text_source():
    from birq_fs2.data.synth import wordnet_sentences

    pool = wordnet_sentences()
    assert len(pool) > 1000 and not any(s.startswith("'") or s.endswith("'") for s in pool)
