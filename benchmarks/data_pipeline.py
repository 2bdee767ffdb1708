"""Data pipeline throughput: audio seconds per wall-clock second, full pipeline.

    python benchmarks/data_pipeline.py [--corpus DIR] [--hours H] [--out DIR]

Reads every training utterance through the pipeline a trainer uses (decode, resample,
fbank with dither, per-utterance normalisation, crop, bucketing, collation) and reports
the real-time factor for 1 and 2 parallel calls. Without --corpus it synthesises one
(`birq-data synth`) first. Target: >= 500x real time on 2 cores. Writes
data_pipeline.json and data_pipeline.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import soundfile

from birq_fs2.data.corpus import load_split
from birq_fs2.data.pipeline import DataStats, SpeechPipelineConfig, build_speech_pipeline
from birq_fs2.data.synth import synthesize_corpus


def measure(utts, parallel: int) -> dict:
    config = SpeechPipelineConfig(num_parallel_calls=parallel, num_prefetch=4, shuffle_window=0)
    stats = DataStats()
    pipeline = build_speech_pipeline(utts, config, seed=0, stats=stats)
    start = time.perf_counter()
    frames = batches = 0
    for batch in pipeline:
        frames += batch.seqs.shape[0] * batch.seqs.shape[1]
        batches += 1
    wall = time.perf_counter() - start
    return {"num_parallel_calls": parallel, "wall_s": wall, "batches": batches,
            "padded_frames": frames, "skipped": stats.num_skipped}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, help="a LibriSpeech-layout corpus or manifest dir")
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--hours", type=float, default=0.5, help="hours to synthesise without --corpus"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline"))
    args = parser.parse_args()

    corpus = args.corpus
    if corpus is None:
        corpus = args.out / "corpus"
        if not (corpus / "SPEAKERS.TXT").exists():
            synthesize_corpus(corpus, hours=args.hours, num_speakers=20, seed=0)
    utts = load_split(corpus, args.split)
    audio_s = sum(soundfile.info(str(u.path)).duration for u in utts)
    rows = []
    for parallel in (1, 2):
        row = measure(utts, parallel)
        row["x_real_time"] = audio_s / row["wall_s"]
        rows.append(row)
        print(f"num_parallel_calls={parallel}: {audio_s:.0f} s of audio in {row['wall_s']:.2f} s "
              f"= {row['x_real_time']:.0f}x real time")  # fmt: skip
    report = {"corpus": str(corpus), "utterances": len(utts), "audio_s": audio_s,
              "cpus": os.cpu_count(), "results": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_pipeline.json").write_text(json.dumps(report, indent=2))
    lines = ["# Data pipeline throughput", "",
             f"{len(utts)} utterances, {audio_s / 3600:.2f} h of audio, {os.cpu_count()} CPUs. "
             "Full pipeline: decode, resample, 80-dim fbank + dither, per-utterance "
             "normalisation, crop, bucketing, collation. Target: >= 500x real time.", "",
             "| parallel calls | wall (s) | batches | x real time |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r['num_parallel_calls']} | {r['wall_s']:.2f} | {r['batches']} | {r['x_real_time']:.0f} |"
        for r in rows
    ]
    (args.out / "data_pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
