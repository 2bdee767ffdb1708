"""The collapse-cure sweep: which BiRQ variant's enhanced labels carry the most phonetic
information without collapsing? Measured against true phone alignments.

    python benchmarks/label_sweep.py [--budget quick|full] [--variants a,b,...]
        [--seeds 0] [--work DIR] [--out benchmarks/results/label_quality]

Plan: one phone-aligned synthetic corpus (`birq-data synth`, espeak-ng voices only, so
that every frame's phone comes from one phone inventory); every variant pretrains BiRQ
tiny with the project's own recipe (`birq_fs2.recipes.pretrain`, the `tiny_cpu.yaml`
preset) on the same data with the same steps and seed; the recipe logs PNMI and phone
purity of both label streams on the held-out dev speakers at every validation; at the
end `birq-labels` analyses every layer of the final encoder. BEST-RQ (`bestrq_tiny`) is
the reference for the anchor labels.

Resumable: a finished run (its last checkpoint on disk) is skipped, an interrupted one
resumes from its last checkpoint (the recipe does it), and the report is rewritten from
whatever runs exist (a run's output is in <work>/logs). Writes REPORT.md, results.json and two plots under --out; the runs
themselves stay in --work (not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birq_fs2.experiments.runs import (  # noqa: E402
    finished,
    metric_rows,
    recipe_command,
    run_command,
)
from birq_fs2.experiments.stats import mean_std  # noqa: E402
from birq_fs2.metrics import LABEL_QUALITY_METRICS, PRETRAIN_METRICS, display  # noqa: E402


@dataclass(frozen=True)
class Budget:
    hours: float
    speakers: int
    steps: int
    validate_every: int
    max_utterances: int


BUDGETS = {
    "quick": Budget(hours=0.02, speakers=6, steps=6, validate_every=3, max_utterances=20),
    "full": Budget(hours=1.0, speakers=40, steps=400, validate_every=50, max_utterances=300),
}

ENH = "model.config_overrides.enhanced"
CONV = "model.config_overrides.conv_module"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "bestrq": ("BEST-RQ (no enhanced stream)", ["model.arch=bestrq_tiny"]),
    # Spelled out, so that the sweep keeps meaning the same runs when defaults change.
    # Variant names are the first spellings of label_grad (st, stop); results refer to them.
    "birq": (
        "BiRQ as first built (label_grad straight_through, label_norm layer)",
        [f"{ENH}.label_grad=straight_through", f"{ENH}.label_norm=layer"],
    ),
    "stop": ("label_grad: detach", [f"{ENH}.label_grad=detach", f"{ENH}.label_norm=layer"]),
    "instance": (
        "label_norm: instance",
        [f"{ENH}.label_grad=straight_through", f"{ENH}.label_norm=instance"],
    ),
    "stop_instance": (
        "label_grad: detach + label_norm: instance",
        [f"{ENH}.label_grad=detach", f"{ENH}.label_norm=instance"],
    ),
    "warmup": (
        "enhanced-loss warm-up over 25 % of the steps",
        [
            "schedule.enhanced_warmup_steps={quarter}",
            f"{ENH}.label_grad=straight_through",
            f"{ENH}.label_norm=layer",
        ],
    ),
    "masked": (
        "label_input: masked",
        [f"{ENH}.label_input=masked", f"{ENH}.label_grad=straight_through"],
    ),
    "diversity": (
        "diversity_weight 0.1",
        [f"{ENH}.diversity_weight=0.1", f"{ENH}.label_grad=straight_through"],
    ),
    "instance_diversity": (
        "label_norm: instance + diversity_weight 0.1",
        [
            f"{ENH}.label_norm=instance",
            f"{ENH}.diversity_weight=0.1",
            f"{ENH}.label_grad=straight_through",
        ],
    ),
    # The convolution module's norm (model.conv_module), on today's default BiRQ.
    "ln_conv": (
        "detach + instance, conv_module layer_norm (centred)",
        [f"{ENH}.label_grad=detach", f"{ENH}.label_norm=instance", f"{CONV}.norm=layer_norm"],
    ),
    "ln_conv_causal": (
        "detach + instance, conv_module layer_norm causal (w2v-BERT 2.0's, exports to HF)",
        [
            f"{ENH}.label_grad=detach",
            f"{ENH}.label_norm=instance",
            f"{CONV}.norm=layer_norm",
            f"{CONV}.causal=true",
        ],
    ),
    # BiRQ's own mechanism (the gradient through the labels), at the paper's settings and
    # with that gradient scaled down (enhanced.label_grad_scale).
    "paper": ("the paper's settings (paper_tiny_cpu.yaml)", []),
    "paper_scale0.1": (
        "the paper's settings, label_grad_scale 0.1",
        [f"{ENH}.label_grad_scale=0.1"],
    ),
    "paper_scale0.01": (
        "the paper's settings, label_grad_scale 0.01",
        [f"{ENH}.label_grad_scale=0.01"],
    ),
    "st_scale0.1": (
        "straight_through, label_grad_scale 0.1, instance norm",
        [
            f"{ENH}.label_grad=straight_through",
            f"{ENH}.label_grad_scale=0.1",
            f"{ENH}.label_norm=instance",
        ],
    ),  # fmt: skip
    "st_scale0.01": (
        "straight_through, label_grad_scale 0.01, instance norm",
        [
            f"{ENH}.label_grad=straight_through",
            f"{ENH}.label_grad_scale=0.01",
            f"{ENH}.label_norm=instance",
        ],
    ),  # fmt: skip
    "depth75": (
        "detach + instance, label_layer 3 of 4 (75 %)",
        [f"{ENH}.label_grad=detach", f"{ENH}.label_norm=instance", f"{ENH}.label_layer=3"],
    ),
}
PRESETS = {v: "paper_tiny_cpu.yaml" for v in ("paper", "paper_scale0.1", "paper_scale0.01")}
"""Variants that start from another preset than tiny_cpu.yaml."""


def ensure_corpus(work: Path, budget: Budget) -> Path:
    from birq_fs2.data.synth import synthesize_corpus

    corpus = work / "corpus"
    if not (corpus / "SPEAKERS.TXT").exists():
        synthesize_corpus(
            corpus, hours=budget.hours, num_speakers=budget.speakers, seed=0, use_flite=False
        )
    return corpus


def run_dir(work: Path, variant: str, seed: int) -> Path:
    return work / "runs" / f"{variant}-s{seed}"


def pretrain(work: Path, corpus: Path, run: Path, variant: str, seed: int, budget: Budget) -> float:
    """Runs (or resumes) one variant, its output in <work>/logs; returns the wall-clock
    seconds of this call."""
    overrides = [o.format(quarter=max(1, budget.steps // 4)) for o in VARIANTS[variant][1]]
    cmd = recipe_command(
        "pretrain", run, corpus, f"common.seed={seed}",
        f"regime.num_steps={budget.steps}", f"regime.validate_every_n_steps={budget.validate_every}",
        f"regime.checkpoint_every_n_steps={budget.validate_every}",
        f"lr_scheduler.config.num_warmup_steps={max(1, budget.steps // 10)}",
        "regime.publish_metrics_every_n_steps=" + str(max(1, budget.validate_every // 5)),
        *overrides, preset=PRESETS.get(variant),
    )  # fmt: skip
    log = work / "logs" / f"pretrain-{run.name}.log"
    return run_command(cmd, log, f"pretraining {run.name}", tag="label_quality")


def analyse(run: Path, corpus: Path, budget: Budget) -> dict:
    out = run / "labels"
    if (out / "labels.json").exists():
        return json.loads((out / "labels.json").read_text())
    from birq_fs2.cli.labels import analyse as layer_analysis

    return layer_analysis(
        str(run), corpus, "dev", max_utterances=budget.max_utterances, out_dir=out
    )


def summarize(run: Path, variant: str, seed: int, layers: dict | None) -> dict:
    valid = metric_rows(run, "valid")
    train = metric_rows(run, "train")

    def curve(rows: list[dict], key: str, table=PRETRAIN_METRICS) -> list[tuple[int, float]]:
        name = display(key, table)
        return [(r["Step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]

    last = valid[-1] if valid else {}
    q = LABEL_QUALITY_METRICS

    def final(key: str, table=PRETRAIN_METRICS):
        return last.get(display(key, table))

    anchor_ppl, enhanced_ppl = final("anchor_perplexity"), final("enhanced_perplexity")
    noise_free_ppl = final("enhanced_noise_free_perplexity", q)
    return {
        "variant": variant,
        "seed": seed,
        "step": last.get("Step"),
        "anchor_pnmi": final("anchor_pnmi", q),
        "enhanced_pnmi": final("enhanced_pnmi", q),
        "anchor_phone_purity": final("anchor_phone_purity", q),
        "enhanced_phone_purity": final("enhanced_phone_purity", q),
        "anchor_perplexity": anchor_ppl,
        "enhanced_perplexity": enhanced_ppl,
        "perplexity_ratio": (enhanced_ppl / anchor_ppl) if anchor_ppl and enhanced_ppl else None,
        "enhanced_noise_free_perplexity": noise_free_ppl,
        "noise_free_ratio": (noise_free_ppl / anchor_ppl)
        if anchor_ppl and noise_free_ppl
        else None,
        "anchor_loss": final("anchor_loss"),
        "enhanced_loss": final("enhanced_loss"),
        "curves": {
            "enhanced_pnmi": curve(valid, "enhanced_pnmi", q),
            "anchor_pnmi": curve(valid, "anchor_pnmi", q),
            "enhanced_perplexity": curve(train, "enhanced_perplexity"),
            "anchor_perplexity": curve(train, "anchor_perplexity"),
        },
        "layers": layers["streams"] if layers else None,
        "label_layer": layers["label_layer"] if layers else None,
    }


def _fmt(v, spec=".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def write_report(
    rows: list[dict], out: Path, budget_name: str, budget: Budget, walls: dict
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(
        json.dumps(
            {
                "budget": budget_name,
                **budget.__dict__,
                "runs": rows,
                "wall_s": walls,
                "selected": select_default(rows),
            },
            indent=2,
        )  # fmt: skip
        + "\n"
    )
    _plots(rows, out)
    lines = [
        "# Enhanced-label quality: the collapse-cure sweep",
        "",
        f"Budget `{budget_name}`: BiRQ tiny, {budget.steps} pretraining steps (refine start at "
        f"10 %; the paper variants: from step 1, their preset's schedule), one synthetic corpus of {budget.hours} h (espeak-ng voices, {budget.speakers} "
        "speakers), validation on the held-out dev speakers every "
        f"{budget.validate_every} steps. Same data, steps and seed for every variant.",
        "",
        "PNMI and phone purity: labels of every 40 ms frame of the unmasked dev utterances "
        "against their true phones (HuBERT's definitions, `birq_fs2/label_stats.py`); the "
        "enhanced stream is the noise-free enhanced quantizer on the label layer. Perplexity: "
        "of the labels of the masked frames in training (exp of the code entropy, of 512); "
        "ratio = enhanced / anchor (collapse below 0.05).",
        "",
        "| variant | seed | step | enhanced PNMI | anchor PNMI | label layer: PNMI above chance | enhanced phone purity | enhanced ppl | noise-free ppl | anchor ppl | ratio | best layer (PNMI) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = "-"
        if r["layers"]:
            layer_rows = {k: v for k, v in r["layers"].items() if k.startswith("layer_")}
            name, q = max(layer_rows.items(), key=lambda kv: kv[1]["pnmi"])
            best = f"{name.split('_')[1]} ({q['pnmi']:.3f})"
        lines.append(
            f"| {VARIANTS[r['variant']][0]} | {r['seed']} | {r['step']} | {_fmt(r['enhanced_pnmi'])} "
            f"| {_fmt(r['anchor_pnmi'])} | {_above_chance(r)} | {_fmt(r['enhanced_phone_purity'])} "
            f"| {_fmt(r['enhanced_perplexity'], '.1f')} "
            f"| {_fmt(r.get('enhanced_noise_free_perplexity'), '.1f')} "
            f"| {_fmt(r['anchor_perplexity'], '.1f')} "
            f"| {_fmt(r['perplexity_ratio'], '.2f')} | {best} |"
        )
    lines += ["", *_over_seeds(rows), "", *_reading(rows), ""]
    lines += ["## Every layer of the final encoders (birq-labels, dev)", "",
              "PNMI of the RPQ labels of each conformer block's output (chance level in "
              "parentheses); `anchor` is the input's.", "",
              "| variant | seed | anchor | " + " | ".join(f"block {i}" for i in _layers(rows)) + " |",
              "|---|---|---|" + "---|" * len(_layers(rows))]  # fmt: skip
    for r in rows:
        if not r["layers"]:
            continue
        cells = [f"{q['pnmi']:.3f} ({q['chance_pnmi']:.3f})" for q in r["layers"].values()]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![PNMI against step](pnmi.png)",
        "",
        "![perplexity against step](perplexity.png)",
        "",
    ]
    command = " ".join(["python benchmarks/label_sweep.py", *sys.argv[1:]])
    lines += ["## Commands", "", "```bash", command, "```", "",
              "Wall-clock seconds per run (2 cores): "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(walls.items())), ""]  # fmt: skip
    (out / "REPORT.md").write_text("\n".join(lines))


def _over_seeds(rows: list[dict]) -> list[str]:
    """The headline: per variant, mean and sd over its seeds of PNMI above chance at the
    label layer (and of the recipe's enhanced PNMI), and how many runs collapsed."""
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        if r["enhanced_pnmi"] is not None:
            by_variant.setdefault(r["variant"], []).append(r)

    def pm(values: list[float]) -> str:
        if not values:
            return "-"
        mean, sd = mean_std(values)
        return f"{mean:.3f}" + (f" +- {sd:.3f}" if sd is not None else "")

    lines = ["Over seeds (mean +- sd):", "",
             "| variant | seeds | label layer: PNMI above chance | enhanced PNMI | collapsed runs |",
             "|---|---|---|---|---|"]  # fmt: skip
    for variant, rs in by_variant.items():
        above = [x for x in map(_label_layer_above_chance, rs) if x is not None]
        lines.append(
            f"| {variant} | {len(rs)} | {pm(above)} | {pm([r['enhanced_pnmi'] for r in rs])} "
            f"| {sum(_collapsed(r) for r in rs)} |"
        )
    return lines


def _label_layer_above_chance(r: dict) -> float | None:
    """PNMI minus the chance PNMI of the same labels shuffled (birq-labels' estimate of
    the plug-in bias) at the run's label layer: the number to compare runs by (None for
    BEST-RQ and runs without a layer analysis)."""
    if not r["layers"] or r["label_layer"] is None:
        return None
    q = r["layers"][f"layer_{r['label_layer']}"]
    return q["pnmi"] - q["chance_pnmi"]


def _above_chance(r: dict) -> str:
    above = _label_layer_above_chance(r)
    return "-" if above is None else f"{above:.3f} (block {r['label_layer']})"


def _layers(rows: list[dict]) -> list[int]:
    for r in rows:
        if r["layers"]:
            return [int(k.split("_")[1]) for k in r["layers"] if k.startswith("layer_")]
    return []


COLLAPSE_RATIO = 0.05


def _collapsed(r: dict) -> bool:
    """Either reading of the collapse guard below COLLAPSE_RATIO of the anchor's: the
    training labels' sampled perplexity, or the noise-free labels' at the last validation
    (runs before that metric existed have only the first)."""
    if r["perplexity_ratio"] is None:  # no enhanced perplexity recorded at all
        return True
    noise_free = r.get("noise_free_ratio")
    return r["perplexity_ratio"] < COLLAPSE_RATIO or (
        noise_free is not None and noise_free < COLLAPSE_RATIO
    )


def select_default(rows: list[dict]) -> dict | None:
    """The issue's rule: among the BiRQ variants whose enhanced perplexity stays at least
    COLLAPSE_RATIO of the anchor's, the one whose enhanced labels end with the highest
    PNMI (mean over seeds); None when every variant collapsed."""
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        if r["enhanced_pnmi"] is not None:
            by_variant.setdefault(r["variant"], []).append(r)
    healthy = {v: rs for v, rs in by_variant.items() if not any(_collapsed(r) for r in rs)}
    if not healthy:
        return None
    mean = {v: sum(r["enhanced_pnmi"] for r in rs) / len(rs) for v, rs in healthy.items()}
    best = max(mean, key=mean.get)
    return {"variant": best, "enhanced_pnmi": mean[best], "runs": len(healthy[best])}


def _reading(rows: list[dict]) -> list[str]:
    birq = [r for r in rows if r["enhanced_pnmi"] is not None]
    if not birq:
        return []
    collapsed = [r for r in birq if _collapsed(r)]
    anchor = max((r["anchor_pnmi"] or 0) for r in rows)
    best = select_default(rows)
    text = (
        f"**Reading.** {len(collapsed)} of {len(birq)} BiRQ runs collapsed (enhanced code "
        f"perplexity, sampled in training or noise-free at the last validation, below "
        f"{COLLAPSE_RATIO} of the anchor's at the end). "
    )
    if best is None:
        text += "No variant kept its enhanced labels alive: the defaults stay as they were."
    else:
        beats = best["enhanced_pnmi"] > anchor
        text += (
            f"By the rule (highest final enhanced PNMI among the runs that did not collapse) "
            f"the best variant is `{best['variant']}` with PNMI {best['enhanced_pnmi']:.3f}, "
            f"{'above' if beats else 'below'} the anchor labels' {anchor:.3f}."
        )
    hidden = [
        r["variant"] for r in birq
        if r not in collapsed and r["layers"] and r["label_layer"]
        and r["layers"][f"layer_{r['label_layer']}"]["codes_used"] <= 2
    ]  # fmt: skip
    if hidden:
        text += (
            f" Beware the sampled perplexity: {', '.join(hidden)} kept it above the threshold "
            "only through the Gumbel noise; its noise-free labels use at most 2 codes (layer "
            "table below)."
        )
    return [text]


def _plots(rows: list[dict], out: Path) -> None:
    from birq_fs2.experiments.plots import plot_panels

    def lines_of(key: str) -> list:
        return [(f"{r['variant']} s{r['seed']}", "o-", r["curves"][key]) for r in rows]

    plot_panels(
        [("Enhanced PNMI (dev)", lines_of("enhanced_pnmi")),
         ("Anchor PNMI (dev)", lines_of("anchor_pnmi"))], out / "pnmi.png", "step",
    )  # fmt: skip
    plot_panels(
        [("Enhanced code perplexity (train)", lines_of("enhanced_perplexity")),
         ("Anchor code perplexity (train)", lines_of("anchor_perplexity"))],
        out / "perplexity.png", "step",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0", help="seeds of every variant")
    parser.add_argument("--finalists", default="", help="variants that get --finalist-seeds too")
    parser.add_argument("--finalist-seeds", default="", help="extra seeds of the finalists")
    parser.add_argument(
        "--work", type=Path, help="runs and corpus (default: label-quality-<budget>/)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_quality"
    )
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    work = args.work or ROOT / f"label-quality-{args.budget}"
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    finalists = [v for v in args.finalists.split(",") if v]
    extra_seeds = [int(s) for s in args.finalist_seeds.split(",") if s]
    if any(v not in variants for v in finalists):
        parser.error("--finalists must be among --variants")
    plan = [(v, seed) for seed in seeds for v in variants]
    plan += [(v, seed) for seed in extra_seeds for v in finalists if (v, seed) not in plan]
    corpus = ensure_corpus(work, budget)
    previous = args.out / "results.json"
    walls = json.loads(previous.read_text()).get("wall_s", {}) if previous.exists() else {}
    rows = []
    for variant, seed in plan:
        run = run_dir(work, variant, seed)
        if not finished(run, budget.steps):
            walls[run.name] = round(pretrain(work, corpus, run, variant, seed, budget), 1)
        layers = analyse(run, corpus, budget)
        rows.append(summarize(run, variant, seed, layers))
        write_report(rows, args.out, args.budget, budget, walls)  # after every run
        print(f"label_quality: {run.name} done", file=sys.stderr, flush=True)
    print(args.out / "REPORT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
