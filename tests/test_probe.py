"""birq-probe: frozen-encoder phone probes (linear per layer, SUPERB-style recogniser)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import pretrain_cmd, python, run

from birq_fs2.data.phones import CMU_PHONES, PHONE_INDEX, PHONES, SILENCE, to_cmu


@pytest.fixture(scope="module")
def aligned_corpus(tmp_path_factory):
    from birq_fs2.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("probe") / "corpus"
    synthesize_corpus(
        out, hours=0.02, num_speakers=6, seed=1, jobs=2, progress=False, use_flite=True
    )
    return out


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, aligned_corpus):
    run_dir = tmp_path_factory.mktemp("probe-run") / "run"
    proc = run(pretrain_cmd(
        run_dir, aligned_corpus, "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
        "regime.validate_every_n_steps=2", "regime.publish_metrics_every_n_steps=1",
        "lr_scheduler.config.num_warmup_steps=1",
        "dataset.pipeline.max_frames=1600", "dataset.pipeline.max_frames_per_batch=3200",
    ))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return run_dir


def _alignment_phones(corpus) -> set[str]:
    from birq_fs2.data.alignments import load_alignments

    files = sorted(corpus.rglob("*.phones.txt"))
    return {s.phone for segments in load_alignments(files).values() for s in segments}


def test_one_inventory_for_both_engines(aligned_corpus):
    assert len(set(CMU_PHONES)) == 39 and PHONES[0] == SILENCE
    speakers = (aligned_corpus / "SPEAKERS.TXT").read_text()
    assert "flite" in speakers and "espeak" in speakers  # both engines' names are mapped
    names = _alignment_phones(aligned_corpus)
    unknown = {p for p in names if to_cmu(p) is None} - {";", "?"}
    assert not unknown, f"alignment phones without an inventory phone: {sorted(unknown)}"
    mapped = {to_cmu(p) for p in names} - {None}
    assert mapped <= set(PHONES) and len(mapped) > 25
    # The two engines' spellings of the same phone meet: espeak-ng's D and flite's dh.
    assert to_cmu("D") == to_cmu("dh") == "dh" and to_cmu("@") == to_cmu("ax") == "ah"
    assert to_cmu("tS") == "ch" and to_cmu("oU") == to_cmu("ow") == "ow"


def _splits(model, corpus):
    from birq_fs2.data.alignments import aligned_utterances
    from birq_fs2.data.audio import FbankConfig, FbankExtractor
    from birq_fs2.probe import extract

    extractor = FbankExtractor(FbankConfig())
    return [
        extract(model, extractor, *aligned_utterances(corpus, s, 200))
        for s in ("train", "dev", "test")
    ]


def _phonetic(model, train) -> None:
    """Trains `model`'s blocks to carry the phones: a linear head on the last block,
    frame-level cross-entropy on the train utterances (the probes' own train split)."""
    from fairseq2.nn import BatchLayout

    from birq_fs2.data.alignments import frame_phones
    from birq_fs2.data.audio import AudioLoader, FbankConfig, FbankExtractor

    utterances, alignments = train
    extractor, loader = FbankExtractor(FbankConfig()), AudioLoader()
    examples = []
    for u in utterances:
        fbank = extractor(loader(u.path).waveform, 0)[None]
        stacked, layout = model.stack(
            fbank, BatchLayout(fbank.shape[:2], seq_lens=[fbank.shape[1]])
        )
        names = frame_phones(alignments[u.id], model.config.frame_ms / 1000, stacked.shape[1])
        target = torch.tensor([PHONE_INDEX.get(to_cmu(p) or "", -100) for p in names])
        examples.append((stacked, layout, target))
    torch.manual_seed(0)
    head = torch.nn.Linear(model.model_dim, len(PHONES))
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(8):
        for stacked, layout, target in examples:
            hidden, _ = model.run_encoder(stacked, layout)
            loss = F.cross_entropy(head(hidden[0]), target, ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def test_a_phonetic_encoder_probes_better_than_a_random_one(aligned_corpus, pretrained_run):
    from birq_fs2.data.alignments import aligned_utterances
    from birq_fs2.models.source import resolve_model
    from birq_fs2.probe import ProbeConfig, probe_encoder

    torch.set_num_threads(1)
    source = resolve_model(pretrained_run)
    random_model = source.initial_model(0)
    phonetic = source.initial_model(0)
    # The random floor is one initialisation per seed: the same seed, the same weights.
    w = [
        m.encoder.layers[0].ffn1.inner_proj.weight
        for m in (random_model, phonetic, source.initial_model(1))
    ]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])
    _phonetic(phonetic, aligned_utterances(aligned_corpus, "train", 200))
    config = ProbeConfig(epochs=8, recogniser_epochs=30)
    streams = ["block_1", "block_2", "block_3", "block_4"]
    scores = {
        name: probe_encoder(*_splits(m, aligned_corpus), config, streams=streams)
        for name, m in (("random", random_model), ("phonetic", phonetic))
    }
    last = {n: s["linear"]["block_4"]["test_accuracy"] for n, s in scores.items()}
    assert last["phonetic"] > last["random"] + 0.10, last
    per = {n: s["recogniser"]["test_per"] for n, s in scores.items()}
    assert per["phonetic"] < per["random"] - 3, per
    weights = scores["phonetic"]["recogniser"]["layer_weights"]
    assert len(weights) == 4 and abs(sum(weights) - 1) < 1e-3


def test_birq_probe_reads_a_run_an_export_and_a_card_alike(
    tmp_path, aligned_corpus, pretrained_run, capsys
):
    from birq_fs2.cli.export import main as export_main
    from birq_fs2.cli.probe import main

    cards = tmp_path / "cards"
    assert export_main([str(pretrained_run), str(cards), "--name", "probe_tiny"]) == 0
    out = tmp_path / "probe"
    common = ["--data", str(aligned_corpus), "--epochs", "2", "--train-utterances", "40",
              "--eval-utterances", "20"]  # fmt: skip
    assert main(["--model", f"run={pretrained_run}", "--model", f"export={cards}",
                 *common, "--out", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    result = json.loads((out / "probe.json").read_text())
    encoders = result["encoders"]
    assert list(encoders) == ["run", "export", "random", "fbank"]
    assert [e["kind"] for e in encoders.values()] == ["trained", "trained", "random", "input"]
    # The same weights give the same probe numbers, whichever way they are named.
    strip = {"seconds", "model"}
    same = [{k: v for k, v in encoders[n].items() if k not in strip} for n in ("run", "export")]
    assert same[0] == same[1]
    for e in encoders.values():
        for r in e["linear"].values():
            assert 0 <= r["test_accuracy"] <= 1 and 1 <= r["epoch"] <= 2
        assert e["recogniser"]["test_per"] >= 0 and e["test_utterances"]["recogniser_phones"]
    assert list(encoders["run"]["linear"]) == ["block_1", "block_2", "block_3", "block_4"]
    assert list(encoders["fbank"]["linear"]) == ["fbank"]
    assert result["sizes"]["train"]["frames"] > 500
    assert "| run (trained) |" in table and "| fbank (input) |" in table
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A card name, found through fairseq2's asset store.
    card_out = tmp_path / "probe-card"
    proc = python(
        "import sys; from birq_fs2.cli.probe import main; "
        f"sys.exit(main(['--model', 'probe_tiny', '--no-floors', *{common!r}, '--out', '{card_out}']))",
        FAIRSEQ2_USER_ASSET_DIR=str(cards),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    by_card = json.loads((card_out / "probe.json").read_text())["encoders"]["probe_tiny"]
    assert {k: v for k, v in by_card.items() if k not in strip} == same[0]


def test_birq_probe_names_a_corpus_without_alignments(tmp_path, pretrained_run, capsys):
    from helpers import FIXTURES

    from birq_fs2.cli.probe import main

    code = main(["--model", str(pretrained_run), "--data", str(FIXTURES), "--splits",
                 "dev-tiny,dev-tiny,dev-tiny", "--out", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{FIXTURES}: no phone alignments" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
