"""Why does the gradient through the labels collapse them? The gradient each path sends
into BiRQ's label generator (conformer blocks 1..label_layer), step by step.

    python benchmarks/label_grad_paths.py --corpus DIR [--steps 60] [--every 5]
        [--variants ratio1,ratio24,...] [--out benchmarks/results/label_grad_paths]

BiRQ tiny trains from scratch on the corpus's training split with the enhanced loss on
from step 1 (no BEST-RQ warm-up: the setting the collapse was reported in), a constant
Gumbel temperature and AdamW as in the `tiny_cpu` preset (lr 1e-3 after a 10-step
warm-up, gradient clipping at 10). Every `--every` steps the same batch (same mask,
dropout and Gumbel noise) goes through the model twice, with the label path open and
detached, and the gradients of the label generator's parameters are split into

    anchor      gamma * dL_anc / dtheta
    prediction  w * dL_enh / dtheta with the labels detached (the masked forward's blocks)
    labels      w * dL_enh / dtheta (label path open) minus the prediction part

(all per masked frame), reported as norms, with the cosine between the label-path and
anchor gradients, and the update AdamW would make from the label path alone relative to
the whole update (Adam normalises each parameter by its own gradient history, so a
path's norm alone understates what it does to parameters only it reaches). The noise-free
enhanced labels of the batch give the code usage. The training step itself uses the
summed loss, as the recipe does.

Writes paths.json, REPORT.md and paths.png under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Variant:
    title: str
    gamma: float = 1.0
    tau: float = 0.5
    enhanced: dict = field(default_factory=dict)


_ST = {"label_grad": "straight_through"}
VARIANTS = {
    "ratio1": Variant("straight-through, gamma 1, layer norm", 1.0, enhanced={**_ST, "label_norm": "layer"}),
    "ratio24": Variant("straight-through, gamma 24 (the paper's 2.4 / 0.1), layer norm", 24.0,
                       enhanced={**_ST, "label_norm": "layer"}),
    "ratio1_instance": Variant("straight-through, gamma 1, instance norm", 1.0,
                               enhanced={**_ST, "label_norm": "instance"}),
    "ratio24_instance": Variant("straight-through, gamma 24, instance norm", 24.0,
                                enhanced={**_ST, "label_norm": "instance"}),
    "ratio24_instance_scale0.1": Variant("gamma 24, instance norm, label_grad_scale 0.1", 24.0,
                                         enhanced={**_ST, "label_norm": "instance", "label_grad_scale": 0.1}),
    "detach_instance": Variant("detach (the default), gamma 1, instance norm", 1.0,
                               enhanced={"label_grad": "detach", "label_norm": "instance"}),
}  # fmt: skip


def _norm(grads) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


def _cos(a, b) -> float:
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))
    return dot / max(_norm(a) * _norm(b), 1e-30)


def run_variant(name: str, corpus: Path, steps: int, every: int, seed: int) -> dict:
    import torch
    import yaml

    from birq_fs2.data.corpus import load_split
    from birq_fs2.data.pipeline import DataStats, SpeechPipelineConfig, build_speech_pipeline
    from birq_fs2.experiments.runs import PRETRAIN_PRESET
    from birq_fs2.label_stats import codebook_usage
    from birq_fs2.models.config import ARCHS
    from birq_fs2.models.factory import create_birq_model
    from birq_fs2.models.label_streams import frame_label_streams
    from birq_fs2.models.model import BirqStep

    variant = VARIANTS[name]
    config = ARCHS["tiny"]()
    for key, value in variant.enhanced.items():
        setattr(config.enhanced, key, value)
    errors = config.validate().errors
    if errors:
        raise ValueError(f"{name}: {' '.join(errors)}")
    torch.manual_seed(seed)
    model = create_birq_model(config).train()
    detached_config = ARCHS["tiny"]()
    for key, value in {**variant.enhanced, "label_grad": "detach", "label_grad_scale": 1.0}.items():
        setattr(detached_config.enhanced, key, value)
    detached = create_birq_model(detached_config).train()
    generator = [
        p for n, p in model.named_parameters() if _in_label_generator(n, model.label_layer)
    ]
    gen_names = [
        n for n, _ in model.named_parameters() if _in_label_generator(n, model.label_layer)
    ]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
    )
    warmup = 10
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    preset = yaml.safe_load(PRETRAIN_PRESET.read_text())
    pipeline = build_speech_pipeline(
        load_split(corpus, "train"), SpeechPipelineConfig(**preset["dataset"]["pipeline"]),
        seed=seed, stats=DataStats(), repeat=True,
    )  # fmt: skip
    batches = iter(pipeline)
    rows = []
    started = time.perf_counter()
    for step_nr in range(1, steps + 1):
        batch = next(batches)
        seqs, layout = batch.as_input()
        step = BirqStep(gamma=variant.gamma, tau=variant.tau, seed=step_nr)
        torch.manual_seed(1000 + step_nr)  # mask and dropout of this step
        out = model(seqs, layout, step)
        n = out.num_targets
        if step_nr % every == 0 or step_nr == 1:
            anchor = torch.autograd.grad(
                variant.gamma * out.anchor_loss / n, generator, retain_graph=True
            )
            total = torch.autograd.grad(out.enhanced_loss / n, generator, retain_graph=True,
                                        allow_unused=True)  # fmt: skip
            detached.load_state_dict(model.state_dict())
            torch.manual_seed(1000 + step_nr)
            again = detached(seqs, layout, step)
            assert torch.equal(again.enhanced_labels, out.enhanced_labels)
            det_gen = dict(detached.named_parameters())
            prediction = torch.autograd.grad(
                again.enhanced_loss / n, [det_gen[k] for k in gen_names], allow_unused=True
            )
            zero = [torch.zeros_like(p) for p in generator]
            total = [t if t is not None else z for t, z in zip(total, zero, strict=True)]
            prediction = [t if t is not None else z for t, z in zip(prediction, zero, strict=True)]
            labels = [t - p for t, p in zip(total, prediction, strict=True)]
            share = _adam_share(
                optimizer, generator, labels, [a + t for a, t in zip(anchor, total, strict=True)]
            )
            with torch.no_grad():
                model.eval()
                streams = frame_label_streams(model, seqs, layout, [model.label_layer])
                model.train()
            noise_free = torch.cat([s[f"layer_{model.label_layer}"] for s in streams])
            used, ppl = codebook_usage(noise_free[:, None], config.enhanced.codebook_size)
            rows.append({
                "step": step_nr, "anchor": _norm(anchor), "prediction": _norm(prediction),
                "labels": _norm(labels), "cos_labels_anchor": _cos(labels, anchor),
                "adam_label_share": share, "noise_free_codes": used, "noise_free_perplexity": ppl,
                "anchor_loss_bits": float(out.anchor_loss) / n / math.log(2),
                "enhanced_loss_bits": float(out.enhanced_loss) / n / math.log(2),
            })  # fmt: skip
            print(f"{name} step {step_nr}: " + ", ".join(
                f"{k} {v:.3g}" for k, v in rows[-1].items() if k != "step"), file=sys.stderr, flush=True)  # fmt: skip
        (out.loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {"variant": name, "title": variant.title, "gamma": variant.gamma, "tau": variant.tau,
            "enhanced": variant.enhanced, "label_layer": model.label_layer, "rows": rows,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def _in_label_generator(name: str, label_layer: int) -> bool:
    """Blocks 1..label_layer and the front end's projection (what the label path reaches)."""
    if name.startswith("encoder_frontend."):
        return True
    if name.startswith("encoder.layers."):
        return int(name.split(".")[2]) < label_layer
    return False


def _adam_share(optimizer, params, part, whole) -> float:
    """|AdamW's update from `part` alone| / |update from `whole`|, both divided by the
    optimizer's current second-moment estimate (its per-parameter normalisation); NaN
    before the first step (Adam's first update is the gradient's sign: no share)."""

    num, den = 0.0, 0.0
    for p, a, w in zip(params, part, whole, strict=True):
        state = optimizer.state.get(p, {})
        v = state.get("exp_avg_sq")
        if v is None:
            return float("nan")
        scale = v.sqrt() + 1e-6
        num += float(((a / scale).double() ** 2).sum())
        den += float(((w / scale).double() ** 2).sum())
    return math.sqrt(num / max(den, 1e-30))


def _summary_row(r: dict) -> str:
    import statistics

    rows = r["rows"]
    floor = 0.05 * rows[0]["noise_free_perplexity"]  # the recipe's collapse_ratio
    collapsed = next((row["step"] for row in rows if row["noise_free_perplexity"] < floor), None)
    later = [row for row in rows if row["step"] > 1]
    share = statistics.median(row["adam_label_share"] for row in later) if later else float("nan")
    ratio = (
        statistics.median(row["labels"] / max(row["anchor"], 1e-12) for row in later)
        if later
        else float("nan")
    )
    return (
        f"| {r['variant']}: {r['title']} | {r['gamma']:g} | {collapsed if collapsed else 'no'} "
        f"| {rows[-1]['noise_free_codes']:.0f}, {rows[-1]['noise_free_perplexity']:.1f} "
        f"| {share:.2f} | {ratio:.2f} |"
    )


def write_report(results: list[dict], out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "paths.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# The gradient paths into BiRQ's label generator", "",
        "Per masked frame, on the label generator's parameters (front-end projection and "
        "blocks 1..label_layer), every few steps of a from-scratch BiRQ tiny run with the "
        "enhanced loss on from step 1 (benchmarks/label_grad_paths.py says how). "
        "`labels`: the enhanced loss's gradient through the labels; `prediction`: through "
        "the masked forward; `anchor`: gamma x the anchor loss's. `Adam share`: the update "
        "the label path alone makes, relative to the whole update, after AdamW's "
        "per-parameter normalisation. Noise-free codes: distinct enhanced labels of the "
        "batch's frames (of 512).", "",
        "| variant | gamma | collapsed at step (noise-free perplexity < 5 % of step 1's) | codes, perplexity at the end | median Adam share of the label path | median labels / anchor norm |",
        "|---|---|---|---|---|---|",
        *[_summary_row(r) for r in results],
        "",
        "Every measured step:",
        "",
        "| variant | step | anchor | prediction | labels | cos(labels, anchor) | Adam share | noise-free codes | perplexity | L_enh (bits) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        for row in r["rows"]:
            lines.append(
                f"| {r['variant']} | {row['step']} | {row['anchor']:.3g} | {row['prediction']:.3g} "
                f"| {row['labels']:.3g} | {row['cos_labels_anchor']:+.2f} | {row['adam_label_share']:.2f} "
                f"| {row['noise_free_codes']:.0f} | {row['noise_free_perplexity']:.1f} "
                f"| {row['enhanced_loss_bits']:.2f} |"
            )
    lines += ["", "![paths](paths.png)", "", "## Command", "", "```bash", command, "```", ""]
    walls = ", ".join(f"{r['variant']} {r['wall_s']:.0f} s" for r in results)
    lines += [f"Wall-clock (2 cores): {walls}."]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, r in enumerate(results):
        steps = [row["step"] for row in r["rows"]]
        style = dict(color=f"C{i}", markersize=3)
        axes[0].plot(
            steps,
            [row["labels"] for row in r["rows"]],
            "o-",
            label=f"{r['variant']} labels",
            **style,
        )
        axes[0].plot(
            steps,
            [row["anchor"] for row in r["rows"]],
            "x--",
            label=f"{r['variant']} anchor",
            **style,
        )
        axes[1].plot(
            steps, [row["adam_label_share"] for row in r["rows"]], "o-", label=r["variant"], **style
        )
        axes[2].plot(
            steps, [row["noise_free_codes"] for row in r["rows"]], "o-", label=r["variant"], **style
        )
    for ax, title in zip(axes, ("gradient norm per path", "label path's share of the Adam update",
                                "noise-free codes used (of 512)"), strict=True):  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "paths.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_grad_paths"
    )
    args = parser.parse_args(argv)
    command = " ".join(
        ["python benchmarks/label_grad_paths.py", *(argv if argv is not None else sys.argv[1:])]
    )
    existing = (
        json.loads((args.out / "paths.json").read_text())
        if (args.out / "paths.json").exists()
        else []
    )
    done = {r["variant"]: r for r in existing}
    results = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        # Resumable: a variant already in paths.json is kept.
        if name not in done:
            done[name] = run_variant(name, args.corpus, args.steps, args.every, args.seed)
        results.append(done[name])
        write_report(results, args.out, command)
    print(args.out / "REPORT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
