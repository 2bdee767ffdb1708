"""The evidence's report: results.json, REPORT.md and two plots from the collected runs
and their statistics (benchmarks/evidence.py collects them and calls `write_report`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from evidence_plan import (
    ARMS,
    CURVE_STEP_COST,
    CURVES,
    SUBSET_SEED,
    Budget,
    arm_pretrain_steps,
    step_seconds,
)

from birq_fs2.experiments.stats import interval_sign, mean_std


def write_report(
    out: Path, budget_name: str, budget: Budget, meta: dict, results: dict, stats: dict,
    test_sets: list[str],
) -> None:  # fmt: skip
    """results.json (the plan, the runs and their statistics), the plots and REPORT.md."""
    out.mkdir(parents=True, exist_ok=True)
    arms = {a: _arm_summary(a, budget, meta) for a in stats["per_arm"]}
    payload = {"budget": budget_name, **asdict(budget), **meta, "arms": arms, **results, **stats}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    main_set = test_sets[0]
    _plots(results, stats, out, main_set)
    lines = [
        *_intro(budget_name, budget, meta),
        *_cost_lines(budget, meta, stats),
        *_arm_table(results, stats, main_set),
        *_other_sets_table(stats, test_sets),
        *(line for s in test_sets for line in _differences(stats["comparisons"].get(s, {}), s)),
        *phone_probe_section(stats),
        *compute_curve(results, stats, main_set, out, meta),
        *error_section(results, stats, main_set),
        *probe_section(results, stats, main_set),
        "## Reading", "", *reading(stats, main_set), *yardsticks(stats, main_set), "",
        *_closing(results, meta),
    ]  # fmt: skip
    (out / "REPORT.md").write_text("\n".join(lines))


def _arm_summary(arm: str, budget: Budget, meta: dict) -> dict:
    spec = ARMS[arm]
    steps = arm_pretrain_steps(spec.encoder_of or arm, budget, meta)
    return {"title": spec.title, "probe": spec.probe, "baseline": spec.baseline,
            "pretrain_steps": steps if spec.pretrained else 0}  # fmt: skip


def _intro(budget_name: str, budget: Budget, meta: dict) -> list[str]:
    return [
        "# The evidence: BiRQ vs BEST-RQ vs no pretraining",
        "",
        f"Budget `{budget_name}`. Pretraining: tiny encoders (`tiny_cpu.yaml`), "
        f"{budget.pretrain_steps} steps (`*_long` arms: 3x; each arm's count is in the table) "
        f"on all {meta['train_hours']:.2f} h of unlabelled training audio. Fine-tuning: CTC (`tiny_cpu.yaml`), {budget.finetune_steps} steps on "
        f"the same {meta['labelled_minutes']:.1f} minutes of labelled utterances for every arm "
        f"and seed (dataset.train_fraction {meta['labelled_fraction']:.4f}, subset seed "
        f"{SUBSET_SEED}); the checkpoint with the best dev WER is exported and scored on the "
        "held-out test speakers. Seeds vary the pretraining and the fine-tuning both.",
        "",
        *_own_labelled(budget, meta),
    ]


def _own_labelled(budget: Budget, meta: dict) -> list[str]:
    """Arms fine-tuned on another labelled size (the second point of the low-label curve)."""
    groups: dict[tuple, list[str]] = {}
    for arm, v in (meta.get("labelled_by_arm") or {}).items():
        steps = round(budget.finetune_steps * ARMS[arm].finetune_scale)
        groups.setdefault((round(v["minutes"], 1), round(v["fraction"], 4), steps), []).append(arm)
    return [
        f"Second labelled size: {minutes:.1f} minutes (dataset.train_fraction {fraction:.4f}, "
        f"the same subset seed), {steps} fine-tuning steps: "
        + ", ".join(f"`{a}`" for a in arms)
        + ".\n"
        for (minutes, fraction, steps), arms in groups.items()
    ]


def _cost_lines(budget: Budget, meta: dict, stats: dict) -> list[str]:
    """How equal compute was set: the step-cost ratio, where it comes from, and the steps;
    one paragraph for BiRQ's defaults and one per other BiRQ form with an equal-compute arm."""
    lines = []
    for form, cost in [(None, meta.get("equal_cost")), *meta.get("equal_cost_of", {}).items()]:
        arms = [a for a in stats["per_arm"] if ARMS[a].equal_cost
                and (ARMS[a].cost_of or (None,))[0] == form]  # fmt: skip
        if not cost or (form is not None and not arms):
            continue
        if cost["measured_on"].startswith("seed"):
            source = f"on this machine in this plan's {cost['measured_on']} runs, fairseq2's Compute Time); "
        else:
            source = f"{cost['measured_on']}); "
        steps = ", ".join(
            f"`{a}` pretrains BEST-RQ for {arm_pretrain_steps(a, budget, meta)} steps" for a in arms
        )
        if form is None:
            head = "Equal compute: BiRQ's training step cost"
            base = "BEST-RQ's"
        else:
            head = f"Equal compute to `{form}`: its training step cost"
            base = f"`{cost['arms'][1]}`'s"
        lines += [
            f"{head} {cost['birq_s_per_step']:.3f} s against {base} "
            f"{cost['bestrq_s_per_step']:.3f} s (ratio {cost['ratio']:.2f}, measured "
            + source + steps + ".",
            "",
        ]  # fmt: skip
    return lines


def _arm_table(results: dict, stats: dict, test_set: str) -> list[str]:
    """The comparison arms (not the probes) on the main test set, with label quality."""
    lines = [f"## Test WER / CER ({test_set})", "",
             "| arm | seeds | pretraining steps | dev WER % | test WER % | test CER % | WER per seed | "
             "anchor PNMI | enhanced PNMI | enhanced ppl (noise-free) | best block PNMI |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, by_set in stats["per_arm"].items():
        if not ARMS[arm].probe:
            lines.append(_arm_row(results, arm, by_set[test_set]))
    return [*lines, "", "Mean ± standard deviation over seeds. PNMI: the pretrained encoder's labels "
            "of every dev frame against the true phones (the recipe's last validation; "
            "`best block`: birq-labels' best conformer block per seed).", ""]  # fmt: skip


def _arm_row(results: dict, arm: str, a: dict) -> str:
    pre = [r["pretrain"] for r in results["runs"] if r["arm"] == arm and r["pretrain"]]

    def mean_of(key: str) -> str:
        vals = [p[key] for p in pre if isinstance(p.get(key), (int, float))]
        return _fmt(sum(vals) / len(vals)) if vals else "-"

    best = [p["best_layer"] for p in pre if p.get("best_layer")]
    best_txt = ", ".join(f"{b['pnmi']:.3f} (block {b['block']})" for b in best) if best else "-"
    ppl = [p["enhanced_noise_free_perplexity"] for p in pre
           if isinstance(p.get("enhanced_noise_free_perplexity"), (int, float))]  # fmt: skip
    steps = sorted({p["steps"] for p in pre if p.get("steps")})
    return (
        f"| {ARMS[arm].title} (`{arm}`) | {len(a['seeds'])} | "
        f"{', '.join(map(str, steps)) or 0} | {_dev_best(results, arm)[0]} | "
        f"{_pm(a['wer'], a['wer_std'])} | "
        f"{_pm(a['cer'], a['cer_std'])} | {', '.join(f'{w:.1f}' for w in a['wer_per_seed'])} | "
        f"{mean_of('anchor_pnmi')} | {mean_of('enhanced_pnmi')} | "
        f"{_fmt(sum(ppl) / len(ppl), '.1f') if ppl else '-'} | {best_txt} |"
    )


def _other_sets_table(stats: dict, test_sets: list[str]) -> list[str]:
    """Every arm on the --eval-data test sets."""
    if len(test_sets) < 2:
        return []
    lines = ["## Other test sets (--eval-data)", "",
             "| arm | " + " | ".join(f"{s} WER % | {s} CER %" for s in test_sets[1:]) + " |",
             "|---|" + "---|---|" * (len(test_sets) - 1)]  # fmt: skip
    for arm, by_set in stats["per_arm"].items():
        cells = [f"{_pm(by_set[s]['wer'], by_set[s]['wer_std'])} | "
                 f"{_pm(by_set[s]['cer'], by_set[s]['cer_std'])}" for s in test_sets[1:]]  # fmt: skip
        lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _differences(comps: dict, test_set: str) -> list[str]:
    """The paired differences of every comparison measured on `test_set`."""
    if not comps:
        return []
    lines = [f"## Paired differences ({test_set})", "",
             "| comparison | seeds | WER diff (points) | relative | 95 % CI | CER diff | 95 % CI | "
             "WER diff per seed | WER 95 % CI over seeds |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, c in comps.items():
        lines.append(
            f"| {key} | {len(c['seeds'])} | {c['wer_diff']:+.2f} | {c['wer_relative']:+.1%} | "
            f"[{c['wer_ci95'][0]:+.2f}, {c['wer_ci95'][1]:+.2f}] | {c['cer_diff']:+.2f} | "
            f"[{c['cer_ci95'][0]:+.2f}, {c['cer_ci95'][1]:+.2f}] | "
            f"{', '.join(f'{d:+.1f}' for d in c['wer_diff_per_seed'])} | "
            + (f"[{c['wer_seed_ci95'][0]:+.1f}, {c['wer_seed_ci95'][1]:+.1f}] |"
               if c.get("wer_seed_ci95") else "- |")
        )  # fmt: skip
    return [*lines, "", "Negative = the first arm has fewer errors. CI: 95 % percentile "
            "bootstrap over test utterances (2000 resamples) of the mean over seeds (the "
            "test set's sampling); over seeds: Student t-interval of the per-seed "
            "differences (the spread of training runs).", ""]  # fmt: skip


def _closing(results: dict, meta: dict) -> list[str]:
    """The plots, the commands that produced the runs and their wall-clock times."""
    return ["![dev WER against fine-tuning step](dev_wer.png)", "",
            "![test WER per arm](test_wer.png)", "", "## Commands", "", "```bash",
            *(" ".join(["python benchmarks/evidence.py", *argv])
              for argv in meta.get("commands") or [meta["argv"]]),
            *probe_command(results, meta),
            "```", "",
            "Wall-clock seconds per run (this machine): "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(meta["wall_s"].items())), ""]  # fmt: skip


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"


def phone_probe_section(stats: dict) -> list[str]:
    """The frozen encoders' phone probes (birq-probe) per arm, the floors, and the paired
    differences with both intervals."""
    probes = stats.get("probes") or {}
    if not probes.get("per_arm"):
        return []
    lines = ["## Phone probes of the frozen pretrained encoders", "",
             "`birq-probe` on each pretrained encoder (before fine-tuning): a linear phone "
             "classifier per block (test frame accuracy of the block chosen on dev) and a "
             "SUPERB-style phone recogniser (softmax-weighted sum of the blocks, a linear layer, "
             "CTC; test PER), trained on the train speakers' aligned utterances, chosen on dev, "
             "scored on the test speakers; 39 CMU phones and silence. Floors: the same "
             "architecture freshly initialised (per seed) and the stacked log-mel input.", "",
             "| encoder | seeds | best block per seed | frame accuracy % | PER % | "
             "frame accuracy per seed | PER per seed | frame accuracy % at the label layer |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, a in probes["per_arm"].items():
        lines.append(
            f"| `{arm}` | {len(a['seeds'])} | {', '.join(b.replace('block_', '') for b in a['best_layer_per_seed'])} "
            f"| {_pm(a['frame_accuracy'], a['frame_accuracy_std'])} | {_pm(a['per'], a['per_std'])} "
            f"| {', '.join(f'{v:.1f}' for v in a['frame_accuracy_per_seed'])} "
            f"| {', '.join(f'{v:.1f}' for v in a['per_per_seed'])} "
            + (f"| {_pm(a['label_layer_accuracy'], a['label_layer_accuracy_std'])} |"
               if "label_layer_accuracy" in a else "| - |")
        )  # fmt: skip
    for name, f in probes["floors"].items():
        title = {
            "random": "random initialisation (floor)",
            "fbank": "stacked log-mel input (floor)",
        }
        lines.append(
            f"| {title.get(name, name)} | {f['seeds']} | - | {_pm(f['frame_accuracy'], f['frame_accuracy_std'])} "
            f"| {_pm(f['per'], f['per_std'])} | - | - | - |"
        )  # fmt: skip
    lines += ["", "Mean ± standard deviation over seeds.", ""]
    if probes["comparisons"]:
        lines += ["### Paired differences, phone probes", "",
                  "| comparison | seeds | frame accuracy diff (points) | 95 % CI (utterances) | "
                  "95 % CI (seeds) | PER diff (points) | 95 % CI (utterances) | 95 % CI (seeds) |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, c in probes["comparisons"].items():
            lines.append(
                f"| {key} | {len(c['seeds'])} | {c['frame_accuracy_diff']:+.2f} | {_ci(c['frame_accuracy_ci95'])} "
                f"| {_ci(c['frame_accuracy_seed_ci95'])} | {c['per_diff']:+.2f} | {_ci(c['per_ci95'])} "
                f"| {_ci(c['per_seed_ci95'])} |"
            )  # fmt: skip
        lines += ["", "Positive frame accuracy and negative PER = the first arm's representation "
                  "is better. Intervals as for WER above.", ""]  # fmt: skip
    return lines


def curve_points(
    results: dict, stats: dict, test_set: str, meta: dict
) -> tuple[dict[str, list[dict]], bool]:
    """Per line of CURVES, the arms that have runs, in order: pretraining steps, compute
    in CPU hours, test WER and the probes' PER and frame accuracy, each as mean and sd over
    seeds; and whether compute is priced by the plan's side-by-side step costs (steps x
    the method's measured seconds per step: the same price whatever else shared the cores
    with a run, as under --jobs) rather than by each run's own timer (when some line's
    method was not measured in this plan)."""
    probes = (stats.get("probes") or {}).get("per_arm", {})
    priced = {line: step_seconds(CURVE_STEP_COST[line], meta) for line in CURVES}
    used = [line for line, arms in CURVES.items() if any(r["arm"] in arms for r in results["runs"])]
    side_by_side = all(priced[line] is not None for line in used)
    curves: dict[str, list[dict]] = {}
    for line, arms in CURVES.items():
        for arm in arms:
            runs = [r for r in results["runs"] if r["arm"] == arm and r["pretrain"]]
            if not runs:
                continue
            hours = [
                r["pretrain"]["steps"]
                * (priced[line] if side_by_side else r["pretrain"]["compute_s_per_step"])
                / 3600
                for r in runs
            ]
            wer = stats["per_arm"][arm][test_set]
            point = {"arm": arm, "steps": runs[0]["pretrain"]["steps"], "seeds": len(runs),
                     "compute_h": mean_std(hours)[0], "wer": wer["wer"], "wer_std": wer["wer_std"]}  # fmt: skip
            if arm in probes:
                point.update(
                    {
                        k: probes[arm][k]
                        for k in ("per", "per_std", "frame_accuracy", "frame_accuracy_std")
                    }
                )
            curves.setdefault(line, []).append(point)
    return curves, side_by_side


def compute_curve(results: dict, stats: dict, test_set: str, out: Path, meta: dict) -> list[str]:
    """Quality against pretraining compute (a table and compute_curve.png) once some line
    has two lengths."""
    curves, side_by_side = curve_points(results, stats, test_set, meta)
    if not any(len(points) > 1 for points in curves.values()):
        return []
    _plot_curve(curves, out / "compute_curve.png", test_set)
    priced = (
        "its steps x its method's seconds per step as this plan measured them side by side "
        "(plan.json: BEST-RQ and BiRQ's step costs, and each other form's ratio to BEST-RQ), so "
        "a run that shared the cores with another runner costs what it would alone"
        if side_by_side
        else "its steps x its own fairseq2 Compute Time per step (data loading and validation "
        "left out)"
    )
    lines = ["## Quality against pretraining compute", "",
             f"Each arm's pretraining compute: {priced}; CPU hours on this machine, mean over seeds.",
             "", "| method | arm | steps | compute (CPU h) | seeds | test WER % | probe PER % | "
             "probe frame accuracy % |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for line, points in curves.items():
        for q in points:
            probe = (f"{_pm(q['per'], q['per_std'])} | {_pm(q['frame_accuracy'], q['frame_accuracy_std'])}"
                     if "per" in q else "- | -")  # fmt: skip
            lines.append(f"| {line} | `{q['arm']}` | {q['steps']} | {q['compute_h']:.3g} | {q['seeds']} "
                         f"| {_pm(q['wer'], q['wer_std'])} | {probe} |")  # fmt: skip
    return [*lines, "", *equivalent_compute_lines(curves),
            "![quality against pretraining compute](compute_curve.png)", ""]  # fmt: skip


BESTRQ_LINES = ("BEST-RQ", "BEST-RQ, equal compute")
"""The curve's BEST-RQ lines: one method at every length they hold together."""


def bestrq_compute_for(
    curves: dict[str, list[dict]], key: str, target: float
) -> tuple[str, float] | None:
    """The least pretraining compute at which BEST-RQ's mean reaches `target` on `key`
    (lower is better: "per" or "wer"), linear in log compute between its measured points
    (both BEST-RQ lines pooled, sorted by compute): ("=", hours) at the first crossing;
    ("<=", cheapest) when its cheapest point is already as good; (">", dearest) when no
    point is; None without BEST-RQ points."""
    import math

    pts = sorted(
        (q["compute_h"], q[key]) for line in BESTRQ_LINES for q in curves.get(line, []) if key in q
    )
    if not pts:
        return None
    if pts[0][1] <= target:
        return ("<=", pts[0][0])
    for (c0, v0), (c1, v1) in zip(pts, pts[1:], strict=False):
        if v1 <= target < v0:
            t = (v0 - target) / (v0 - v1)
            return ("=", math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0))))
    return (">", pts[-1][0])


def equivalent_compute_lines(curves: dict[str, list[dict]]) -> list[str]:
    """BiRQ's efficiency in the paper's terms: for each BiRQ point, the compute BEST-RQ
    needs for the same probe PER (and test WER), as a multiple of BiRQ's own compute."""
    birq = curves.get("BiRQ (defaults)", [])
    rows = []
    for q in birq:
        cells = []
        for key in ("per", "wer"):
            if key not in q:
                cells.append("-")
                continue
            found = bestrq_compute_for(curves, key, q[key])
            if found is None:
                cells.append("-")
                continue
            relation, hours = found
            ratio = f"{hours / q['compute_h']:.2f}x"
            cells.append({"=": ratio, "<=": f"at most {ratio} (BEST-RQ's cheapest point)",
                          ">": f"more than {ratio} (BEST-RQ's dearest point)"}[relation])  # fmt: skip
        rows.append(f"| `{q['arm']}` | {q['compute_h']:.3g} | {cells[0]} | {cells[1]} |")
    if not rows:
        return []
    return ["BEST-RQ's compute for BiRQ's quality: where BEST-RQ's mean curve (its equal-steps and "
            "equal-compute arms together, linear in log compute between measured points) reaches "
            "each BiRQ point's mean probe PER and test WER, as a multiple of that BiRQ point's "
            "compute (above 1x: BiRQ needs less compute for that quality; a point estimate from "
            "the means, the seed spread is in the table above).", "",
            "| BiRQ arm | compute (CPU h) | BEST-RQ compute for its probe PER | for its test WER |",
            "|---|---|---|---|", *rows, ""]  # fmt: skip


def _plot_curve(curves: dict[str, list[dict]], path: Path, test_set: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("wer", f"test WER % ({test_set})"), ("per", "probe PER % (frozen encoder)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, (line, points) in enumerate(curves.items()):
            pts = [q for q in points if key in q]
            if not pts:
                continue
            x = [q["compute_h"] for q in pts]
            y = [q[key] for q in pts]
            sd = [q.get(f"{key}_std") or 0 for q in pts]
            ax.plot(x, y, "o-", color=f"C{i}", label=line)
            ax.fill_between(x, [a - b for a, b in zip(y, sd, strict=True)],
                            [a + b for a, b in zip(y, sd, strict=True)], color=f"C{i}", alpha=0.15)  # fmt: skip
        ax.set_xscale("log")
        # plain numbers at the measured points' compute, not 10^k labels that collide
        xs = sorted({q["compute_h"] for pts in curves.values() for q in pts})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(xs))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_xlabel("pretraining compute (CPU hours, log)")
        ax.set_title(title + ", mean ± sd over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def yardsticks(stats: dict, test_set: str) -> list[str]:
    """Which yardstick separates the arms: for each comparison with phone probes, whether
    the WER, frame accuracy and PER intervals (over utterances and over seeds) exclude 0."""
    probes = (stats.get("probes") or {}).get("comparisons") or {}
    wer = stats["comparisons"].get(test_set, {})
    if not probes:
        return []

    def verdict(ci: list[float] | None, seed_ci: list[float] | None, better: int) -> str:
        if not ci:
            return "-"
        sign = interval_sign(ci)
        held = " (and over seeds)" if seed_ci and interval_sign(seed_ci) == sign != 0 else ""
        return {0: "undecided", better: "first better", -better: "first worse"}[sign] + held

    lines = ["", "Which yardstick separates the arms (95 % intervals over test utterances; "
             "\"over seeds\": the t-interval over seeds excludes 0 too):", ""]  # fmt: skip
    for key, c in probes.items():
        w = wer.get(key)
        lines.append(
            f"- {key}: WER {verdict(w and w['wer_ci95'], w and w.get('wer_seed_ci95'), -1) if w else '-'}; "
            f"frame accuracy {c['frame_accuracy_diff']:+.1f} points, "
            f"{verdict(c['frame_accuracy_ci95'], c['frame_accuracy_seed_ci95'], 1)}; "
            f"PER {c['per_diff']:+.1f} points, {verdict(c['per_ci95'], c['per_seed_ci95'], -1)}."
        )  # fmt: skip
    return lines


def error_section(results: dict, stats: dict, test_set: str) -> list[str]:
    """What the errors are: at high error rates WER counts mostly substituted words, and
    its differences are differences of words right and of word boundaries."""
    lines = [f"## Error types ({test_set})", "",
             "| arm | words right % | word sub. % | word del. % | word ins. % | "
             "chars right % | char sub. % | char del. % | char ins. % |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    subs = []
    for arm in stats["per_arm"]:
        if ARMS[arm].probe:
            continue
        rows = [r["error_types"] for r in results["runs"] if r["arm"] == arm]
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        subs.append(mean["word_substitutions"])
        lines.append(
            f"| `{arm}` | " + " | ".join(f"{mean[f'{u}_{k}']:.1f}" for u in ("word", "char")
                                        for k in ("hits", "substitutions", "deletions", "insertions"))
            + " |"
        )  # fmt: skip
    lines += ["", "Percent of the reference words (characters), mean over seeds."]
    if subs and min(subs) > 50:
        lines.append(
            f"Every arm substitutes {min(subs):.0f}-{max(subs):.0f} % of the words: the models "
            "spell words roughly, rarely exactly, so WER differences here are differences in "
            "the few words spelled right and in word boundaries (deletions, insertions), and "
            "CER is the finer measure of how much was recognised."
        )
    return [*lines, ""]


def probe_command(results: dict, meta: dict) -> list[str]:
    """The command that ran the probes (a second runner on the same work folder)."""
    probes = sorted({(r["arm"], r["seed"]) for r in results["runs"] if ARMS[r["arm"]].probe},
                    key=lambda r: (list(ARMS).index(r[0]), r[1]))  # fmt: skip
    if not probes or "--arms" in meta["argv"]:
        return []
    arms = ",".join(dict.fromkeys(a for a, _ in probes))
    seeds = ",".join(map(str, sorted({s for _, s in probes})))
    return [
        " ".join(["python benchmarks/evidence.py", *meta["argv"], "--arms", arms, "--seeds", seeds])
    ]


def _dev_best(results: dict, arm: str, seeds: set[int] | None = None) -> tuple[str, str]:
    """Mean ± sd over seeds (only `seeds` if given) of the dev WER and CER at the best
    validation by WER, the checkpoint that is exported."""
    best = [r["dev_best"] for r in results["runs"] if r["arm"] == arm and r["dev_best"]
            and (seeds is None or r["seed"] in seeds)]  # fmt: skip
    if not best:
        return "-", "-"
    wer, wer_sd = mean_std([b["wer"] for b in best])
    cer, cer_sd = mean_std([b["cer"] for b in best])
    return _pm(wer, wer_sd), _pm(cer, cer_sd)


def probe_section(results: dict, stats: dict, test_set: str) -> list[str]:
    """Making pretraining pay: each probe (one recipe knob) against its baseline."""
    comps = stats["comparisons"].get(test_set, {})
    probes = knob_rows(comps)
    if not probes:
        return []
    lines = [
        "## Making pretraining pay: what was tried",
        "",
        "Each probe changes one knob of the pretraining or fine-tuning recipe of a BEST-RQ arm "
        "and is compared with the no-pretraining arm fine-tuned with the same recipe "
        "with the same seeds (dev: the validation with the best WER, the checkpoint that is "
        "exported). The knob that paid, 3x pretraining steps, became the second length of the "
        "comparison above (`*_long`).",
        "",
        "| probe | baseline | seeds | dev WER % | baseline dev WER % | dev CER % | "
        "baseline dev CER % | test WER diff (95 % CI) | test CER diff (95 % CI) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, base in probes:
        seeds = set(stats["per_arm"][arm][test_set]["seeds"])  # paired: the probe's seeds
        (wer, cer), (bwer, bcer) = _dev_best(results, arm), _dev_best(results, base, seeds)
        c = comps.get(f"{arm} vs {base}")
        diff = (
            (f"{c['wer_diff']:+.1f} [{c['wer_ci95'][0]:+.1f}, {c['wer_ci95'][1]:+.1f}]",
             f"{c['cer_diff']:+.1f} [{c['cer_ci95'][0]:+.1f}, {c['cer_ci95'][1]:+.1f}]")
            if c else ("-", "-")
        )  # fmt: skip
        lines.append(
            f"| {ARMS[arm].title} (`{arm}`) | `{base}` | {len(stats['per_arm'][arm][test_set]['seeds'])} | "
            f"{wer} | {bwer} | {cer} | {bcer} | {diff[0]} | {diff[1]} |"
        )
    return [*lines, ""]


def knob_rows(comps: dict) -> list[tuple[str, str]]:
    """(arm, baseline) of "making pretraining pay" that have a comparison: every probe, and
    the comparison arms whose knob was tried for it, against no pretraining."""
    rows = [(a, s.baseline or "scratch") for a, s in ARMS.items() if s.probe or s.knob]
    return [(a, b) for a, b in rows if f"{a} vs {b}" in comps]


# --- the reading: the issue's questions answered from the numbers -----------------------

_LONG = "At 3x the pretraining steps (the `*_long` arms):"
QUESTIONS = (
    ("bestrq vs scratch", "Does BEST-RQ beat no pretraining?"),
    ("birq vs scratch", "Does BiRQ beat no pretraining?"),
    ("birq vs bestrq", "Does BiRQ beat BEST-RQ at equal pretraining steps?"),
    ("birq vs bestrq_cost", "Does BiRQ beat BEST-RQ at equal pretraining compute?"),
    ("bestrq_long vs scratch", f"{_LONG} does BEST-RQ beat no pretraining?"),
    ("birq_long vs scratch", f"{_LONG} does BiRQ beat no pretraining?"),
    ("birq_long vs bestrq_long", f"{_LONG} does BiRQ beat BEST-RQ at equal steps?"),
    ("birq_long vs bestrq_cost_long", f"{_LONG} does BiRQ beat BEST-RQ at equal compute?"),
)
"""(comparison, the question it answers), in the order of the reading."""
_PAPER = "BiRQ at the paper's settings with label_grad_scale 0.01 (`birq_long_paper`, 3x steps):"
_9X = "At 9x the pretraining steps (the `*_9x` arms):"
_HOUR = "With about an hour labelled (the 1200-step encoders, `*_1h` arms):"
MORE_QUESTIONS = (
    ("birq_long_paper vs bestrq_long", f"{_PAPER} does it beat BEST-RQ at equal steps?"),
    ("birq_long_paper vs bestrq_cost_paper", f"{_PAPER} does it beat BEST-RQ at equal compute?"),
    ("birq_long_paper vs birq_long", f"{_PAPER} does it beat the default BiRQ?"),
    ("bestrq_9x vs scratch", f"{_9X} does BEST-RQ beat no pretraining?"),
    ("birq_9x vs scratch", f"{_9X} does BiRQ beat no pretraining?"),
    ("birq_9x vs bestrq_9x", f"{_9X} does BiRQ beat BEST-RQ at equal steps?"),
    ("birq_9x vs bestrq_cost_9x", f"{_9X} does BiRQ beat BEST-RQ at equal compute?"),
    ("bestrq_long_1h vs scratch_1h", f"{_HOUR} does BEST-RQ beat no pretraining?"),
    ("birq_long_1h vs scratch_1h", f"{_HOUR} does BiRQ beat no pretraining?"),
    ("birq_long_1h vs bestrq_long_1h", f"{_HOUR} does BiRQ beat BEST-RQ?"),
    ("birq_long_paper_1h vs bestrq_long_1h", f"{_HOUR} does the paper form beat BEST-RQ?"),
)
"""Questions of the optional plans (paper, curve, hour): answered when measured."""


def reading(stats: dict, test_set: str) -> list[str]:
    """The answers to the issue's questions, in words, from the numbers."""
    comps = stats["comparisons"].get(test_set, {})
    return [
        *(_verdict(comps.get(key), question) for key, question in QUESTIONS),
        *(_verdict(comps[key], question) for key, question in MORE_QUESTIONS if key in comps),
        *_probes_that_pay(comps),
        *_claim(comps),
        *representation_at_equal_compute(stats),
    ]


def _verdict(c: dict | None, question: str) -> str:
    """One question's answer from its comparison's intervals (None: not measured)."""
    if c is None:
        return f"- {question} Not measured yet."
    answer = _answer(interval_sign(c["wer_ci95"]), interval_sign(c["cer_ci95"]))
    n = len(c["seeds"])
    lo, hi = c["wer_ci95"]
    clo, chi = c["cer_ci95"]
    return (
        f"- {question} **{answer}**: WER {c['wer_diff']:+.1f} points ({c['wer_relative']:+.1%} "
        f"relative; per seed {', '.join(f'{d:+.1f}' for d in c['wer_diff_per_seed'])}; 95 % CI "
        f"[{lo:+.1f}, {hi:+.1f}]), CER {c['cer_diff']:+.1f} points (95 % CI [{clo:+.1f}, "
        f"{chi:+.1f}]); {n} seed{'s' if n > 1 else ''}.{_seed_caveat(c)}"
    )


def _answer(words: int, chars: int) -> str:
    """The answer from the signs of the WER and CER intervals (-1: fewer errors)."""
    if words == chars == -1:
        return "Yes"
    if words == chars == 1:
        return "No, it is worse"
    if {words, chars} == {-1, 1}:
        return "Mixed: " + ("fewer word errors, more character errors" if words < 0
                            else "more word errors, fewer character errors")  # fmt: skip
    if -1 in (words, chars):
        return f"Fewer {'word' if words < 0 else 'character'} errors only"
    if 1 in (words, chars):
        return f"More {'word' if words > 0 else 'character'} errors only"
    return "Not distinguishable"


def _seed_caveat(c: dict) -> str:
    """What the seeds say: too few to tell, within their spread, or holding over them."""
    n = len(c["seeds"])
    seed_ci = c.get("wer_seed_ci95")
    if n < 3:
        return (f" With {n} seed{'s' if n > 1 else ''} the intervals cover the sampling of "
                "the test set, not the spread of training runs.")  # fmt: skip
    if seed_ci and seed_ci[0] <= 0 <= seed_ci[1]:
        return (f" Over training runs the WER difference is within the seed spread (t-interval "
                f"over the {n} seeds [{seed_ci[0]:+.1f}, {seed_ci[1]:+.1f}]).")  # fmt: skip
    return (f" It holds over training runs too (t-interval over the {n} seeds "
            f"[{seed_ci[0]:+.1f}, {seed_ci[1]:+.1f}]).")  # fmt: skip


def _probes_that_pay(comps: dict) -> list[str]:
    knobs = knob_rows(comps)
    if not knobs:
        return []
    paying = [
        f"`{arm}` ({len(c['seeds'])} seed{'s' if len(c['seeds']) > 1 else ''}: WER "
        f"{c['wer_diff']:+.1f}, CER {c['cer_diff']:+.1f} against `{base}`)"
        for arm, base in knobs
        if (c := comps[f"{arm} vs {base}"])["wer_ci95"][1] < 0 and c["cer_ci95"][1] < 0
    ]  # fmt: skip
    return [
        "- Which probes make pretraining pay in both WER and CER (test CIs below 0)? "
        + (", ".join(paying) + "." if paying else "None so far.")
    ]


def _claim(comps: dict) -> list[str]:
    """The paper's claim, at each pretraining length whose three comparisons exist."""
    lines = []
    for suffix, steps in (("", "the budget's pretraining steps"), ("_long", "3x the steps")):
        goal = [comps.get(k.replace("@", suffix)) for k in
                ("birq@ vs bestrq@", "birq@ vs bestrq_cost@", "bestrq@ vs scratch")]  # fmt: skip
        if all(goal):
            reached = (
                all(c["wer_relative"] <= -0.05 and c["wer_ci95"][1] < 0 for c in goal[:2])
                and goal[2]["wer_ci95"][1] < 0
            )
            lines.append(
                f"- The paper's claim at {steps} (BiRQ at least 5 % relative WER below BEST-RQ "
                "at equal steps and compute, both below no pretraining): "
                + ("**reached**." if reached else "**not reached** here.")
            )
    return lines


EQUAL_COMPUTE = (
    ("birq vs bestrq_cost", "At the budget's steps"),
    ("birq_long vs bestrq_cost_long", "At 3x the steps"),
    ("birq_9x vs bestrq_cost_9x", "At 9x the steps"),
)
"""The frozen-probe comparisons that answer "at equal compute, is BiRQ's representation
better than BEST-RQ's", one per pretraining length of BiRQ's defaults."""
EQUAL_COMPUTE_OTHER = (
    (
        "birq_long_paper vs bestrq_cost_paper",
        "The paper form (label_grad_scale 0.01) at 3x the steps",
    ),
)
"""Other BiRQ forms with their own equal-compute arm: reported, not part of the answer."""


def representation_at_equal_compute(stats: dict) -> list[str]:
    """The compute curve's question in words: at each length, BiRQ's frozen phone probes
    against BEST-RQ pretrained for the same CPU time, with both intervals."""
    probes = (stats.get("probes") or {}).get("comparisons") or {}
    found = [(probes[key], where) for key, where in EQUAL_COMPUTE if key in probes]
    other = [(probes[key], where) for key, where in EQUAL_COMPUTE_OTHER if key in probes]
    if not found and not other:
        return []
    signs = [(interval_sign(c["per_ci95"]), _sign_or_none(c["per_seed_ci95"])) for c, _ in found]
    if not found:
        answer = "Not measured for BiRQ's defaults"
    elif all(s == t == -1 for s, t in signs):
        answer = "Yes, at every length measured, over test utterances and over seeds"
    elif all(s == -1 for s, _ in signs):
        answer = "Yes over test utterances at every length measured, not beyond the seed spread everywhere"
    elif all(s == 1 for s, _ in signs):
        answer = "No, it is worse at every length measured"
    elif not any(s for s, _ in signs):
        answer = "Not distinguishable at any length measured"
    else:
        answer = "Not at every length: " + ", ".join(
            f"{where.removeprefix('At ')} {({-1: 'better', 1: 'worse', 0: 'undecided'})[s]}"
            for (_, where), (s, _) in zip(found, signs, strict=True)
        )
    return [
        "- At equal pretraining compute, is BiRQ's representation better than BEST-RQ's "
        "(frozen phone probes: PER of the weighted-layer recogniser, frame accuracy of the best "
        f"layer; BiRQ - BEST-RQ, negative PER = BiRQ better)? **{answer}.** "
        + " ".join(_probe_difference(c, where) for c, where in [*found, *other])
    ]


def _probe_difference(c: dict, where: str) -> str:
    """One length's probe comparison: PER (the answer's yardstick) and frame accuracy, each
    with its interval over test utterances and, from 2 seeds on, over seeds."""
    n = len(c["seeds"])
    word = {-1: "BiRQ better", 1: "BiRQ worse", 0: "undecided"}

    def part(
        name: str, diff: float, ci: list[float], seed_ci: list[float] | None, better: int
    ) -> str:
        sign, seed_sign = interval_sign(ci), _sign_or_none(seed_ci)
        over_seeds = f", over {n} seeds {_ci(seed_ci)}" if seed_ci else ""
        verdict = word[sign * better * -1 if sign else 0]
        held = " over seeds too" if sign and seed_sign == sign else ""
        return f"{name} {diff:+.1f} points (95 % CI over utterances {_ci(ci)}{over_seeds}: {verdict}{held})"

    return (
        f"{where} ({n} seed{'s' if n > 1 else ''}"
        + ("; with one seed no interval covers the spread of training runs" if n < 2 else "")
        + "): "
        + part("PER", c["per_diff"], c["per_ci95"], c["per_seed_ci95"], -1)
        + ", "
        + part(
            "frame accuracy",
            c["frame_accuracy_diff"],
            c["frame_accuracy_ci95"],
            c["frame_accuracy_seed_ci95"],
            1,
        )  # fmt: skip
        + "."
    )


def _sign_or_none(ci: list[float] | None) -> int | None:
    return interval_sign(ci) if ci else None


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")


def _fmt(v, spec=".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _plots(results: dict, stats: dict, out: Path, test_set: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from birq_fs2.experiments.plots import plot_panels

    arms = list(stats["per_arm"])
    styles = ["o-", "s-", "^-", "d-", "v-", "x-"]
    lines = []
    for i, arm in enumerate(arms):
        curves = [dict(r["dev_wer"]) for r in results["runs"] if r["arm"] == arm and r["dev_wer"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        mean = [(s, sum(c[s] for c in curves) / len(curves)) for s in steps]
        lines.append((f"{arm} ({len(curves)} seeds)", styles[i % len(styles)], mean))
    plot_panels([("Dev WER % (mean over seeds)", lines)], out / "dev_wer.png", "fine-tuning step")

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(arms), 3.4))
    for i, arm in enumerate(arms):
        a = stats["per_arm"][arm][test_set]
        ax.bar(i, a["wer"], color="#9ecae1", yerr=a["wer_std"] or 0, capsize=4)
        ax.plot([i] * len(a["wer_per_seed"]), a["wer_per_seed"], "k.", markersize=6)
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel(f"test WER % ({test_set})")
    ax.set_title("Test WER per arm (bar: mean, dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "test_wer.png", dpi=110)
    plt.close(fig)
