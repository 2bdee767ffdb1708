"""Training-step cost of BiRQ against BEST-RQ on the same batches.

    python benchmarks/train_step.py [--arch tiny|base] [--steps N] [--out DIR]

Forward + backward + AdamW step of the `birq` model with the enhanced stream on (after
refine_start) and of the `bestrq_*` arch, alternating on identical synthetic fbank
batches (same lengths, same seeds), reporting median step time and peak memory (CPU: peak
RSS growth in a fresh process per model; CUDA: allocator peak). Targets: BiRQ <= 1.3x
BEST-RQ's step time and <= 1.2x its peak memory. Writes train_step.json / .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _memory import PeakRss


def worker(arch: str, steps: int, batch: int, frames: int, device: str) -> dict:
    from fairseq2.nn import BatchLayout

    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model
    from birq_fs2.models.model import BirqStep

    name, _, overrides = arch.partition(":")
    config = ARCHS[name]()
    for item in filter(None, overrides.split(",")):
        key, value = item.split("=")
        setattr(config.enhanced, key, value)
    torch.manual_seed(0)
    model = create_birq_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    lens = [frames - 37 * i for i in range(batch)]
    x = torch.randn(batch, frames, 80, generator=gen).to(device)
    layout = BatchLayout(x.shape[:2], seq_lens=lens, device=x.device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(i: int) -> None:
        torch.manual_seed(100 + i)  # same masks for both models
        out = model(x, layout, BirqStep(tau=1.0, seed=i))
        (out.loss / out.num_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up: allocator, optimizer state
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    with PeakRss() as cpu_peak:
        for i in range(1, steps + 1):
            t0 = time.perf_counter()
            step(i)
            sync()
            times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = cpu_peak.extra_mb
    return {"arch": arch, "median_s": statistics.median(times), "min_s": min(times), "peak_extra_mb": peak,
            "params": sum(p.numel() for p in model.parameters())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default=None, help="tiny (CPU default) or base (GPU default)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--frames", type=int, default=800, help="fbank frames (10 ms) per utterance"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.frames, device)))
        return
    arch = args.arch or ("base" if device == "cuda" else "tiny")
    results = {}
    variants = (
        f"bestrq_{arch}",
        arch,
        f"{arch}:label_grad=straight_through",
        f"{arch}:label_input=masked",
    )
    for name in variants:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
             "--batch", str(args.batch), "--frames", str(args.frames)],
            capture_output=True, text=True, check=True, env={**os.environ},
        )  # fmt: skip
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, results[name])
    best = results[f"bestrq_{arch}"]
    for v in results.values():
        v["time_ratio"] = v["median_s"] / best["median_s"]
        v["memory_ratio"] = (
            v["peak_extra_mb"] / best["peak_extra_mb"] if best["peak_extra_mb"] else float("nan")
        )
    ratio_t, ratio_m = results[arch]["time_ratio"], results[arch]["memory_ratio"]
    device_name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    report = {"device": device_name, "batch": args.batch, "frames": args.frames, "results": results,
              "time_ratio": ratio_t, "memory_ratio": ratio_m}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(report, indent=2))
    md = [
        "# Training step: BiRQ vs BEST-RQ", "",
        f"{device_name}; batch of {args.batch} utterances of up to {args.frames} fbank frames; "
        f"median of {args.steps} steps (forward + backward + AdamW). Targets: time <= 1.3x, memory <= 1.2x.", "",
        "| model | params | step (ms) | x BEST-RQ | peak extra memory (MB) | x BEST-RQ |",
        "|---|---|---|---|---|---|",
        *[f"| {k} | {v['params']:,} | {1000 * v['median_s']:.0f} | {v['time_ratio']:.2f} | "
          f"{v['peak_extra_mb']:.0f} | {v['memory_ratio']:.2f} |" for k, v in results.items()],
        "", f"BiRQ (defaults: unmasked label input, detached labels) / BEST-RQ: "
        f"time {ratio_t:.2f}x, peak memory {ratio_m:.2f}x.",
    ]  # fmt: skip
    (args.out / "train_step.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
