"""birq-labels: HuBERT's layer analysis of a pretrained encoder on a phone-aligned corpus."""

from __future__ import annotations

import json

import pytest
from helpers import metrics, pretrain_cmd, run

from birq_fs2.metrics import LABEL_QUALITY_METRICS, display


@pytest.fixture(scope="module")
def aligned_corpus(tmp_path_factory):
    from birq_fs2.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("aligned") / "corpus"
    synthesize_corpus(
        out, hours=0.01, num_speakers=5, seed=5, jobs=2, progress=False, use_flite=True
    )
    return out


def test_layer_analysis_of_a_pretrained_run(tmp_path, aligned_corpus, capsys):
    from birq_fs2.cli.labels import main

    run_dir = tmp_path / "run"
    proc = run(pretrain_cmd(
        run_dir, aligned_corpus, "regime.num_steps=2", "regime.checkpoint_every_n_steps=2",
        "regime.validate_every_n_steps=2", "regime.publish_metrics_every_n_steps=1",
        "lr_scheduler.config.num_warmup_steps=1", "dataset.pipeline.max_frames=1600",
        "dataset.pipeline.max_frames_per_batch=3200", "dataset.valid_split=train",
        "schedule.refine_start_step=1",
    ))  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # Validation on phone-aligned utterances logs the label quality of both streams.
    valid = metrics(run_dir, "valid")[2]
    for key in ("anchor_pnmi", "enhanced_pnmi", "anchor_phone_purity", "enhanced_phone_purity"):
        assert 0.0 <= valid[display(key, LABEL_QUALITY_METRICS)] <= 1.0, key
    assert valid[display("label_quality_frames", LABEL_QUALITY_METRICS)] > 100
    # The guard's second reading: the noise-free enhanced labels of every validation frame.
    noise_free = valid[display("enhanced_noise_free_perplexity", LABEL_QUALITY_METRICS)]
    assert (
        1.0 <= noise_free <= valid[display("enhanced_noise_free_codes_used", LABEL_QUALITY_METRICS)]
    )
    out = tmp_path / "labels"
    assert main(["--model", str(run_dir), "--data", str(aligned_corpus), "--split", "train",
                 "--out", str(out), "--max-utterances", "20"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    result = json.loads((out / "labels.json").read_text())
    streams = result["streams"]
    assert list(streams) == ["anchor", "layer_1", "layer_2", "layer_3", "layer_4"]
    assert result["label_layer"] == 2 and result["frames"] > 100 and result["phones"] > 10
    for q in streams.values():
        assert 0.0 <= q["pnmi"] <= 1.0 and 1 <= q["codes_used"] <= result["codebook_size"]
    # Random-projection labels of real speech features carry phone information.
    assert streams["anchor"]["pnmi"] > 0.05
    assert "| layer_2 (label layer) |" in table
    assert all(q["chance_pnmi"] < q["pnmi"] for q in streams.values())
    assert (out / "labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "labels.md").read_text() == table


def test_layer_analysis_errors_are_one_line(tmp_path, corpus, capsys):
    from birq_fs2.cli.labels import main

    assert main(["--model", str(tmp_path), "--data", str(corpus)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birq-labels: error:") and len(err.splitlines()) == 1


def test_label_quality_sweep_runs_its_quick_budget_and_resumes(tmp_path):
    import sys

    from helpers import ROOT

    cmd = [sys.executable, str(ROOT / "benchmarks" / "label_sweep.py"), "--budget", "quick",
           "--variants", "bestrq,birq", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]  # fmt: skip
    proc = run(cmd, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    by_variant = {r["variant"]: r for r in result["runs"]}
    assert set(by_variant) == {"bestrq", "birq"} and by_variant["birq"]["step"] == 6
    assert by_variant["bestrq"]["enhanced_pnmi"] is None  # BEST-RQ has no enhanced stream
    assert 0 <= by_variant["birq"]["enhanced_pnmi"] <= 1
    assert by_variant["birq"]["layers"]["layer_2"]["codes_used"] > 1
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert (
        "| BiRQ as first built" in report
        and "**Reading.**" in report
        and (tmp_path / "out" / "pnmi.png").exists()
    )
    # A second call trains nothing: every run is finished.
    again = run(cmd, timeout=300)
    assert again.returncode == 0 and "pretraining" not in again.stderr


def test_label_grad_paths_split_the_gradient_by_path(tmp_path, aligned_corpus):
    """benchmarks/label_grad_paths.py: the label path carries gradient with
    straight_through, none when detached; the two forwards of a step see the same labels
    (the script asserts it) and a second call reuses the finished variants."""
    import sys

    from helpers import ROOT

    cmd = [sys.executable, str(ROOT / "benchmarks" / "label_grad_paths.py"), "--corpus", str(aligned_corpus),
           "--steps", "2", "--every", "1", "--variants", "ratio1,detach_instance", "--out", str(tmp_path)]  # fmt: skip
    proc = run(cmd, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = {r["variant"]: r for r in json.loads((tmp_path / "paths.json").read_text())}
    through, detached = results["ratio1"]["rows"], results["detach_instance"]["rows"]
    assert [r["step"] for r in through] == [1, 2]
    assert all(r["labels"] > 0 and r["anchor"] > 0 and r["prediction"] > 0 for r in through)
    assert all(r["labels"] == 0 for r in detached)
    assert through[1]["adam_label_share"] > 0 and detached[1]["adam_label_share"] == 0
    assert "| ratio1: straight-through" in (tmp_path / "REPORT.md").read_text()
    again = run(cmd, timeout=300)
    assert again.returncode == 0 and "step 1" not in again.stderr  # nothing recomputed
