"""Training throughput of the recipes on this machine: the stock path against the fast one,
side by side, and where one step's time goes.

    python benchmarks/train_throughput.py [--corpus DIR] [--work DIR] [--out DIR]
        [--repeats 2] [--pretrain-steps 200] [--finetune-steps 150] [--bf16] [--quick]

1. **Recipe runs** (the real thing: fairseq2's trainer, the data pipeline, the CPU presets'
   batches, validation and checkpoints at the presets' cadence): BEST-RQ tiny, BiRQ tiny
   and CTC fine-tuning (from scratch), each on the stock path (every `speed.*` knob off,
   no feature cache) and on the fast path (the defaults), interleaved stock, fast, stock,
   fast, ... so that drift of the machine hits both alike. Steady-state seconds per step
   from fairseq2's own timers (metrics/train.jsonl: lapse, compute and data time of every
   publish interval but the first), and each run's whole wall time. "Same results": the
   training loss of the two paths against the run-to-run spread (the stock path with
   another seed); anchor labels do not depend on the path (tests/test_speed.py).
   BiRQ/BEST-RQ step-cost ratio from the interleaved pairs (the equal-compute arms of
   benchmarks/evidence.py read it from here).
2. **Where the time goes**: one process per (model, path) runs the recipe's own train unit
   on the presets' batches from the real pipeline under torch's profiler: data, forward
   (with the model's own ranges: masked encoder, label generator, labels and losses),
   backward, gradient clipping, optimizer; and the top operators.

The fast path also runs as 2 data-parallel ranks of one process each on this one machine
(`fast_2ranks`: torchrun, 1 thread and half the batch per rank, BatchNorm synchronised;
`--no-ranks` leaves it out).

3. **Experiments per hour**: the same pair of pretraining runs (BEST-RQ, BiRQ) one at a
   time (stock path, fast path, fast path as 2 ranks) and two at once (1 thread each, what
   `benchmarks/evidence.py --jobs 2` does), interleaved; the pair's wall time.

4. **bf16 autocast** (`--bf16-only`, into the existing throughput.json): the fast path
   with the trainer's mixed precision (`trainer.mixed_precision.mode=auto`, bf16; the
   quantizers keep fp32 by contract, so labels do not change), as 2 ranks for pretraining
   and one process for fine-tuning, interleaved with the stock path and its fp32
   counterpart. On CPUs with AMX (bf16 matrix tiles) the matmuls run several times faster;
   elsewhere bf16 is slow. Not the same arithmetic: its losses are reported against the
   stock path's seed spread.

Writes throughput.json / throughput.md under --out. With --bf16 the fast path with bf16
autocast (one process) is measured in part 1 too, reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from birq_fs2.experiments.runs import shared_threads, threads_env, usable_cores

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_PRESET = ROOT / "birq_fs2/recipes/pretrain/configs/tiny_cpu.yaml"
FINETUNE_PRESET = ROOT / "birq_fs2/recipes/finetune/configs/tiny_cpu.yaml"

STOCK = [
    "speed.fused_attention=false", "speed.fast_dropout=false", "speed.tune_malloc=false",
    "optimizer.config.impl=auto",
    "dataset.pipeline.feature_cache_gb=0",
]  # fmt: skip
PATHS = {
    "stock": STOCK,
    "fast": [],
    "fast_bf16": ["trainer.mixed_precision.mode=auto", "trainer.mixed_precision.dtype=bfloat16"],
    "fast_2ranks": [],
    "fast_2ranks_bf16": [
        "trainer.mixed_precision.mode=auto",
        "trainer.mixed_precision.dtype=bfloat16",
    ],
}
RANKS = {"fast_2ranks": 2, "fast_2ranks_bf16": 2}
"""Paths that run the recipe as data-parallel ranks under torchrun on this one machine:
each rank gets cores / ranks intra-op threads and 1 / ranks of the preset's batch (so the
global batch is the preset's), BatchNorm synchronised over the ranks (GlooSyncBatchNorm):
the same training function as one process, on the cores as separate processes. Pretraining
only: the fine-tuning preset's batch (7500 frames, a multiple of its 1500-frame utterance
cap as its pipeline requires) has no half that is such a multiple."""
MODELS = {
    "bestrq": ("pretrain", ["model.arch=bestrq_tiny"]),
    "birq": ("pretrain", ["model.arch=tiny"]),
    "ctc": ("finetune", []),
}
LOSS_KEY = {"pretrain": "Loss", "finetune": "CTC Loss"}


# --- 1. recipe runs --------------------------------------------------------------------


def run_recipe(
    work: Path, corpus: Path, model: str, path: str, seed: int, steps: int, tag: str
) -> dict:
    return finish_recipe(start_recipe(work, corpus, model, path, seed, steps, tag))


def start_recipe(
    work: Path, corpus: Path, model: str, path: str, seed: int, steps: int, tag: str,
    threads: int | None = None,
) -> dict:  # fmt: skip
    """Launches one recipe run (with `threads` intra-op threads, default torch's)."""
    recipe, extra = MODELS[model]
    preset = PRETRAIN_PRESET if recipe == "pretrain" else FINETUNE_PRESET
    # The presets' cadence (pretraining: 2 validations per run; fine-tuning: 3), in
    # multiples of the publish interval (10) as fairseq2 requires.
    every = max(10, steps // (2 if recipe == "pretrain" else 3) // 10 * 10)
    out = work / "runs" / f"{model}-{path}-s{seed}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    ranks = RANKS.get(path, 1)
    launcher = [sys.executable]
    if ranks > 1:
        batch = yaml.safe_load(preset.read_text())["dataset"]["pipeline"]["max_frames_per_batch"]
        extra = [*extra, f"dataset.pipeline.max_frames_per_batch={batch // ranks}"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(ranks)]  # fmt: skip
        threads = threads or shared_threads(ranks)
    cmd = [
        *launcher, "-m", f"birq_fs2.recipes.{recipe}", str(out), "--config-file", str(preset),
        "--config", f"dataset.config_overrides.path={corpus}", f"common.seed={seed}",
        f"regime.num_steps={steps}", f"regime.validate_every_n_steps={every}",
        f"regime.checkpoint_every_n_steps={every}", "regime.publish_metrics_every_n_steps=10",
        *([f"lr_scheduler.config.num_warmup_steps={max(1, steps // 10)}"] if recipe == "pretrain" else []),
        *extra, *PATHS[path],
    ]  # fmt: skip
    print(f"throughput: {model} {path} seed {seed} ({tag}) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}
    if threads is not None:
        env.update(threads_env(threads))
    log = work / "logs" / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return {"proc": proc, "started": time.perf_counter(), "out": out, "log": log, "recipe": recipe,
            "model": model, "path": path, "seed": seed, "steps": steps}  # fmt: skip


def finish_recipe(launched: dict) -> dict:
    """Waits for a started run and reads its steady-state step times from its metrics."""
    proc, out, log, recipe = (launched[k] for k in ("proc", "out", "log", "recipe"))
    model, path, seed, steps = (launched[k] for k in ("model", "path", "seed", "steps"))
    proc.wait()
    wall = time.perf_counter() - launched["started"]
    if proc.returncode != 0:
        raise RuntimeError(
            f"{out.name} failed (exit {proc.returncode}); log {log}:\n{log.read_text()[-2000:]}"
        )
    rows = [json.loads(line) for line in (out / "metrics/train.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows  # every interval but the first (start-up), if there are more
    n = steady[-1]["Step"] - (rows[0]["Step"] if len(rows) > 1 else 0)
    per_step = {
        key: sum(r[key] for r in steady) / n for key in ("Lapse Time", "Compute Time", "Data Time")
    }
    result = {
        "model": model, "path": path, "seed": seed, "steps": steps, "wall_s": round(wall, 2),
        "s_per_step": per_step["Lapse Time"], "compute_s_per_step": per_step["Compute Time"],
        "data_s_per_step": per_step["Data Time"],
        "loss": [(r["Step"], r[LOSS_KEY[recipe]]) for r in rows],
    }  # fmt: skip
    valid = out / "metrics/valid/valid.jsonl"
    if recipe == "finetune" and valid.exists():
        last = [json.loads(line) for line in valid.read_text().splitlines()][-1]
        result["dev_wer"] = last.get("Word Error Rate (WER)")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # keep metrics and logs only
    return result


def final_loss(run: dict, window: int = 5) -> float:
    return statistics.mean(v for _, v in run["loss"][-window:])


# --- 2. where the time goes ------------------------------------------------------------


def profile_worker(corpus: Path, model_name: str, path: str, steps: int, warmup: int) -> dict:
    """The pretraining recipe's train unit on the preset's batches, under the profiler."""
    import torch
    from fairseq2.metrics import MetricBag
    from torch.profiler import ProfilerActivity, profile, record_function

    from birq_fs2.data.corpus import load_split
    from birq_fs2.data.pipeline import DataStats, SpeechPipelineConfig, build_speech_pipeline
    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model
    from birq_fs2.recipes.pretrain.config import BirqScheduleSection
    from birq_fs2.recipes.pretrain.recipe import BirqTrainUnit, StepSchedule
    from birq_fs2.recipes.speed import SpeedSection, apply_speed

    preset = yaml.safe_load(PRETRAIN_PRESET.read_text())
    off = path == "stock"
    pipeline_config = SpeechPipelineConfig(
        **preset["dataset"]["pipeline"], feature_cache_gb=0 if off else 4.0
    )
    arch = "bestrq_tiny" if model_name == "bestrq" else "tiny"
    torch.manual_seed(0)
    model = create_birq_model(ARCHS[arch]()).train()
    apply_speed(
        model, SpeedSection(fused_attention=not off, fast_dropout=not off, tune_malloc=not off)
    )
    # The presets' fused AdamW on the fast path; the per-parameter loop on the stock one.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=not off)
    schedule = StepSchedule(BirqScheduleSection(refine_start_step=0), 10_000, 0, 0)
    stats = DataStats()
    unit = BirqTrainUnit(model, model, schedule, stats)
    bag = MetricBag(device=torch.device("cpu"))
    unit.prepare_metric_bag(bag)
    utterances = load_split(corpus, "train")
    batches = iter(
        build_speech_pipeline(utterances, pipeline_config, seed=0, stats=stats, repeat=True)
    )

    def step(step_nr: int) -> None:
        with record_function("data"):
            batch = next(batches)
        unit.set_step_nr(step_nr)
        with record_function("forward"):
            loss, num_targets = unit.process_batch(batch, bag)
        with record_function("backward"):
            (loss / num_targets).backward()
        with record_function("grad_norm"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    # Past the first epoch of the corpus (the feature cache's steady state) when asked.
    for i in range(warmup):
        step(i + 1)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(warmup + i + 1)
    wall = (time.perf_counter() - started) / steps
    parts = {}
    for event in prof.key_averages():
        if event.key in (
            "data",
            "forward",
            "backward",
            "grad_norm",
            "optimizer",
        ) or event.key.startswith("birq."):
            parts[event.key] = event.cpu_time_total / steps / 1e6
    ops = sorted(
        (e for e in prof.key_averages() if e.key.startswith("aten::")),
        key=lambda e: -e.self_cpu_time_total,
    )[:12]
    return {
        "model": model_name, "path": path, "s_per_step": wall, "parts_s": parts,
        "top_ops": [(e.key, e.self_cpu_time_total / steps / 1e6, e.count // steps) for e in ops],
    }  # fmt: skip


def profile_run(corpus: Path, model: str, path: str, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--profile-worker", f"{model}:{path}", "--corpus", str(corpus),
           "--profile-steps", str(steps), "--profile-warmup", str(warmup)]  # fmt: skip
    print(f"throughput: profiling {model} {path} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"profile {model} {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_all(corpus: Path, models: list[str], args: argparse.Namespace) -> list[dict]:
    return [
        profile_run(corpus, model, path, args.profile_steps, args.profile_warmup)
        for model in models if MODELS[model][0] == "pretrain"
        for path in ("stock", "fast")
    ]  # fmt: skip


# --- 3. experiments per hour ----------------------------------------------------------

JOB_WAYS = {
    "stock path, one run at a time": ("stock", 1),
    "fast path, one run at a time": ("fast", 1),
    "fast path as 2 ranks, one run at a time": ("fast_2ranks", 1),
    "fast path, 2 runs at once": ("fast", 2),
}
"""How a pair of pretraining runs (BEST-RQ and BiRQ) shares the machine: the path and the
runs at once (each with cores / runs intra-op threads; one at a time: torch's default)."""


def measure_jobs(work: Path, corpus: Path, steps: int, repeats: int) -> dict:
    """The same pair of pretraining runs (BEST-RQ and BiRQ tiny, `steps` steps each) done
    each way of JOB_WAYS, the ways interleaved within every repeat; the pair's wall time from
    the first launch to the last exit (start-up, validation and checkpoints included; the
    shorter run of a pair at once leaves its cores idle at the end, as a plan's last task
    would)."""
    cores = usable_cores()
    rows: dict[str, list[dict]] = {way: [] for way in JOB_WAYS}
    for rep in range(repeats):
        for way, (path, jobs) in JOB_WAYS.items():
            tag = f"jobs{jobs}-r{rep}"
            started = time.perf_counter()
            if jobs == 1:
                runs = [
                    run_recipe(work, corpus, m, path, 0, steps, tag) for m in ("bestrq", "birq")
                ]
            else:
                launched = [start_recipe(work, corpus, m, path, 0, steps, tag, shared_threads(jobs))
                            for m in ("bestrq", "birq")]  # fmt: skip
                runs = [finish_recipe(x) for x in launched]
            rows[way].append({
                "wall_s": round(time.perf_counter() - started, 2),
                "s_per_step": {r["model"]: round(r["s_per_step"], 4) for r in runs},
                "final_loss": {r["model"]: round(final_loss(r), 4) for r in runs},
            })  # fmt: skip
    base = rows[next(iter(JOB_WAYS))]
    summary = {}
    for way, (path, jobs) in JOB_WAYS.items():
        walls = [r["wall_s"] for r in rows[way]]
        summary[way] = {
            "path": path, "runs_at_once": jobs, "threads_per_run": shared_threads(jobs) if jobs > 1 else None,
            "pair_wall_s": statistics.mean(walls), "pair_wall_s_all": walls,
            "pretrain_steps_per_hour": 2 * steps * 3600 / statistics.mean(walls),
            "x_stock_all": [round(b["wall_s"] / r["wall_s"], 3) for b, r in zip(base, rows[way], strict=True)],
            "s_per_step": {m: statistics.mean(r["s_per_step"][m] for r in rows[way]) for m in ("bestrq", "birq")},
        }  # fmt: skip
        summary[way]["x_stock"] = statistics.mean(summary[way]["x_stock_all"])
    return {"cores": cores, "steps": steps, "repeats": repeats, "ways": summary, "runs": rows}


BF16_PATHS = {
    "pretrain": ["stock", "fast_2ranks", "fast_2ranks_bf16"],
    "finetune": ["stock", "fast", "fast_bf16"],
}
"""Part 4's paths per recipe, interleaved within each repeat: bf16's fastest form (2 ranks
for pretraining, one process for fine-tuning: its batch does not split, see RANKS) against
the stock path and the same form in fp32."""


def measure_bf16(
    work: Path, corpus: Path, models: list[str], steps: dict[str, int], repeats: int
) -> dict:
    """Part 4: bf16 autocast against fp32, side by side (see BF16_PATHS)."""
    runs = []
    for rep in range(repeats):
        for model in models:
            recipe = MODELS[model][0]
            for path in BF16_PATHS[recipe]:
                runs.append(run_recipe(work, corpus, model, path, 0, steps[recipe], f"bf16-r{rep}"))
    paths = list(dict.fromkeys(p for ps in BF16_PATHS.values() for p in ps))
    return {"amx_bf16": "amx_bf16" in _cpu_flags(), "repeats": repeats, "steps": steps,
            "summary": summarise(runs, paths), "runs": runs}  # fmt: skip


def bf16_lines(bf16: dict, summary: dict, titles: dict[str, str]) -> list[str]:
    """The report's "bf16 autocast" section: speed against stock and fp32, losses against
    the stock path's seed spread (part 1's stock seed-1 run)."""
    amx = "has" if bf16["amx_bf16"] else "does not have"
    lines = ["", "## bf16 autocast", "",
             f"The fast path with bf16 autocast (`trainer.mixed_precision.mode=auto`, "
             f"`trainer.mixed_precision.dtype=bfloat16`): pretraining as 2 ranks, fine-tuning as one "
             f"process, interleaved with the stock path and the same form in fp32 within each of "
             f"{bf16['repeats']} repeats. This CPU {amx} AMX bf16 tiles. The quantizers compute in fp32 "
             "under autocast (their contract), so the labels are the fp32 ones; the rest of the "
             "arithmetic is not, so the losses are compared with the run-to-run spread.", "",
             "| recipe | stock s/step | fp32 s/step | fp32 x stock | bf16 s/step | bf16 x stock (per "
             "repeat) | bf16 x fp32 | final loss stock / fp32 / bf16 | stock seed 1 (spread) | "
             "dev WER stock / fp32 / bf16 |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model, row in bf16["summary"].items():
        recipe = MODELS[model][0]
        stock, fp32, bf = (row.get(p) for p in BF16_PATHS[recipe])
        if not (stock and fp32 and bf):
            continue
        spread = summary.get(model, {}).get("stock_seed1", {}).get("final_loss")
        wer = (f"{stock['dev_wer']:.1f} / {fp32['dev_wer']:.1f} / {bf['dev_wer']:.1f}"
               if "dev_wer" in bf else "")  # fmt: skip
        lines.append(
            f"| {titles[model]} (`{BF16_PATHS[recipe][2]}`) | {stock['s_per_step']:.3f} | "
            f"{fp32['s_per_step']:.3f} | {fp32['speedup']:.2f}x | {bf['s_per_step']:.3f} | "
            f"**{bf['speedup']:.2f}x** "
            f"({', '.join(f'{x:.2f}' for x in bf['speedup_all'])}) | "
            f"{fp32['s_per_step'] / bf['s_per_step']:.2f}x | {stock['final_loss']:.3f} / "
            f"{fp32['final_loss']:.3f} / {bf['final_loss']:.3f} | "
            + (f"{spread:.3f}" if spread is not None else "-")
            + f" | {wer} |"
        )
    return lines


def jobs_lines(jobs: dict) -> list[str]:
    """The report's "experiments per hour" section."""
    lines = ["", "## Experiments per hour: runs at once", "",
             f"The same pair of pretraining runs (BEST-RQ and BiRQ tiny, {jobs['steps']} steps each, "
             f"the CPU preset) done {len(jobs['ways'])} ways on {jobs['cores']} cores, interleaved within each of "
             f"{jobs['repeats']} repeats; the pair's wall time from the first launch to the last exit "
             "(start-up, validation and checkpoints included). Runs at once get cores / runs intra-op "
             "threads each (`benchmarks/evidence.py --jobs 2` does this for a whole plan).", "",
             "| way | pair wall s (per repeat) | pretraining steps per hour | x stock, one at a time | "
             "s/step of each run (BEST-RQ, BiRQ) |", "|---|---|---|---|---|"]  # fmt: skip
    for way, w in jobs["ways"].items():
        lines.append(
            f"| {way} | {w['pair_wall_s']:.0f} ({', '.join(f'{x:.0f}' for x in w['pair_wall_s_all'])}) "
            f"| {w['pretrain_steps_per_hour']:.0f} | **{w['x_stock']:.2f}x** "
            f"({', '.join(f'{x:.2f}' for x in w['x_stock_all'])}) | "
            f"{w['s_per_step']['bestrq']:.3f}, {w['s_per_step']['birq']:.3f} |"
        )
    return lines


# --- report ----------------------------------------------------------------------------


def summarise(runs: list[dict], paths: list[str]) -> dict:
    out: dict = {}
    for model in MODELS:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        row: dict = {}
        for path in paths:
            same = [r for r in mine if r["path"] == path and r["seed"] == 0]
            if not same:
                continue
            row[path] = {
                "s_per_step": statistics.mean(r["s_per_step"] for r in same),
                "s_per_step_all": [round(r["s_per_step"], 4) for r in same],
                "compute_s_per_step": statistics.mean(r["compute_s_per_step"] for r in same),
                "data_s_per_step": statistics.mean(r["data_s_per_step"] for r in same),
                "wall_s": statistics.mean(r["wall_s"] for r in same),
                "final_loss": statistics.mean(final_loss(r) for r in same),
                **({"dev_wer": statistics.mean(r["dev_wer"] for r in same)} if "dev_wer" in same[0] else {}),
            }  # fmt: skip
        noise = [r for r in mine if r["path"] == "stock" and r["seed"] == 1]
        if noise:
            row["stock_seed1"] = {
                "final_loss": final_loss(noise[0]),
                **({"dev_wer": noise[0]["dev_wer"]} if "dev_wer" in noise[0] else {}),
            }
        for path in paths[1:]:
            if path in row and "stock" in row:
                pairs = zip(
                    [r for r in mine if r["path"] == "stock" and r["seed"] == 0],
                    [r for r in mine if r["path"] == path and r["seed"] == 0],
                    strict=True,
                )
                ratios = [a["s_per_step"] / b["s_per_step"] for a, b in pairs]
                row[path]["speedup"] = statistics.mean(ratios)
                row[path]["speedup_all"] = [round(x, 3) for x in ratios]
                row[path]["wall_speedup"] = row["stock"]["wall_s"] / row[path]["wall_s"]
        out[model] = row
    return out


def step_cost_ratio(runs: list[dict], path: str) -> dict | None:
    """BiRQ's seconds per step over BEST-RQ's, from runs made back to back (same repeat)."""
    birq = [r for r in runs if r["model"] == "birq" and r["path"] == path and r["seed"] == 0]
    bestrq = [r for r in runs if r["model"] == "bestrq" and r["path"] == path and r["seed"] == 0]
    if not birq or not bestrq:
        return None
    ratios = [a["s_per_step"] / b["s_per_step"] for a, b in zip(birq, bestrq, strict=True)]
    return {"ratio": round(statistics.mean(ratios), 3), "ratios": [round(x, 3) for x in ratios],
            "birq_s_per_step": round(statistics.mean(r["s_per_step"] for r in birq), 4),
            "bestrq_s_per_step": round(statistics.mean(r["s_per_step"] for r in bestrq), 4), "path": path}  # fmt: skip


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    s, cfg = report["summary"], report["config"]
    titles = {
        "bestrq": "BEST-RQ tiny pretraining",
        "birq": "BiRQ tiny pretraining",
        "ctc": "CTC fine-tuning (tiny)",
    }
    md = [
        "# Training throughput: stock path vs fast path", "",
        f"{report['machine']}; torch {report['torch']}; {cfg['repeats']} interleaved repeats per path; "
        f"{cfg['pretrain_steps']} pretraining / {cfg['finetune_steps']} fine-tuning steps per run on "
        f"`{cfg['corpus']}` with the CPU presets (batches of 8000 padded fbank frames, validation and "
        "checkpoints included in the wall time). Seconds per step: fairseq2's lapse time per step over "
        "every publish interval but the first (data wait + compute). Generated by "
        "`benchmarks/train_throughput.py`.", "",
        "| recipe | stock s/step | fast s/step | speed-up (per repeat) | compute s/step stock -> fast | "
        "data s/step stock -> fast | run wall s stock -> fast |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for model, row in s.items():
        if "stock" not in row or "fast" not in row:
            continue
        a, b = row["stock"], row["fast"]
        md.append(
            f"| {titles[model]} | {a['s_per_step']:.3f} | {b['s_per_step']:.3f} | **{b['speedup']:.2f}x** "
            f"({', '.join(f'{x:.2f}' for x in b['speedup_all'])}) | {a['compute_s_per_step']:.3f} -> "
            f"{b['compute_s_per_step']:.3f} | {a['data_s_per_step']:.3f} -> {b['data_s_per_step']:.3f} | "
            f"{a['wall_s']:.0f} -> {b['wall_s']:.0f} ({b['wall_speedup']:.2f}x) |"
        )
    if any("fast_2ranks" in row for row in s.values()):
        md += ["", "The fast path as 2 data-parallel ranks on this machine (torchrun, 1 intra-op thread "
               "and half the preset's batch per rank, BatchNorm synchronised over the ranks: the same "
               "global batch and training function, `OMP_NUM_THREADS=1 torchrun --standalone "
               "--nproc-per-node 2 -m birq_fs2.recipes.pretrain OUT ... "
               "dataset.pipeline.max_frames_per_batch=4000`):", "",
               "| recipe | 2 ranks s/step | x stock (per repeat) | x fast, one process | "
               "final loss (stock / fast / 2 ranks) |", "|---|---|---|---|---|"]  # fmt: skip
        for model, row in s.items():
            if "fast_2ranks" in row:
                c, b = row["fast_2ranks"], row["fast"]
                md.append(
                    f"| {titles[model]} | {c['s_per_step']:.3f} | **{c['speedup']:.2f}x** "
                    f"({', '.join(f'{x:.2f}' for x in c['speedup_all'])}) | "
                    f"{b['s_per_step'] / c['s_per_step']:.2f}x | {row['stock']['final_loss']:.3f} / "
                    f"{b['final_loss']:.3f} / {c['final_loss']:.3f} |"
                )
    if any("fast_bf16" in row for row in s.values()):
        md += ["", "Not the same arithmetic (bf16 autocast, `trainer.mixed_precision.mode=auto`, torch.amp autocast), reported apart:", "",
               "| recipe | fast_bf16 s/step | x stock | final loss (stock / fast / bf16) |", "|---|---|---|---|"]  # fmt: skip
        for model, row in s.items():
            if "fast_bf16" in row:
                c = row["fast_bf16"]
                md.append(
                    f"| {titles[model]} | {c['s_per_step']:.3f} | {c['speedup']:.2f}x | "
                    f"{row['stock']['final_loss']:.3f} / {row['fast']['final_loss']:.3f} / {c['final_loss']:.3f} |"
                )
    md += ["", "## Same results", "",
           "Training loss averaged over the last 5 publish points (50 steps) of each run: the fast path "
           "against the stock path, next to the stock path with another seed (the run-to-run spread: "
           "other masks, dropout, batch order). Dropout draws a different stream on the fast path, so "
           "its runs are another draw of the same experiment, not a bit-identical copy.", "",
           "| recipe | stock (seed 0) | fast (seed 0) | stock (seed 1) | fast - stock | seed 1 - seed 0 | dev WER stock / fast / seed 1 |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for model, row in s.items():
        if "stock_seed1" not in row or "fast" not in row:
            continue
        a, b, c = (
            row["stock"]["final_loss"],
            row["fast"]["final_loss"],
            row["stock_seed1"]["final_loss"],
        )
        wer = (
            f"{row['stock']['dev_wer']:.1f} / {row['fast']['dev_wer']:.1f} / {row['stock_seed1']['dev_wer']:.1f}"
            if "dev_wer" in row["stock"] else ""
        )  # fmt: skip
        md.append(
            f"| {titles[model]} | {a:.3f} | {b:.3f} | {c:.3f} | {b - a:+.3f} | {c - a:+.3f} | {wer} |"
        )
    ratio = report.get("birq_over_bestrq")
    if ratio:
        md += ["", "## BiRQ / BEST-RQ step cost", "",
               f"Seconds per step, runs made back to back on the {ratio['path']} path: BiRQ {ratio['birq_s_per_step']:.3f}, "
               f"BEST-RQ {ratio['bestrq_s_per_step']:.3f}, ratio **{ratio['ratio']:.2f}** (per repeat: "
               f"{', '.join(f'{x:.2f}' for x in ratio['ratios'])}). `benchmarks/evidence.py` gives its equal-compute "
               "BEST-RQ arms this many times the steps."]  # fmt: skip
    if report.get("profile"):
        md += ["", "## Where one step's time goes", "",
               f"The pretraining recipe's train unit (`BirqTrainUnit`) on the preset's batches from the real pipeline, "
               f"under torch's profiler ({cfg['profile_steps']} steps after {cfg['profile_warmup']}: past the first epoch, "
               "so the fast path reads cached features). Milliseconds per step; the model's own ranges are inside forward.", "",
               "| part | " + " | ".join(f"{p['model']} {p['path']}" for p in report["profile"]) + " |",
               "|---|" + "---|" * len(report["profile"])]  # fmt: skip
        keys = ["data", "forward", "birq.masked_encoder", "birq.anchor_labels", "birq.label_generator",
                "birq.enhanced_labels_loss", "backward", "grad_norm", "optimizer"]  # fmt: skip
        for key in keys:
            cells = [
                f"{1000 * p['parts_s'][key]:.0f}" if key in p["parts_s"] else "-"
                for p in report["profile"]
            ]
            md.append(f"| {key.replace('birq.', '&nbsp;&nbsp;')} | " + " | ".join(cells) + " |")
        md.append(
            "| **step (wall)** | "
            + " | ".join(f"**{1000 * p['s_per_step']:.0f}**" for p in report["profile"])
            + " |"
        )
        for p in report["profile"]:
            md += ["", f"Top operators, {p['model']} {p['path']} (self CPU ms per step, calls per step): "
                   + ", ".join(f"`{k[6:]}` {1000 * t:.0f} ({n})" for k, t, n in p["top_ops"][:8]) + "."]  # fmt: skip
    if report.get("jobs"):
        md += jobs_lines(report["jobs"])
    if report.get("bf16"):
        md += bf16_lines(report["bf16"], s, titles)
    if report.get("notes"):
        md += ["", "## Notes", "", *report["notes"]]
    (out / "throughput.md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--corpus", type=Path, help="a corpus (default: synthesise the demo's 1 h in --work)"
    )
    parser.add_argument("--work", type=Path, default=Path("throughput-work"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/throughput")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--models", default="bestrq,birq,ctc")
    parser.add_argument(
        "--bf16", action="store_true", help="also measure the fast path with bf16 autocast"
    )
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--profile-only", action="store_true", help="redo part 2 into the existing throughput.json"
    )
    parser.add_argument(
        "--jobs-only", action="store_true",
        help="redo part 3 (runs at once) into the existing throughput.json",
    )  # fmt: skip
    parser.add_argument("--no-jobs", action="store_true")
    parser.add_argument(
        "--bf16-only", action="store_true",
        help="redo part 4 (bf16 autocast) into the existing throughput.json",
    )  # fmt: skip
    parser.add_argument(
        "--no-ranks", action="store_true", help="leave out the 2-rank torchrun path"
    )
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--profile-warmup", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a 2-minute smoke run (tests)")
    parser.add_argument("--profile-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_worker:
        model, path = args.profile_worker.split(":")
        print(
            json.dumps(
                profile_worker(args.corpus, model, path, args.profile_steps, args.profile_warmup)
            )
        )
        return 0
    if args.quick:
        args.repeats, args.pretrain_steps, args.finetune_steps = 1, 20, 20
        args.profile_steps, args.profile_warmup = 2, 1
    import torch

    corpus = args.corpus
    if corpus is None:
        corpus = args.work / "corpus"
        if not (corpus / "SPEAKERS.TXT").exists():
            hours = "0.05" if args.quick else "1"
            subprocess.run([sys.executable, "-m", "birq_fs2.cli.data", "synth", str(corpus), "--hours", hours,
                            "--seed", "0"], check=True)  # fmt: skip
    if args.jobs_only:
        report = json.loads((args.out / "throughput.json").read_text())
        report["jobs"] = measure_jobs(args.work, corpus, args.pretrain_steps, args.repeats)
        write_report(report, args.out)
        print((args.out / "throughput.md").read_text())
        return 0
    if args.bf16_only:
        report = json.loads((args.out / "throughput.json").read_text())
        steps = {"pretrain": args.pretrain_steps, "finetune": args.finetune_steps}
        report["bf16"] = measure_bf16(
            args.work, corpus, args.models.split(","), steps, args.repeats
        )
        write_report(report, args.out)
        print((args.out / "throughput.md").read_text())
        return 0
    if args.profile_only:
        report = json.loads((args.out / "throughput.json").read_text())
        report["profile"] = profile_all(corpus, args.models.split(","), args)
        report["config"].update(
            profile_steps=args.profile_steps, profile_warmup=args.profile_warmup
        )
        write_report(report, args.out)
        print((args.out / "throughput.md").read_text())
        return 0
    paths = ["stock", "fast"] + (["fast_2ranks"] if not args.no_ranks else [])
    paths += ["fast_bf16"] if args.bf16 else []
    models = args.models.split(",")
    runs = []
    for rep in range(args.repeats):
        for model in models:
            steps = args.pretrain_steps if MODELS[model][0] == "pretrain" else args.finetune_steps
            for path in paths:
                if RANKS.get(path, 1) > 1 and MODELS[model][0] == "finetune":
                    continue  # see RANKS: the fine-tuning preset's batch does not split
                runs.append(run_recipe(args.work, corpus, model, path, 0, steps, f"r{rep}"))
    for model in models:  # the run-to-run spread
        steps = args.pretrain_steps if MODELS[model][0] == "pretrain" else args.finetune_steps
        runs.append(run_recipe(args.work, corpus, model, "stock", 1, steps, "spread"))
    profile = []
    if not args.no_profile:
        for model in (m for m in models if MODELS[m][0] == "pretrain"):
            for path in ("stock", "fast"):
                profile.append(
                    profile_run(corpus, model, path, args.profile_steps, args.profile_warmup)
                )
    report = {
        "machine": f"{os.cpu_count()} CPU cores ({_cpu_name()}), CPU only",
        "torch": torch.__version__,
        "config": {
            "repeats": args.repeats,
            "pretrain_steps": args.pretrain_steps,
            "finetune_steps": args.finetune_steps,
            "corpus": str(corpus),
            "profile_steps": args.profile_steps,
            "profile_warmup": args.profile_warmup,
        },  # fmt: skip
        "summary": summarise(runs, paths),
        "birq_over_bestrq": step_cost_ratio(runs, "fast"),
        "birq_over_bestrq_stock": step_cost_ratio(runs, "stock"),
        "profile": profile,
        "runs": runs,
        "jobs": None
        if args.no_jobs
        else measure_jobs(args.work, corpus, args.pretrain_steps, args.repeats),
    }
    write_report(report, args.out)
    print((args.out / "throughput.md").read_text())
    return 0


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
