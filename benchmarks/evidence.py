"""The evidence: BiRQ vs BEST-RQ vs no pretraining, at equal pretraining steps and at
equal pretraining compute, over seeds, with little labelled data.

    python benchmarks/evidence.py [--budget quick|full] [--seeds 0,1,2]
        [--arms scratch,bestrq,birq,bestrq_cost] [--corpus DIR] [--eval-data DIR[:SPLIT] ...]
        [--work DIR] [--out benchmarks/results/evidence]

Plan, per seed (the pretraining and the fine-tuning seed both): pretrain BEST-RQ
(`bestrq_tiny`) and BiRQ (the defaults) on all the unlabelled training audio with the
project's own recipe and the same steps; pretrain BEST-RQ again for the steps that BiRQ's
step cost buys (`bestrq_cost`: equal compute; the cost ratio is the side-by-side measurement
of benchmarks/train_throughput.py, or with `--step-cost measure` the ratio of this plan's
two seed-0 runs); fine-tune every encoder, and a randomly
initialised one (`scratch`), with the same CTC recipe, steps and labelled subset (about
`labelled_minutes` of the training utterances, one fixed subset for every arm and seed);
export each fine-tuned model (`<work>/models/<arm>-s<seed>`, a folder `birq-evaluate
--model` takes) and score it on the held-out test speakers (and on every --eval-data set).

Statistics: mean and standard deviation over seeds of test WER and CER per arm; for each
comparison the paired per-seed differences and a bootstrap 95 % confidence interval of the
mean difference, resampling test utterances (the same resample for both arms and every
seed). Label quality of each pretrained encoder (PNMI against the true phones, code
perplexity) comes from the recipe's last validation and `birq-labels`.

Resumable: a finished run is skipped, an interrupted one resumes from its last checkpoint
(the recipes do it), and the report is rewritten after every run from whatever exists, so
a stopped session loses at most the run in flight. The step-cost ratio is read (or
measured) once and kept in `<work>/plan.json`. Writes REPORT.md, results.json, the plots
and runs.tar.gz under --out; runs and models stay in --work (not committed). runs.tar.gz
holds every file the report reads (scores, hypotheses, metrics, probes, plan; no
checkpoint): unpacked into an empty folder, `--report-only --work DIR` on it rewrites the
report without the corpus or the runs, so losing the work folder loses no statistic.

The plan (budgets, arms, comparisons) is benchmarks/evidence_plan.py, the report
benchmarks/evidence_report.py; launching and reading runs, and the statistics, are
`birq_fs2.experiments`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evidence_plan import (  # noqa: E402
    ARM_GROUPS,
    ARMS,
    BUDGETS,
    COMPARISONS,
    DEFAULT_ARMS,
    SUBSET_SEED,
    Budget,
    Layout,
    arm_pretrain_steps,
)
from evidence_report import write_report  # noqa: E402

from birq_fs2.experiments.runs import (  # noqa: E402
    RunLocked,
    compute_per_step,
    finished,
    metric_rows,
    read_hypotheses,
    recipe_command,
    run_command,
    run_lock,
    shared_threads,
    threads_env,
    waiting_lock,
)
from birq_fs2.experiments.stats import bootstrap_difference, mean_std  # noqa: E402
from birq_fs2.metrics import (  # noqa: E402
    FINETUNE_METRICS,
    LABEL_QUALITY_METRICS,
    PRETRAIN_METRICS,
    display,
    series,
)

TestSet = tuple[str, Path, str | None]
"""(name, corpus, split) of a test set every final model is scored on."""


# --- running --------------------------------------------------------------------------


def _recipe(
    work: Path, data: Layout, recipe: str, run: Path, seed: int, steps: int, every: int,
    extra: list[str],
) -> Path:  # fmt: skip
    """Runs (or resumes) one recipe on the plan's data; returns its output folder."""
    if finished(run, steps):
        return run
    cmd = recipe_command(
        recipe, run, data.corpus,
        f"dataset.train_split={data.train}", f"dataset.valid_split={data.dev}",
        f"common.seed={seed}", f"regime.num_steps={steps}",
        f"regime.validate_every_n_steps={every}", f"regime.checkpoint_every_n_steps={every}",
        f"regime.publish_metrics_every_n_steps={max(1, every // 10)}", *extra,
    )  # fmt: skip
    what = f"{'pretraining' if recipe == 'pretrain' else 'fine-tuning'} {run.name}"
    with run_lock(work / "locks" / f"{recipe}-{run.name}.lock", what):
        run_command(cmd, work / "logs" / f"{recipe}-{run.name}.log", what)
    return run


def pretrain_overrides(arm: str, steps: int) -> list[str]:
    return [
        f"lr_scheduler.config.num_warmup_steps={max(1, steps // 10)}",
        *(ARMS[arm].pretrain or []),
    ]


def pretrain(work: Path, data: Layout, arm: str, seed: int, steps: int, budget: Budget) -> Path:
    every = min(budget.pretrain_validate_every, steps)
    run = work / "pretrain" / f"{arm}-s{seed}"
    return _recipe(work, data, "pretrain", run, seed, steps, every, pretrain_overrides(arm, steps))


def finetune(
    work: Path, data: Layout, arm: str, seed: int, encoder: Path | None, fraction: float,
    budget: Budget,
) -> Path:  # fmt: skip
    steps = round(budget.finetune_steps * ARMS[arm].finetune_scale)
    extra = [
        f"dataset.train_fraction={fraction:.6f}", f"dataset.train_subset_seed={SUBSET_SEED}",
        *([f"pretrained.model={encoder}"] if encoder is not None else []), *ARMS[arm].finetune,
    ]  # fmt: skip
    run = work / "finetune" / f"{arm}-s{seed}"
    return _recipe(
        work, data, "finetune", run, seed, steps, min(budget.finetune_validate_every, steps), extra
    )


def export_and_score(
    work: Path, finetuned: Path, name: str, test_sets: list[TestSet]
) -> dict[str, Path]:
    """The best checkpoint (by dev WER) exported to models/<name>, scored on every test set;
    returns {test set: folder with summary.json and hypotheses.tsv}."""
    import torch

    from birq_fs2.evaluation import evaluate
    from birq_fs2.export import export_checkpoint

    model_dir = work / "models" / name
    if not (model_dir / f"evidence_{name}.yaml").exists():  # the card is written last
        export_checkpoint(finetuned, model_dir, f"evidence_{name}")
    scored = {}
    for set_name, path, split in test_sets:
        out = work / "eval" / set_name / name
        if not (out / "summary.json").exists():
            print(f"evidence: scoring {name} on {set_name} ...", file=sys.stderr, flush=True)
            evaluate(str(model_dir), path, split, out, torch.device("cpu"))
        scored[set_name] = out
    return scored


def label_analysis(run: Path, data: Layout, budget: Budget) -> dict | None:
    out = run / "labels"
    if (out / "labels.json").exists():
        return json.loads((out / "labels.json").read_text())
    from birq_fs2.cli.labels import analyse
    from birq_fs2.data.alignments import AlignmentError
    from birq_fs2.data.corpus import CorpusError

    try:
        return analyse(str(run), data.corpus, data.dev, max_utterances=budget.label_utterances,
                       out_dir=out)  # fmt: skip
    except (CorpusError, AlignmentError) as ex:  # a corpus without phone alignments
        print(f"evidence: no layer analysis of {run.name}: {ex}", file=sys.stderr)
        return None


def phone_probes(run: Path, data: Layout, budget: Budget, floors: Path, seed: int) -> dict | None:
    """birq-probe of a pretrained encoder (run/probe/probe.json), and once per seed the
    floors (`floors`/probe.json: that architecture freshly initialised with the plan's
    seed, the fbank input); the probes themselves train with one seed for every encoder.
    None on a corpus without phone alignments."""
    from birq_fs2.cli.probe import run_probes
    from birq_fs2.data.alignments import AlignmentError
    from birq_fs2.data.corpus import CorpusError
    from birq_fs2.probe import ProbeConfig

    config = ProbeConfig(epochs=budget.probe_epochs, recogniser_epochs=budget.probe_epochs)
    train_n, eval_n = budget.probe_utterances
    kw = {"splits": (data.train, data.dev, data.test), "train_utterances": train_n,
          "eval_utterances": eval_n, "config": config, "log": lambda m: print(m, file=sys.stderr)}  # fmt: skip
    try:
        for out, only_floors in ((floors, True), (run / "probe", False)):
            if not (out / "probe.json").exists():
                # the floors are one seed's, shared by every encoder of that seed
                with run_lock(out.parent / f"{out.name}.lock", f"phone probes {out.name}"):
                    if not (out / "probe.json").exists():  # done while this runner waited
                        run_probes([f"{run.name}={run}"], data.corpus, floors=False,
                                   only_floors=only_floors, init_seed=seed, out_dir=out, **kw)  # fmt: skip
    except (CorpusError, AlignmentError) as ex:
        print(f"evidence: no phone probes of {run.name}: {ex}", file=sys.stderr)
        return None
    return json.loads((run / "probe" / "probe.json").read_text())


# --- the report's inputs, committed ------------------------------------------------------

ARCHIVE = "runs.tar.gz"
"""The report's inputs under --out, so that a lost work folder loses no statistic."""
REPORT_META = "report_meta.json"
"""The plan's description that main() otherwise reads from the corpus (labelled subset)."""
REPORT_INPUTS = (
    "plan.json", "wall_s.json", REPORT_META, "probe/floors-s*/probe.json",
    "eval/*/*/summary.json", "eval/*/*/hypotheses.tsv",
    "pretrain/*/metrics/train.jsonl", "pretrain/*/metrics/valid/valid.jsonl",
    "pretrain/*/labels/labels.json", "pretrain/*/probe/probe.json",
    "finetune/*/metrics/valid/valid.jsonl",
)  # fmt: skip
"""Every file `collect` and the report read: no checkpoint, model or audio; text only,
tens of KB per run once compressed (a 1200-step run's train.jsonl: 106 KB, 24 KB gzipped)."""


def archive_runs(work: Path, out: Path, meta: dict, test_sets: list[str]) -> Path:
    """<out>/runs.tar.gz: REPORT_INPUTS of the work folder. Byte-identical for the same
    files (sorted, no times or owners), so an unchanged plan leaves git nothing to commit.
    `--report-only --work DIR` on the unpacked archive rewrites the same report."""
    import gzip
    import io
    import tarfile

    keep = ("argv", "labelled_fraction", "labelled_minutes", "train_hours", "corpus",
            "labelled_by_arm")  # fmt: skip
    plan = {**{k: meta[k] for k in keep if k in meta}, "test_sets": test_sets}
    (work / REPORT_META).write_text(json.dumps(plan, indent=2) + "\n")
    files = sorted({f for pattern in REPORT_INPUTS for f in work.glob(pattern) if f.is_file()})
    target = out / ARCHIVE
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                data = f.read_bytes()
                info = tarfile.TarInfo(f.relative_to(work).as_posix())
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    partial.replace(target)  # a reader never sees half an archive
    return target


def archived_plan(work: Path) -> dict | None:
    """The plan's description of a work folder unpacked from runs.tar.gz (no corpus)."""
    meta = work / REPORT_META
    return json.loads(meta.read_text()) if meta.exists() else None


# --- planning --------------------------------------------------------------------------


def ensure_corpus(work: Path, budget: Budget) -> Layout:
    from birq_fs2.data.synth import synthesize_corpus

    corpus = work / "corpus"
    if not (corpus / "SPEAKERS.TXT").exists():
        synthesize_corpus(corpus, hours=budget.hours, num_speakers=budget.speakers, seed=0)
    return Layout(corpus, "train", "dev", "test")


def labelled_fraction(data: Layout, minutes: float) -> tuple[float, float, float]:
    """(train_fraction that keeps about `minutes` of the training audio, the minutes the
    subset really holds, the hours of the whole training split)."""
    import soundfile as sf

    from birq_fs2.data.corpus import load_split
    from birq_fs2.data.dataset import subset

    utterances = load_split(data.corpus, data.train)
    seconds = {u.id: (u.num_samples or sf.info(str(u.path)).frames) / 16_000 for u in utterances}
    fraction = min(1.0, minutes * 60 / sum(seconds.values()))
    held = sum(seconds[u.id] for u in subset(utterances, fraction, SUBSET_SEED)) / 60
    return fraction, held, sum(seconds.values()) / 3600


THROUGHPUT_RESULT = ROOT / "benchmarks" / "results" / "throughput" / "throughput.json"


def kept_in_plan(work: Path, keys: tuple[str, ...], measure) -> dict:
    """plan.json's entry at `keys` (nested), from `measure()` on first use and kept, so that
    every seed and length of a plan reads the same value."""
    plan_file = work / "plan.json"
    *parents, leaf = keys

    def node(plan: dict) -> dict:
        for key in parents:
            plan = plan.setdefault(key, {})
        return plan

    if leaf in (known := node(json.loads(plan_file.read_text()) if plan_file.exists() else {})):
        return known[leaf]
    value = measure()  # its runs hold their own locks: another runner waits for them
    kept = {}

    def keep(plan: dict) -> bool:  # the first measurement to finish is the plan's
        kept["value"] = node(plan).setdefault(leaf, value)
        return kept["value"] is value

    update_plan(work, keep)
    return kept["value"]


def update_plan(work: Path, change) -> bool:
    """`change(plan)` applied to plan.json under its lock (runners sharing the folder add
    keys to it); written when `change` says it changed something. Returns that."""
    plan_file = work / "plan.json"
    work.mkdir(parents=True, exist_ok=True)
    with waiting_lock(work / "locks" / "plan.lock"):
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
        if changed := change(plan):
            plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    return changed


def _measured_ratio(birq_s: float, bestrq_s: float, measured_on: str) -> dict:
    return {
        "birq_s_per_step": round(birq_s, 4), "bestrq_s_per_step": round(bestrq_s, 4),
        "ratio": round(birq_s / bestrq_s, 3), "measured_on": measured_on,
    }  # fmt: skip


def measured_step_cost(
    work: Path, data: Layout, budget: Budget, seed: int, source: Path | None = THROUGHPUT_RESULT
) -> dict:
    """BiRQ's step cost over BEST-RQ's, kept in plan.json on first use, so every seed and
    length of a plan uses the same ratio (`arm_pretrain_steps` turns it into steps).

    From `source`, the side-by-side, interleaved measurement of the recipe step
    (benchmarks/train_throughput.py, committed for this project's machine kind), when it
    exists; with `source=None` (`--step-cost measure`) from this plan's own seed-`seed`
    runs at the budget's steps, as earlier plans did (a runner sharing the cores skews it:
    1.30 measured so against 1.18 side by side)."""

    def measure() -> dict:
        if source is not None and source.exists():
            side = json.loads(source.read_text())
            ratio = side["birq_over_bestrq"]
            return {
                "birq_s_per_step": ratio["birq_s_per_step"], "bestrq_s_per_step": ratio["bestrq_s_per_step"],
                "ratio": ratio["ratio"],
                "measured_on": f"side by side by benchmarks/train_throughput.py on {side['machine']}",
            }  # fmt: skip
        birq = pretrain(work, data, "birq", seed, budget.pretrain_steps, budget)
        bestrq = pretrain(work, data, "bestrq", seed, budget.pretrain_steps, budget)
        return _measured_ratio(compute_per_step(birq), compute_per_step(bestrq), f"seed {seed}")

    return kept_in_plan(work, ("equal_cost",), measure)


FORM_COST_STEPS, FORM_COST_REPEATS = 100, 2


def measured_form_cost(
    work: Path, data: Layout, budget: Budget, seed: int, form: str, bestrq: str
) -> dict:
    """The step cost of another BiRQ form (arm `form`) over BEST-RQ's (arm `bestrq`), kept
    in plan.json's equal_cost_of[form] on first use: short runs of both (FORM_COST_STEPS
    steps, seed `seed`, under <work>/cost/) interleaved form, BEST-RQ, form, BEST-RQ, so that
    whatever else loads the machine hits both alike; the median of fairseq2's Compute Time
    per step of each (the method of benchmarks/train_throughput.py, on this plan's data)."""

    def measure() -> dict:
        steps = min(FORM_COST_STEPS, round(budget.pretrain_steps * ARMS[form].pretrain_scale))
        per_step: dict[str, list[float]] = {form: [], bestrq: []}
        for repeat in range(FORM_COST_REPEATS):
            for arm in (form, bestrq):
                run = _recipe(work, data, "pretrain", work / "cost" / f"{arm}-r{repeat}", seed,
                              steps, steps, pretrain_overrides(arm, steps))  # fmt: skip
                per_step[arm].append(compute_per_step(run))
        on = f"interleaved {FORM_COST_REPEATS} x {steps}-step runs of each, seed {seed}, on this plan's data"
        medians = (statistics.median(per_step[a]) for a in (form, bestrq))
        return {**_measured_ratio(*medians, on), "arms": [form, bestrq]}

    return kept_in_plan(work, ("equal_cost_of", form), measure)


# --- results ---------------------------------------------------------------------------


def utterance_errors(eval_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """{utterance id: (word errors, reference words, char errors, reference chars)}."""
    from birq_fs2.scoring import count_errors

    rows = {}
    for utt_id, ref, hyp in read_hypotheses(eval_dir):
        c = count_errors([ref], [hyp])
        rows[utt_id] = (c.word_errors, c.ref_words, c.char_errors, c.ref_chars)
    return rows


def error_types(eval_dir: Path) -> dict[str, float]:
    """Word and character hits, substitutions, deletions and insertions over the whole test
    set, in percent of the reference words (characters)."""
    from birq_fs2.scoring import alignments

    rows = read_hypotheses(eval_dir)
    words, chars = alignments([ref for _, ref, _ in rows], [hyp for _, _, hyp in rows])
    types = {}
    for unit, out in (("word", words), ("char", chars)):
        ref = out.hits + out.substitutions + out.deletions
        for kind in ("hits", "substitutions", "deletions", "insertions"):
            types[f"{unit}_{kind}"] = round(100.0 * getattr(out, kind) / max(ref, 1), 2)
    return types


def pretrain_summary(run: Path, layers: dict | None) -> dict:
    valid = metric_rows(run, "valid")
    last = valid[-1] if valid else {}
    q = LABEL_QUALITY_METRICS
    summary = {
        "steps": last.get("Step"),
        "compute_s_per_step": round(compute_per_step(run), 4),
        "anchor_pnmi": last.get(display("anchor_pnmi", q)),
        "enhanced_pnmi": last.get(display("enhanced_pnmi", q)),
        "enhanced_noise_free_perplexity": last.get(display("enhanced_noise_free_perplexity", q)),
        "anchor_perplexity": last.get(display("anchor_perplexity", PRETRAIN_METRICS)),
        "best_layer": None,
        "label_layer": layers.get("label_layer") if layers else None,
    }
    if layers:
        blocks = {k: v for k, v in layers["streams"].items() if k.startswith("layer_")}
        name, best = max(blocks.items(), key=lambda kv: kv[1]["pnmi"])
        summary["best_layer"] = {"block": int(name.split("_")[1]), "pnmi": best["pnmi"]}
    return summary


def _encoder_probe(e: dict) -> dict:
    return {
        "best_layer": e["best_layer"]["stream"],
        "frame_accuracy": round(100 * e["best_layer"]["test_accuracy"], 2),
        "per": round(e["recogniser"]["test_per"], 2),
        "layer_accuracy": {k: round(100 * v["test_accuracy"], 2) for k, v in e["linear"].items()},
        "layer_weights": e["recogniser"]["layer_weights"],
    }


def probe_summary(probe_file: Path) -> dict | None:
    """birq-probe's numbers of one encoder: the best layer's test frame accuracy (the layer
    chosen on dev), the phone recogniser's test PER, every layer's accuracy."""
    if not probe_file.exists():
        return None
    (e,) = json.loads(probe_file.read_text())["encoders"].values()
    return _encoder_probe(e)


def probe_errors(probe_file: Path) -> dict[str, tuple[int, int, int, int]]:
    """{test utterance: (frames wrong, frames, phone edits, reference phones)}: the shape
    bootstrap_difference reads (its "wer" is then the frame error rate, its "cer" the PER)."""
    (e,) = json.loads(probe_file.read_text())["encoders"].values()
    frames, phones = (
        e["test_utterances"]["best_layer_frames"],
        e["test_utterances"]["recogniser_phones"],
    )
    return {u: (*frames[u], *phones[u]) for u in frames if u in phones}


def analyse_probes(work: Path, results: dict) -> dict:
    """Per arm mean and sd over seeds of the probe numbers; for each comparison of two
    pretrained arms the paired differences (frame accuracy, PER) with both intervals."""
    # an arm that fine-tunes another arm's encoder has that arm's probes
    probed = [r for r in results["runs"] if r.get("probe") and not ARMS[r["arm"]].encoder_of]
    per_arm = {}
    for arm in sorted({r["arm"] for r in probed}, key=list(ARMS).index):
        rs = [r for r in probed if r["arm"] == arm]
        acc, acc_sd = mean_std([r["probe"]["frame_accuracy"] for r in rs])
        per, per_sd = mean_std([r["probe"]["per"] for r in rs])
        per_arm[arm] = {"seeds": [r["seed"] for r in rs], "frame_accuracy": round(acc, 2),
                        "frame_accuracy_std": acc_sd, "per": round(per, 2), "per_std": per_sd,
                        "best_layer_per_seed": [r["probe"]["best_layer"] for r in rs],
                        "frame_accuracy_per_seed": [r["probe"]["frame_accuracy"] for r in rs],
                        "per_per_seed": [r["probe"]["per"] for r in rs]}  # fmt: skip
        at_label = [r["probe"]["layer_accuracy"].get(f"block_{r['pretrain']['label_layer']}")
                    for r in rs if r["pretrain"].get("label_layer")]  # fmt: skip
        if at_label and None not in at_label:
            per_arm[arm]["label_layer_accuracy"], per_arm[arm]["label_layer_accuracy_std"] = (
                mean_std(at_label)
            )
    floors = {}
    for name in sorted({n for f in results["probe_floors"].values() for n in f}):
        rows = [f[name] for f in results["probe_floors"].values() if name in f]
        acc, acc_sd = mean_std([r["frame_accuracy"] for r in rows])
        per, per_sd = mean_std([r["per"] for r in rows])
        floors[name] = {"seeds": len(rows), "frame_accuracy": round(acc, 2), "frame_accuracy_std": acc_sd,
                        "per": round(per, 2), "per_std": per_sd}  # fmt: skip
    errors = {
        arm: {r["seed"]: probe_errors(work / "pretrain" / f"{ARMS[arm].encoder_of or arm}-s{r['seed']}"
                                      / "probe" / "probe.json") for r in probed if r["arm"] == arm}
        for arm in per_arm
    }  # fmt: skip
    comparisons = {}
    for arm, base in COMPARISONS:
        if arm in errors and base in errors and set(errors[arm]) & set(errors[base]):
            c = bootstrap_difference(errors[arm], errors[base])
            flip = lambda ci: [-ci[1], -ci[0]] if ci else None  # noqa: E731 - error rate -> accuracy
            comparisons[f"{arm} vs {base}"] = {
                "seeds": c["seeds"], "utterances": c["utterances"],
                "frame_accuracy_diff": -c["wer_diff"], "frame_accuracy_ci95": flip(c["wer_ci95"]),
                "frame_accuracy_seed_ci95": flip(c["wer_seed_ci95"]),
                "frame_accuracy_diff_per_seed": [-d for d in c["wer_diff_per_seed"]],
                "per_diff": c["cer_diff"], "per_ci95": c["cer_ci95"], "per_seed_ci95": c["cer_seed_ci95"],
                "per_diff_per_seed": c["cer_diff_per_seed"],
            }  # fmt: skip
    return {"per_arm": per_arm, "floors": floors, "comparisons": comparisons}


def scored_runs(work: Path, test_set: str) -> list[tuple[str, int]]:
    """(arm, seed) of every run of the work folder scored on `test_set`, in ARMS order."""
    found = []
    for summary in (work / "eval" / test_set).glob("*-s*/summary.json"):
        arm, _, seed = summary.parent.name.rpartition("-s")
        if arm in ARMS and seed.isdigit():
            found.append((arm, int(seed)))
    return sorted(found, key=lambda r: (list(ARMS).index(r[0]), r[1]))


def collect(work: Path, test_sets: list[str]) -> dict:
    """Every run of the work folder scored on every test set, whichever command ran it."""
    runs = []
    for arm, seed in scored_runs(work, test_sets[0]):
        name, spec = f"{arm}-s{seed}", ARMS[arm]
        scored = {s: work / "eval" / s / name for s in test_sets}
        if not all((d / "summary.json").exists() for d in scored.values()):
            continue
        pre = work / "pretrain" / (f"{spec.encoder_of}-s{seed}" if spec.encoder_of else name)
        labels = pre / "labels" / "labels.json"
        ft_valid = metric_rows(work / "finetune" / name, "valid")
        wer, cer = display("wer", FINETUNE_METRICS), display("cer", FINETUNE_METRICS)
        runs.append({
            "arm": arm, "seed": seed,
            "test": {s: {k: json.loads((d / "summary.json").read_text())[k]
                         for k in ("wer", "cer", "num_utterances")}
                     for s, d in scored.items()},
            "pretrain": pretrain_summary(pre, json.loads(labels.read_text())
                                         if labels.exists() else None)
            if spec.pretrained else None,
            "probe": probe_summary(pre / "probe" / "probe.json") if spec.pretrained else None,
            "error_types": error_types(scored[test_sets[0]]),
            "dev_wer": series(ft_valid, "wer", FINETUNE_METRICS),
            "dev_best": min(({"wer": r[wer], "cer": r[cer], "step": r["Step"]}
                             for r in ft_valid if wer in r), key=lambda b: b["wer"], default=None),
        })  # fmt: skip
    floors = {}
    for f in sorted((work / "probe").glob("floors-s*/probe.json")):
        seed = int(f.parent.name.rpartition("-s")[2])
        floors[seed] = {
            name: _encoder_probe(e) for name, e in json.loads(f.read_text())["encoders"].items()
        }
    return {"runs": runs, "probe_floors": floors}


def analyse_results(work: Path, results: dict, test_sets: list[str]) -> dict:
    arms_present = sorted({r["arm"] for r in results["runs"]}, key=list(ARMS).index)
    per_arm = {}
    for arm in arms_present:
        rs = [r for r in results["runs"] if r["arm"] == arm]
        per_arm[arm] = {}
        for s in test_sets:
            wer, wer_sd = mean_std([r["test"][s]["wer"] for r in rs])
            cer, cer_sd = mean_std([r["test"][s]["cer"] for r in rs])
            per_arm[arm][s] = {
                "seeds": [r["seed"] for r in rs], "wer": round(wer, 2), "wer_std": wer_sd,
                "cer": round(cer, 2), "cer_std": cer_sd,
                "wer_per_seed": [r["test"][s]["wer"] for r in rs],
            }  # fmt: skip
    comparisons = {}
    for s in test_sets:
        errors = {
            arm: {r["seed"]: utterance_errors(work / "eval" / s / f"{arm}-s{r['seed']}")
                  for r in results["runs"] if r["arm"] == arm}
            for arm in arms_present
        }  # fmt: skip
        for arm, base in COMPARISONS:
            if arm in errors and base in errors and set(errors[arm]) & set(errors[base]):
                c = bootstrap_difference(errors[arm], errors[base])
                c["wer_relative"] = round(
                    c["wer_diff"] / max(per_arm[base][s]["wer"], 1e-9), 4
                )  # vs the baseline's mean over all its seeds
                comparisons.setdefault(s, {})[f"{arm} vs {base}"] = c
    return {"per_arm": per_arm, "comparisons": comparisons, "probes": analyse_probes(work, results)}


# --- main ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--seeds", help="comma-separated (default: the budget's)")
    parser.add_argument(
        "--arms", default=DEFAULT_ARMS,
        help=f"comma-separated, of {', '.join(ARMS)}, or sets of them: "
        + "; ".join(f"{k} = {v}" for k, v in ARM_GROUPS.items()) + f" (default: {DEFAULT_ARMS})",
    )  # fmt: skip
    parser.add_argument("--corpus", type=Path, help="a LibriSpeech-layout or manifest corpus "
                        "instead of the synthetic one")  # fmt: skip
    parser.add_argument("--splits", default="train,dev,test", help="train,dev,test split names")
    parser.add_argument("--eval-data", nargs="*", default=[], metavar="DIR[:SPLIT]",
                        help="more test sets to score every final model on")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, help="runs, models, corpus (default: evidence-<budget>/)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evidence")
    parser.add_argument(
        "--step-cost",
        default=str(THROUGHPUT_RESULT),
        metavar="FILE|measure",
        help="BiRQ/BEST-RQ step-cost ratio of a new plan: the side-by-side benchmark's result "
        "(default) or 'measure' in the plan's own seed-0 runs",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="runs at a time: N runners share the work folder, each with cores/N intra-op "
        "threads (on 2 cores, 2 jobs of 1 thread do 1.5-1.6x the steps per hour of one 2-thread "
        "run: benchmarks/results/throughput)",
    )  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the runs that exist; run nothing")  # fmt: skip
    return parser


def _arm_names(parser: argparse.ArgumentParser, spec: str) -> list[str]:
    """--arms: arm names and set names (ARM_GROUPS), expanded, in order, once each."""
    arms = list(dict.fromkeys(
        arm for a in spec.split(",") if a for arm in ARM_GROUPS.get(a, a).split(",")
    ))  # fmt: skip
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    return arms


def _test_sets(data: Layout, eval_data: list[str]) -> list[TestSet]:
    """The plan's test split first, then every --eval-data DIR[:SPLIT] (named DIR-SPLIT)."""
    test_sets: list[TestSet] = [("test", data.corpus, data.test)]
    for spec in eval_data:
        path, _, split = spec.partition(":")
        test_sets.append(
            (f"{Path(path).name}{'-' + split if split else ''}", Path(path), split or None)
        )
    return test_sets


@dataclass
class Runner:
    """One plan on one work folder: runs an arm and seed at a time (skipping what exists),
    keeps their wall-clock times in wall_s.json and rewrites the report after each."""

    work: Path
    data: Layout
    budget_name: str
    budget: Budget
    test_sets: list[TestSet]
    fraction: float
    """dataset.train_fraction of the labelled subset."""
    meta: dict
    """The plan as results.json records it (argv, labelled data, equal_cost)."""
    out: Path
    step_cost: str
    wall_file: Path = field(init=False)
    walls: dict = field(init=False)

    def __post_init__(self) -> None:
        self.wall_file = self.work / "wall_s.json"
        self.walls = {}
        self.reread_walls()

    def reread_walls(self) -> None:
        """wall_s.json into `walls`: runners sharing the folder (and --jobs' parent, which
        runs nothing) add their times there. Callers after start-up hold wall_s.lock, which
        every writer holds, so a half-written file is never read."""
        if self.wall_file.exists():
            self.walls.update(json.loads(self.wall_file.read_text()))

    def report(self) -> None:
        set_names = [s[0] for s in self.test_sets]
        if (plan := self.work / "plan.json").exists():  # what runners sharing it measured
            self.meta.update(json.loads(plan.read_text()))
        with waiting_lock(self.work / "locks" / "wall_s.lock"):
            self.reread_walls()
        results = collect(self.work, set_names)
        for arm in sorted({r["arm"] for r in results["runs"]}, key=list(ARMS).index):
            if ARMS[arm].labelled_minutes is not None:
                self.labelled(arm)  # the report names each arm's own labelled size
        if results["runs"]:
            stats = analyse_results(self.work, results, set_names)
            with waiting_lock(self.work / "locks" / "report.lock"):  # runners sharing the folder
                write_report(self.out, self.budget_name, self.budget, {**self.meta, "wall_s": self.walls},
                             results, stats, set_names)  # fmt: skip
                archive_runs(self.work, self.out, self.meta, set_names)

    def timed(self, key: str, done: bool, fn, *a):
        """fn(*a), its wall-clock time added to wall_s.json unless it had nothing to do."""
        started = time.perf_counter()
        result = fn(*a)
        if not done:  # re-read: another runner (other arms) may share the work folder
            with waiting_lock(self.work / "locks" / "wall_s.lock"):
                self.reread_walls()
                self.walls[key] = round(self.walls.get(key, 0) + time.perf_counter() - started, 1)
                self.wall_file.write_text(json.dumps(self.walls, indent=2) + "\n")
        return result

    def labelled(self, arm: str) -> float:
        """dataset.train_fraction of the arm's labelled subset (the plan's, or its own size:
        recorded in the plan's meta as labelled_by_arm)."""
        minutes = ARMS[arm].labelled_minutes
        if minutes is None:
            return self.fraction
        known = self.meta.setdefault("labelled_by_arm", {})
        if arm not in known:  # reads every training file's header: once per runner and arm
            fraction, held, _ = labelled_fraction(self.data, minutes)
            known[arm] = {"fraction": fraction, "minutes": held}
        return known[arm]["fraction"]

    def encoder(self, source: str, seed: int, cost_seed: int) -> Path:
        """The pretraining run of arm `source` (trained or resumed here) and its layer
        analysis; an equal-cost arm first reads (or measures, on `cost_seed`) the ratio."""
        with run_lock(self.work / "locks" / f"encoder-{source}-s{seed}.lock",
                      f"the encoder {source}-s{seed}"):  # fmt: skip
            return self._encoder(source, seed, cost_seed)

    def _encoder(self, source: str, seed: int, cost_seed: int) -> Path:
        work, data, budget = self.work, self.data, self.budget
        spec = ARMS[source]
        if spec.equal_cost and spec.cost_of:
            self.meta.setdefault("equal_cost_of", {})[spec.cost_of[0]] = measured_form_cost(
                work, data, budget, cost_seed, *spec.cost_of
            )
        elif spec.equal_cost:
            cost_file = None if self.step_cost == "measure" else Path(self.step_cost)
            self.meta["equal_cost"] = measured_step_cost(work, data, budget, cost_seed, cost_file)
        steps = arm_pretrain_steps(source, budget, self.meta)
        run = work / "pretrain" / f"{source}-s{seed}"
        encoder = self.timed(f"pretrain-{source}-s{seed}", finished(run, steps), pretrain,
                             work, data, source, seed, steps, budget)  # fmt: skip
        label_analysis(encoder, data, budget)
        self.timed(f"probe-{source}-s{seed}", (encoder / "probe" / "probe.json").exists(),
                   phone_probes, encoder, data, budget, work / "probe" / f"floors-s{seed}", seed)  # fmt: skip
        return encoder

    def run_arm(self, arm: str, seed: int, cost_seed: int) -> None:
        """One arm and seed: its encoder, fine-tuned, exported and scored; then the report."""
        work, spec = self.work, ARMS[arm]
        encoder = self.encoder(spec.encoder_of or arm, seed, cost_seed) if spec.pretrained else None
        name = f"{arm}-s{seed}"
        steps = round(self.budget.finetune_steps * spec.finetune_scale)
        ft = self.timed(f"finetune-{name}", finished(work / "finetune" / name, steps),
                        finetune, work, self.data, arm, seed, encoder, self.labelled(arm), self.budget)  # fmt: skip
        scored = all(
            (work / "eval" / s[0] / name / "summary.json").exists() for s in self.test_sets
        )
        self.timed(f"eval-{name}", scored, export_and_score, work, ft, name, self.test_sets)
        self.report()
        print(f"evidence: {arm} seed {seed} done", file=sys.stderr, flush=True)

    def scored(self, arm: str, seed: int) -> bool:
        return all(
            (self.work / "eval" / s[0] / f"{arm}-s{seed}" / "summary.json").exists()
            for s in self.test_sets
        )

    def run_plan(self, tasks: list[tuple[str, int]], cost_seed: int, poll_s: float = 30.0) -> None:
        """Every (arm, seed) in order, as one of the runners sharing the work folder: a task
        another runner holds (or whose encoder, cost runs or floors it is making) waits
        while this runner does the next one, and is taken up again when free."""
        pending = [t for t in tasks if not self.scored(*t)]
        while pending:
            held = []
            for arm, seed in pending:
                try:
                    with run_lock(self.work / "locks" / f"task-{arm}-s{seed}.lock",
                                  f"{arm} seed {seed}"):  # fmt: skip
                        if not self.scored(arm, seed):
                            self.run_arm(arm, seed, cost_seed)
                except RunLocked as ex:
                    print(f"evidence: later: {ex}", file=sys.stderr, flush=True)
                    held.append((arm, seed))
            if held and len(held) == len(pending):  # all held elsewhere: wait for them
                time.sleep(poll_s)
            pending = [t for t in held if not self.scored(*t)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    arms = _arm_names(parser, args.arms)
    seeds = [int(s) for s in (args.seeds or budget.seeds).split(",")]
    work = (args.work or ROOT / f"evidence-{args.budget}").resolve()
    train, dev, test = args.splits.split(",")
    unpacked = archived_plan(work) if args.report_only else None
    if unpacked and not (args.corpus or work / "corpus" / "SPEAKERS.TXT").exists():
        # an unpacked runs.tar.gz: the report from its files, its plan as it was recorded
        data = Layout(Path(unpacked["corpus"]), train, dev, test)
        fraction, labelled, train_hours = (
            unpacked["labelled_fraction"],
            unpacked["labelled_minutes"],
            unpacked["train_hours"],
        )
    else:
        unpacked = None
        data = (Layout(args.corpus.resolve(), train, dev, test) if args.corpus
                else ensure_corpus(work, budget))  # fmt: skip
        fraction, labelled, train_hours = labelled_fraction(data, budget.labelled_minutes)
    meta = {"argv": [a for a in argv if a != "--report-only"], "labelled_fraction": fraction, "labelled_minutes": labelled,
            "train_hours": train_hours, "corpus": str(data.corpus)}  # fmt: skip
    if unpacked:  # the plan's own command line and labelled sizes, not this re-report's
        meta.update({k: unpacked[k] for k in ("argv", "labelled_by_arm") if k in unpacked})
    if not args.report_only and not args.worker:
        record_command(work, meta["argv"])  # the report lists every command of the folder
    if (work / "plan.json").exists():
        meta.update(json.loads((work / "plan.json").read_text()))
    # an unpacked archive: the sets its runs were scored on (the report reads only names)
    test_sets = ([(name, data.corpus, None) for name in unpacked["test_sets"]] if unpacked
                 else _test_sets(data, args.eval_data))  # fmt: skip
    runner = Runner(work, data, args.budget, budget, test_sets, fraction, meta, args.out,
                    args.step_cost)  # fmt: skip
    if args.report_only:
        runner.report()
    elif args.jobs > 1:
        run_jobs(argv, args.jobs)
        runner.report()  # once more, with every runner's results
    else:
        runner.run_plan([(arm, seed) for seed in seeds for arm in arms], seeds[0])
    print(args.out / "REPORT.md")
    return 0


def record_command(work: Path, argv: list[str]) -> None:
    """plan.json's `commands`: every distinct command line run on this work folder."""

    def add(plan: dict) -> bool:
        commands = plan.setdefault("commands", [])
        if argv in commands:
            return False
        commands.append(argv)
        return True

    update_plan(work, add)


def run_jobs(argv: list[str], jobs: int) -> None:
    """`jobs` runners of the same plan on the same work folder (`Runner.run_plan` shares the
    tasks out), each with its share of the cores; a failed runner fails the plan after the
    others finish what they hold."""
    threads = shared_threads(jobs)
    env = {**os.environ, **threads_env(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--jobs", "1", "--worker"]
    print(f"evidence: {jobs} runners of {threads} thread(s) each", file=sys.stderr, flush=True)
    procs = []
    for i in range(jobs):
        procs.append(subprocess.Popen(cmd, env=env))
        time.sleep(5 if i + 1 < jobs else 0)  # the first claims its task before the next looks
    if failed := [p.args for p in procs if p.wait() != 0]:
        raise SystemExit(f"evidence: {len(failed)} of {jobs} runners failed (their errors above)")


if __name__ == "__main__":
    sys.exit(main())
