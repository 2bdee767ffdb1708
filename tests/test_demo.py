"""`make demo QUICK=1`: the main job's whole path on a tiny corpus, end to end."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import ROOT, run


@pytest.mark.slow
def test_quick_demo_writes_its_report_and_a_usable_model(tmp_path):
    out = tmp_path / "demo"
    cmd = ["make", "-C", str(ROOT), "--no-print-directory", "demo-steps", "QUICK=1",
           f"OUT={out}", f"PY={sys.executable}"]  # fmt: skip
    proc = run(cmd, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    report = (out / "REPORT.md").read_text()
    summaries = {
        k: json.loads((out / "eval" / k / "summary.json").read_text()) for k in ("birq", "scratch")
    }
    for key, label in (
        ("birq", "BiRQ-pretrained encoder"),
        ("scratch", "no pretraining (baseline)"),
    ):
        s = summaries[key]
        assert 0 <= s["wer"] and s["num_utterances"] > 0
        assert f"| {label} | {s['wer']:.2f} | {s['cer']:.2f} |" in report
    for png in ("pretrain_curves.png", "finetune_curves.png"):
        f = out / "report" / png
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000
        assert f"(report/{png})" in report
    assert "## Example transcripts (test)" in report
    assert "## The same comparison over seeds" in report  # the committed evidence, quoted

    # demo-out/asr is a folder that --model accepts.
    audio = sorted((out / "corpus" / "test").glob("*/*/*.flac"))[0]
    tr = run(
        [sys.executable, "-m", "birq_fs2.cli.transcribe", str(audio), "--model", str(out / "asr")],
        timeout=300,
    )
    assert tr.returncode == 0, tr.stderr[-3000:]
    hyps = (out / "eval" / "birq" / "hypotheses.tsv").read_text().splitlines()
    row = next(line.split("\t") for line in hyps if line.startswith(audio.stem + "\t"))
    assert tr.stdout.strip() == (row[4] if len(row) > 4 else "")

    # Re-running reuses what is built: the corpus stays, no run trains again.
    runs = ("pretrain", "finetune-birq", "finetune-scratch")
    before = {r: (out / r / "metrics" / "train.jsonl").read_text() for r in runs}
    corpus_mtime = (out / "corpus" / "SPEAKERS.TXT").stat().st_mtime_ns
    again = run(cmd, timeout=1200)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert (out / "corpus" / "SPEAKERS.TXT").stat().st_mtime_ns == corpus_mtime
    assert {r: (out / r / "metrics" / "train.jsonl").read_text() for r in runs} == before
