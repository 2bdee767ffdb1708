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
measured) once and kept in `<work>/plan.json`. Writes REPORT.md, results.json and
two plots under --out; runs and models stay in --work (not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from birq_fs2.experiments.runs import read_metrics  # noqa: E402
from birq_fs2.metrics import (  # noqa: E402
    FINETUNE_METRICS,
    LABEL_QUALITY_METRICS,
    PRETRAIN_METRICS,
    display,
    series,
)

CONFIGS = ROOT / "birq_fs2" / "recipes"
PRETRAIN_PRESET = CONFIGS / "pretrain" / "configs" / "tiny_cpu.yaml"
FINETUNE_PRESET = CONFIGS / "finetune" / "configs" / "tiny_cpu.yaml"
SUBSET_SEED = 0
"""One labelled subset for every arm and seed: only the initial encoder differs."""


@dataclass(frozen=True)
class Budget:
    hours: float
    """Training audio of the synthetic corpus (dev and test: 10 % of it each, other speakers)."""
    speakers: int
    labelled_minutes: float
    pretrain_steps: int
    pretrain_validate_every: int
    finetune_steps: int
    finetune_validate_every: int
    label_utterances: int
    """Dev utterances of the layer analysis (birq-labels) of each pretrained encoder."""
    seeds: str


BUDGETS = {
    "quick": Budget(
        hours=0.03, speakers=6, labelled_minutes=1.0, pretrain_steps=4,
        pretrain_validate_every=2, finetune_steps=4, finetune_validate_every=2,
        label_utterances=10, seeds="0",
    ),
    "full": Budget(
        hours=2.0, speakers=40, labelled_minutes=10.0, pretrain_steps=400,
        pretrain_validate_every=100, finetune_steps=300, finetune_validate_every=50,
        label_utterances=200, seeds="0,1,2",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Arm:
    title: str
    pretrain: list[str] | None
    """Pretraining overrides; None: no pretraining (the fine-tuning starts from scratch)."""
    equal_cost: bool = False
    """Pretrained for the steps that BiRQ's measured step cost buys, not the budget's."""
    finetune: tuple[str, ...] = ()
    """Fine-tuning overrides (probes of the fine-tuning recipe; empty for the comparison)."""
    encoder_of: str | None = None
    """Fine-tune the encoder that arm pretrained (same seed) instead of pretraining again."""
    pretrain_scale: float = 1.0
    """Pretraining steps as a multiple of the budget's."""
    baseline: str | None = None
    """Probes only: the arm it is compared with (same fine-tuning recipe, or the default)."""
    knob: bool = False
    """A comparison arm that is also a row of "making pretraining pay" (against `scratch`):
    the knob it changes (here: pretraining length) is one that was tried to make it pay."""

    @property
    def probe(self) -> bool:
        """Part of "making pretraining pay" (one recipe knob changed), not the comparison."""
        return self.baseline is not None

    @property
    def pretrained(self) -> bool:
        return self.pretrain is not None or self.encoder_of is not None


ENH = "model.config_overrides.enhanced"
CONV = "model.config_overrides.conv_module"
ARMS: dict[str, Arm] = {
    "scratch": Arm("no pretraining", None),
    "bestrq": Arm("BEST-RQ, equal steps", ["model.arch=bestrq_tiny"]),
    "birq": Arm("BiRQ (defaults)", []),
    "bestrq_cost": Arm("BEST-RQ, equal compute", ["model.arch=bestrq_tiny"], equal_cost=True),
    # The same comparison at 3x the pretraining steps: the first length at which BEST-RQ
    # paid in the 10-minute regime (found as a probe, `bestrq_long`, which kept its name).
    "bestrq_long": Arm(
        "BEST-RQ, 3x pretraining steps", ["model.arch=bestrq_tiny"], pretrain_scale=3.0, knob=True
    ),
    "birq_long": Arm("BiRQ (defaults), 3x pretraining steps", [], pretrain_scale=3.0),
    "bestrq_cost_long": Arm(
        "BEST-RQ, equal compute to `birq_long`",
        ["model.arch=bestrq_tiny"],
        equal_cost=True,
        pretrain_scale=3.0,
    ),
    # The convolution module (model.conv_module): w2v-BERT 2.0's causal layer-norm one,
    # which the transformers export needs; fine-tuned with the birq_ctc family.
    "birq_long_ln": Arm(
        "BiRQ (defaults), layer-norm causal convolutions, 3x pretraining steps",
        [f"{CONV}.norm=layer_norm", f"{CONV}.causal=true"],
        finetune=("model.family=birq_ctc", f"{CONV}.norm=layer_norm", f"{CONV}.causal=true"),
        pretrain_scale=3.0,
    ),
    "birq_long_ln_centred": Arm(
        "BiRQ (defaults), layer-norm centred convolutions, 3x pretraining steps",
        [f"{CONV}.norm=layer_norm"],
        finetune=("model.family=birq_ctc", f"{CONV}.norm=layer_norm"),
        pretrain_scale=3.0,
    ),
    "birq_masked": Arm("BiRQ, label_input: masked", [f"{ENH}.label_input=masked"]),
    "birq_st": Arm("BiRQ, label_grad: st", [f"{ENH}.label_grad=st"]),
    # Making pretraining pay: one knob of the fine-tuning recipe each, a BEST-RQ arm against
    # the no-pretraining arm fine-tuned with the same recipe.
    "bestrq_freeze": Arm(
        "BEST-RQ, encoder frozen for the first 50 fine-tuning steps",
        None,
        finetune=("pretrained.freeze_encoder_for_n_steps=50",),
        encoder_of="bestrq",
        baseline="scratch",
    ),
    "scratch_lr5e-4": Arm(
        "no pretraining, fine-tuning lr 5e-4",
        None,
        finetune=("optimizer.config.lr=5e-4",),
        baseline="scratch",
    ),
    "bestrq_lr5e-4": Arm(
        "BEST-RQ, fine-tuning lr 5e-4",
        None,
        finetune=("optimizer.config.lr=5e-4",),
        encoder_of="bestrq",
        baseline="scratch_lr5e-4",
    ),
}
ARM_GROUPS = {
    "comparison": "scratch,bestrq,birq,bestrq_cost",
    "long": "scratch,bestrq_long,birq_long,bestrq_cost_long",
    "probes": "bestrq_freeze,scratch_lr5e-4,bestrq_lr5e-4",
}
"""Sets of arms `--arms` takes by name (each can run as its own runner on one work folder)."""
DEFAULT_ARMS = "comparison,long"
COMPARISONS = [
    ("bestrq", "scratch"), ("birq", "scratch"), ("birq", "bestrq"), ("birq", "bestrq_cost"),
    ("bestrq_long", "scratch"), ("birq_long", "scratch"), ("birq_long", "bestrq_long"),
    ("birq_long", "bestrq_cost_long"), ("birq_long_ln", "birq_long"),
    ("birq_long_ln_centred", "birq_long"), ("birq_long_ln", "birq_long_ln_centred"),
    ("birq_masked", "birq"), ("birq_st", "birq"),
    *((name, arm.baseline) for name, arm in ARMS.items() if arm.probe),
]  # fmt: skip
"""(arm, baseline): reported when both have runs; the difference is arm - baseline."""


@dataclass(frozen=True)
class Layout:
    corpus: Path
    train: str
    dev: str
    test: str


# --- running --------------------------------------------------------------------------


def _run(cmd: list[str], log: Path, what: str) -> float:
    """One recipe process, its output in `log`; returns the wall-clock seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"evidence: {what} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "FAIRSEQ2_NO_PROGRESS": "1"}
        )
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}; log {log}):\n{tail}")
    return time.perf_counter() - started


def finished(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step_{steps}").is_dir()


def _recipe(
    work: Path, data: Layout, recipe: str, run: Path, seed: int, steps: int, every: int,
    extra: list[str],
) -> Path:  # fmt: skip
    """Runs (or resumes) one recipe on the plan's data; returns its output folder."""
    if finished(run, steps):
        return run
    preset = PRETRAIN_PRESET if recipe == "pretrain" else FINETUNE_PRESET
    cmd = [
        sys.executable, "-m", f"birq_fs2.recipes.{recipe}", str(run), "--config-file", str(preset),
        "--config", f"dataset.config_overrides.path={data.corpus}",
        f"dataset.train_split={data.train}", f"dataset.valid_split={data.dev}",
        f"common.seed={seed}", f"regime.num_steps={steps}",
        f"regime.validate_every_n_steps={every}", f"regime.checkpoint_every_n_steps={every}",
        f"regime.publish_metrics_every_n_steps={max(1, every // 10)}", *extra,
    ]  # fmt: skip
    what = f"{'pretraining' if recipe == 'pretrain' else 'fine-tuning'} {run.name}"
    with run_lock(work / "locks" / f"{recipe}-{run.name}.lock", what):
        _run(cmd, work / "logs" / f"{recipe}-{run.name}.log", what)
    return run


@contextlib.contextmanager
def run_lock(path: Path, what: str):
    """Two runners on one work folder (the comparison and the probes) must not train the
    same run at once: the second stops with this error instead of corrupting the first."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"{what}: another evidence runner is running it now ({path} is locked); "
                "run the other arms or seeds, or wait for it."
            ) from None
        yield


def pretrain(work: Path, data: Layout, arm: str, seed: int, steps: int, budget: Budget) -> Path:
    every = min(budget.pretrain_validate_every, steps)
    extra = [
        f"lr_scheduler.config.num_warmup_steps={max(1, steps // 10)}",
        *(ARMS[arm].pretrain or []),
    ]
    return _recipe(
        work, data, "pretrain", work / "pretrain" / f"{arm}-s{seed}", seed, steps, every, extra
    )


def finetune(
    work: Path, data: Layout, arm: str, seed: int, encoder: Path | None, fraction: float,
    budget: Budget,
) -> Path:  # fmt: skip
    steps = budget.finetune_steps
    extra = [
        f"dataset.train_fraction={fraction:.6f}", f"dataset.train_subset_seed={SUBSET_SEED}",
        *([f"pretrained.model={encoder}"] if encoder is not None else []), *ARMS[arm].finetune,
    ]  # fmt: skip
    run = work / "finetune" / f"{arm}-s{seed}"
    return _recipe(
        work, data, "finetune", run, seed, steps, min(budget.finetune_validate_every, steps), extra
    )


def export_and_score(
    work: Path, finetuned: Path, name: str, test_sets: list[tuple[str, Path, str]]
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


def compute_per_step(run: Path) -> float:
    """Mean seconds of computation per training step (fairseq2's "Compute Time", which
    leaves out data loading, checkpoints and validation), over every logged interval but
    the first (one-time start-up costs), or over the first alone when it is the only one."""
    rows = [r for r in read_metrics(run / "metrics" / "train.jsonl") if "Compute Time" in r]
    first = rows[0]["Step"] if len(rows) > 1 else 0
    total, steps, last = 0.0, 0, first
    for r in rows[1:] if len(rows) > 1 else rows:
        total += r["Compute Time"]
        steps += r["Step"] - last
        last = r["Step"]
    if steps == 0:
        raise RuntimeError(f"{run}: no Compute Time in metrics/train.jsonl")
    return total / steps


def cost_matched(steps: int, ratio: float) -> int:
    """BEST-RQ steps that cost what `steps` BiRQ steps cost (never fewer than `steps`)."""
    return max(steps, round(steps * ratio))


def arm_pretrain_steps(arm: str, budget: Budget, cost: dict | None) -> int:
    spec = ARMS[arm]
    steps = round(budget.pretrain_steps * spec.pretrain_scale)
    return cost_matched(steps, cost["ratio"]) if spec.equal_cost else steps


THROUGHPUT_RESULT = ROOT / "benchmarks" / "results" / "throughput" / "throughput.json"


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
    plan_file = work / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    if "equal_cost" not in plan:
        if source is not None and source.exists():
            side = json.loads(source.read_text())
            ratio = side["birq_over_bestrq"]
            plan["equal_cost"] = {
                "birq_s_per_step": ratio["birq_s_per_step"], "bestrq_s_per_step": ratio["bestrq_s_per_step"],
                "ratio": ratio["ratio"],
                "measured_on": f"side by side by benchmarks/train_throughput.py on {side['machine']}",
            }  # fmt: skip
        else:
            birq = pretrain(work, data, "birq", seed, budget.pretrain_steps, budget)
            bestrq = pretrain(work, data, "bestrq", seed, budget.pretrain_steps, budget)
            birq_s, bestrq_s = compute_per_step(birq), compute_per_step(bestrq)
            plan["equal_cost"] = {
                "birq_s_per_step": round(birq_s, 4), "bestrq_s_per_step": round(bestrq_s, 4),
                "ratio": round(birq_s / bestrq_s, 3), "measured_on": f"seed {seed}",
            }  # fmt: skip
        plan_file.write_text(json.dumps(plan, indent=2) + "\n")
    return plan["equal_cost"]


# --- results ---------------------------------------------------------------------------


def hypotheses(eval_dir: Path) -> list[tuple[str, str, str]]:
    """(utterance id, reference, hypothesis) of birq-evaluate's hypotheses.tsv."""
    lines = (eval_dir / "hypotheses.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [(utt_id, ref, hyp) for utt_id, _, _, ref, hyp in (line.split("\t") for line in lines)]


def utterance_errors(eval_dir: Path) -> dict[str, tuple[int, int, int, int]]:
    """{utterance id: (word errors, reference words, char errors, reference chars)}."""
    from birq_fs2.scoring import count_errors

    rows = {}
    for utt_id, ref, hyp in hypotheses(eval_dir):
        c = count_errors([ref], [hyp])
        rows[utt_id] = (c.word_errors, c.ref_words, c.char_errors, c.ref_chars)
    return rows


def error_types(eval_dir: Path) -> dict[str, float]:
    """Word and character hits, substitutions, deletions and insertions over the whole test
    set, in percent of the reference words (characters)."""
    from birq_fs2.scoring import alignments

    rows = hypotheses(eval_dir)
    words, chars = alignments([ref for _, ref, _ in rows], [hyp for _, _, hyp in rows])
    types = {}
    for unit, out in (("word", words), ("char", chars)):
        ref = out.hits + out.substitutions + out.deletions
        for kind in ("hits", "substitutions", "deletions", "insertions"):
            types[f"{unit}_{kind}"] = round(100.0 * getattr(out, kind) / max(ref, 1), 2)
    return types


def bootstrap_difference(
    arm: dict[int, dict[str, tuple]], base: dict[int, dict[str, tuple]], *,
    samples: int = 2000, seed: int = 0,
) -> dict:  # fmt: skip
    """Mean over the paired seeds of (arm - base) corpus WER and CER, with a 95 % percentile
    bootstrap interval over test utterances (one resample shared by both arms and every
    seed, so what is resampled is the test set, not the runs)."""
    seeds = sorted(set(arm) & set(base))
    ids = sorted(set.intersection(*(set(arm[s]) & set(base[s]) for s in seeds)))
    a = np.array([[arm[s][u] for u in ids] for s in seeds], dtype=np.float64)  # (S, U, 4)
    b = np.array([[base[s][u] for u in ids] for s in seeds], dtype=np.float64)

    def rates(x: np.ndarray, idx: np.ndarray) -> np.ndarray:  # -> (B, S, 2) in percent
        sums = x[:, idx].sum(axis=2)  # (S, B, 4)
        wer, cer = sums[..., 0] / sums[..., 1], sums[..., 2] / sums[..., 3]
        return 100 * np.stack([wer, cer], axis=-1).transpose(1, 0, 2)

    full = np.arange(len(ids))[None]
    diff = (rates(a, full) - rates(b, full))[0]  # (S, 2): per seed
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(samples, len(ids)))
    boot = (rates(a, idx) - rates(b, idx)).mean(axis=1)  # (B, 2)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {
        "seeds": seeds,
        "utterances": len(ids),
        "wer_diff_per_seed": [round(float(d), 2) for d in diff[:, 0]],
        "cer_diff_per_seed": [round(float(d), 2) for d in diff[:, 1]],
        "wer_diff": round(float(diff[:, 0].mean()), 2),
        "cer_diff": round(float(diff[:, 1].mean()), 2),
        "wer_ci95": [round(float(lo[0]), 2), round(float(hi[0]), 2)],
        "cer_ci95": [round(float(lo[1]), 2), round(float(hi[1]), 2)],
        "wer_seed_ci95": seed_interval(diff[:, 0]),
        "cer_seed_ci95": seed_interval(diff[:, 1]),
    }


T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
"""Student t quantiles (0.975) for 1-10 degrees of freedom."""


def seed_interval(per_seed: np.ndarray) -> list[float] | None:
    """95 % t-interval of the mean per-seed difference: the spread of training runs, which
    the utterance bootstrap does not see (None with one seed)."""
    n = len(per_seed)
    if n < 2:
        return None
    half = T_975[min(n - 1, len(T_975)) - 1] * per_seed.std(ddof=1) / np.sqrt(n)
    return [round(float(per_seed.mean() - half), 2), round(float(per_seed.mean() + half), 2)]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def pretrain_summary(run: Path, layers: dict | None) -> dict:
    valid = read_metrics(run / "metrics" / "valid" / "valid.jsonl")
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
    }
    if layers:
        blocks = {k: v for k, v in layers["streams"].items() if k.startswith("layer_")}
        name, best = max(blocks.items(), key=lambda kv: kv[1]["pnmi"])
        summary["best_layer"] = {"block": int(name.split("_")[1]), "pnmi": best["pnmi"]}
    return summary


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
        ft_valid = read_metrics(work / "finetune" / name / "metrics" / "valid" / "valid.jsonl")
        wer, cer = display("wer", FINETUNE_METRICS), display("cer", FINETUNE_METRICS)
        runs.append({
            "arm": arm, "seed": seed,
            "test": {s: {k: json.loads((d / "summary.json").read_text())[k]
                         for k in ("wer", "cer", "num_utterances")}
                     for s, d in scored.items()},
            "pretrain": pretrain_summary(pre, json.loads(labels.read_text())
                                         if labels.exists() else None)
            if spec.pretrained else None,
            "error_types": error_types(scored[test_sets[0]]),
            "dev_wer": series(ft_valid, "wer", FINETUNE_METRICS),
            "dev_best": min(({"wer": r[wer], "cer": r[cer], "step": r["Step"]}
                             for r in ft_valid if wer in r), key=lambda b: b["wer"], default=None),
        })  # fmt: skip
    return {"runs": runs}


def analyse_results(work: Path, results: dict, test_sets: list[str]) -> dict:
    arms_present = sorted({r["arm"] for r in results["runs"]}, key=list(ARMS).index)
    per_arm = {}
    for arm in arms_present:
        rs = [r for r in results["runs"] if r["arm"] == arm]
        per_arm[arm] = {}
        for s in test_sets:
            wer, wer_sd = _mean_std([r["test"][s]["wer"] for r in rs])
            cer, cer_sd = _mean_std([r["test"][s]["cer"] for r in rs])
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
    return {"per_arm": per_arm, "comparisons": comparisons}


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.1f}" + (f" ± {sd:.1f}" if sd is not None else "")


def _fmt(v, spec=".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def reading(stats: dict, test_set: str) -> list[str]:
    """The answers to the issue's questions, in words, from the numbers."""
    comps = stats["comparisons"].get(test_set, {})
    lines = []

    def verdict(key: str, question: str) -> None:
        c = comps.get(key)
        if c is None:
            lines.append(f"- {question} Not measured yet.")
            return

        def sign(ci: list[float]) -> int:  # -1: fewer errors, +1: more, 0: undecided
            return -1 if ci[1] < 0 else 1 if ci[0] > 0 else 0

        words, chars = sign(c["wer_ci95"]), sign(c["cer_ci95"])
        if words == chars == -1:
            answer = "Yes"
        elif words == chars == 1:
            answer = "No, it is worse"
        elif {words, chars} == {-1, 1}:
            answer = "Mixed: " + ("fewer word errors, more character errors" if words < 0
                                  else "more word errors, fewer character errors")  # fmt: skip
        elif -1 in (words, chars):
            answer = f"Fewer {'word' if words < 0 else 'character'} errors only"
        elif 1 in (words, chars):
            answer = f"More {'word' if words > 0 else 'character'} errors only"
        else:
            answer = "Not distinguishable"
        n = len(c["seeds"])
        seed_ci = c.get("wer_seed_ci95")
        if n < 3:
            caveat = (f" With {n} seed{'s' if n > 1 else ''} the intervals cover the sampling of "
                      "the test set, not the spread of training runs.")  # fmt: skip
        elif seed_ci and seed_ci[0] <= 0 <= seed_ci[1]:
            caveat = (f" Over training runs the WER difference is within the seed spread (t-interval "
                      f"over the {n} seeds [{seed_ci[0]:+.1f}, {seed_ci[1]:+.1f}]).")  # fmt: skip
        else:
            caveat = (f" It holds over training runs too (t-interval over the {n} seeds "
                      f"[{seed_ci[0]:+.1f}, {seed_ci[1]:+.1f}]).")  # fmt: skip
        lo, hi = c["wer_ci95"]
        clo, chi = c["cer_ci95"]
        lines.append(
            f"- {question} **{answer}**: WER {c['wer_diff']:+.1f} points ({c['wer_relative']:+.1%} "
            f"relative; per seed {', '.join(f'{d:+.1f}' for d in c['wer_diff_per_seed'])}; 95 % CI "
            f"[{lo:+.1f}, {hi:+.1f}]), CER {c['cer_diff']:+.1f} points (95 % CI [{clo:+.1f}, "
            f"{chi:+.1f}]); {n} seed{'s' if n > 1 else ''}.{caveat}"
        )

    verdict("bestrq vs scratch", "Does BEST-RQ beat no pretraining?")
    verdict("birq vs scratch", "Does BiRQ beat no pretraining?")
    verdict("birq vs bestrq", "Does BiRQ beat BEST-RQ at equal pretraining steps?")
    verdict("birq vs bestrq_cost", "Does BiRQ beat BEST-RQ at equal pretraining compute?")
    long = "At 3x the pretraining steps (the `*_long` arms):"
    verdict("bestrq_long vs scratch", f"{long} does BEST-RQ beat no pretraining?")
    verdict("birq_long vs scratch", f"{long} does BiRQ beat no pretraining?")
    verdict("birq_long vs bestrq_long", f"{long} does BiRQ beat BEST-RQ at equal steps?")
    verdict("birq_long vs bestrq_cost_long", f"{long} does BiRQ beat BEST-RQ at equal compute?")
    knobs = knob_rows(comps)
    paying = [
        f"`{arm}` ({len(c['seeds'])} seed{'s' if len(c['seeds']) > 1 else ''}: WER "
        f"{c['wer_diff']:+.1f}, CER {c['cer_diff']:+.1f} against `{base}`)"
        for arm, base in knobs
        if (c := comps[f"{arm} vs {base}"])["wer_ci95"][1] < 0 and c["cer_ci95"][1] < 0
    ]  # fmt: skip
    if knobs:
        lines.append(
            "- Which probes make pretraining pay in both WER and CER (test CIs below 0)? "
            + (", ".join(paying) + "." if paying else "None so far.")
        )
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


def knob_rows(comps: dict) -> list[tuple[str, str]]:
    """(arm, baseline) of "making pretraining pay" that have a comparison: every probe, and
    the comparison arms whose knob was tried for it, against no pretraining."""
    rows = [(a, s.baseline or "scratch") for a, s in ARMS.items() if s.probe or s.knob]
    return [(a, b) for a, b in rows if f"{a} vs {b}" in comps]


def write_report(
    out: Path, work: Path, budget_name: str, budget: Budget, meta: dict, results: dict,
    stats: dict, test_sets: list[str],
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    arms = {
        a: {"title": ARMS[a].title, "probe": ARMS[a].probe, "baseline": ARMS[a].baseline,
            "pretrain_steps": arm_pretrain_steps(ARMS[a].encoder_of or a, budget,
                                                 meta.get("equal_cost"))
            if ARMS[a].pretrained else 0}
        for a in stats["per_arm"]
    }  # fmt: skip
    payload = {"budget": budget_name, **asdict(budget), **meta, "arms": arms, **results, **stats}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    _plots(results, stats, out, test_sets[0])
    main_set = test_sets[0]
    cost = meta.get("equal_cost")
    lines = [
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
    ]
    if cost:
        lines += [
            f"Equal compute: BiRQ's training step cost {cost['birq_s_per_step']:.3f} s against "
            f"BEST-RQ's {cost['bestrq_s_per_step']:.3f} s (ratio {cost['ratio']:.2f}, measured "
            + (
                f"on this machine in this plan's {cost['measured_on']} runs, fairseq2's Compute Time); "
                if cost["measured_on"].startswith("seed")
                else f"{cost['measured_on']}); "
            )
            + ", ".join(
                f"`{a}` pretrains BEST-RQ for {arm_pretrain_steps(a, budget, cost)} steps"
                for a in stats["per_arm"]
                if ARMS[a].equal_cost
            )  # fmt: skip
            + ".",
            "",
        ]
    lines += [f"## Test WER / CER ({main_set})", "",
              "| arm | seeds | pretraining steps | dev WER % | test WER % | test CER % | WER per seed | "
              "anchor PNMI | enhanced PNMI | enhanced ppl (noise-free) | best block PNMI |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, by_set in stats["per_arm"].items():
        if ARMS[arm].probe:
            continue
        a = by_set[main_set]
        pre = [r["pretrain"] for r in results["runs"] if r["arm"] == arm and r["pretrain"]]

        def mean_of(key: str, pre=pre) -> str:
            vals = [p[key] for p in pre if isinstance(p.get(key), (int, float))]
            return _fmt(sum(vals) / len(vals)) if vals else "-"

        best = [p["best_layer"] for p in pre if p.get("best_layer")]
        best_txt = ", ".join(f"{b['pnmi']:.3f} (block {b['block']})" for b in best) if best else "-"
        ppl = [p["enhanced_noise_free_perplexity"] for p in pre
               if isinstance(p.get("enhanced_noise_free_perplexity"), (int, float))]  # fmt: skip
        steps = sorted({p["steps"] for p in pre if p.get("steps")})
        lines.append(
            f"| {ARMS[arm].title} (`{arm}`) | {len(a['seeds'])} | "
            f"{', '.join(map(str, steps)) or 0} | {_dev_best(results, arm)[0]} | "
            f"{_pm(a['wer'], a['wer_std'])} | "
            f"{_pm(a['cer'], a['cer_std'])} | {', '.join(f'{w:.1f}' for w in a['wer_per_seed'])} | "
            f"{mean_of('anchor_pnmi')} | {mean_of('enhanced_pnmi')} | "
            f"{_fmt(sum(ppl) / len(ppl), '.1f') if ppl else '-'} | {best_txt} |"
        )
    lines += ["", "Mean ± standard deviation over seeds. PNMI: the pretrained encoder's labels "
              "of every dev frame against the true phones (the recipe's last validation; "
              "`best block`: birq-labels' best conformer block per seed).", ""]  # fmt: skip
    if len(test_sets) > 1:
        lines += ["## Other test sets (--eval-data)", "",
                  "| arm | " + " | ".join(f"{s} WER % | {s} CER %" for s in test_sets[1:]) + " |",
                  "|---|" + "---|---|" * (len(test_sets) - 1)]  # fmt: skip
        for arm, by_set in stats["per_arm"].items():
            cells = [f"{_pm(by_set[s]['wer'], by_set[s]['wer_std'])} | "
                     f"{_pm(by_set[s]['cer'], by_set[s]['cer_std'])}" for s in test_sets[1:]]  # fmt: skip
            lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
        lines.append("")
    for s in test_sets:
        comps = stats["comparisons"].get(s, {})
        if not comps:
            continue
        lines += [f"## Paired differences ({s})", "",
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
        lines += ["", "Negative = the first arm has fewer errors. CI: 95 % percentile "
                  "bootstrap over test utterances (2000 resamples) of the mean over seeds (the "
                  "test set's sampling); over seeds: Student t-interval of the per-seed "
                  "differences (the spread of training runs).", ""]  # fmt: skip
    lines += error_section(results, stats, main_set)
    lines += probe_section(results, stats, main_set)
    lines += ["## Reading", "", *reading(stats, main_set), ""]
    lines += ["![dev WER against fine-tuning step](dev_wer.png)", "",
              "![test WER per arm](test_wer.png)", "", "## Commands", "", "```bash",
              " ".join(["python benchmarks/evidence.py", *meta["argv"]]), *probe_command(results, meta),
              "```", "",
              "Wall-clock seconds per run (this machine): "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(meta["wall_s"].items())), ""]  # fmt: skip
    (out / "REPORT.md").write_text("\n".join(lines))


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
    wer, wer_sd = _mean_std([b["wer"] for b in best])
    cer, cer_sd = _mean_std([b["cer"] for b in best])
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


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the runs that exist; run nothing")  # fmt: skip
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    arms = list(dict.fromkeys(
        arm for a in args.arms.split(",") if a for arm in ARM_GROUPS.get(a, a).split(",")
    ))  # fmt: skip
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    seeds = [int(s) for s in (args.seeds or budget.seeds).split(",")]
    work = (args.work or ROOT / f"evidence-{args.budget}").resolve()
    if args.corpus:
        train, dev, test = args.splits.split(",")
        data = Layout(args.corpus.resolve(), train, dev, test)
    else:
        data = ensure_corpus(work, budget)
    test_sets = [("test", data.corpus, data.test)]
    for spec in args.eval_data:
        path, _, split = spec.partition(":")
        test_sets.append(
            (f"{Path(path).name}{'-' + split if split else ''}", Path(path), split or None)
        )
    fraction, labelled, train_hours = labelled_fraction(data, budget.labelled_minutes)
    wall_file = work / "wall_s.json"
    walls = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    meta = {"argv": [a for a in argv if a != "--report-only"], "labelled_fraction": fraction, "labelled_minutes": labelled,
            "train_hours": train_hours, "corpus": str(data.corpus)}  # fmt: skip
    if (work / "plan.json").exists():
        meta.update(json.loads((work / "plan.json").read_text()))
    set_names = [s[0] for s in test_sets]

    def report() -> None:
        results = collect(work, set_names)
        if results["runs"]:
            stats = analyse_results(work, results, set_names)
            write_report(args.out, work, args.budget, budget, {**meta, "wall_s": walls},
                         results, stats, set_names)  # fmt: skip

    def timed(key: str, done: bool, fn, *a):
        """fn(*a), its wall-clock time added to wall_s.json unless it had nothing to do."""
        started = time.perf_counter()
        result = fn(*a)
        if not done:  # re-read: another runner (other arms) may share the work folder
            walls.update(json.loads(wall_file.read_text()) if wall_file.exists() else {})
            walls[key] = round(walls.get(key, 0) + time.perf_counter() - started, 1)
            wall_file.write_text(json.dumps(walls, indent=2) + "\n")
        return result

    if args.report_only:
        report()
        print(args.out / "REPORT.md")
        return 0
    for seed in seeds:
        for arm in arms:
            spec = ARMS[arm]
            encoder = None
            if spec.pretrained:
                source = spec.encoder_of or arm
                if ARMS[source].equal_cost:
                    cost_file = None if args.step_cost == "measure" else Path(args.step_cost)
                    meta["equal_cost"] = measured_step_cost(work, data, budget, seeds[0], cost_file)
                steps = arm_pretrain_steps(source, budget, meta.get("equal_cost"))
                run = work / "pretrain" / f"{source}-s{seed}"
                encoder = timed(f"pretrain-{source}-s{seed}", finished(run, steps), pretrain,
                                work, data, source, seed, steps, budget)  # fmt: skip
                label_analysis(encoder, data, budget)
            name = f"{arm}-s{seed}"
            ft = timed(f"finetune-{name}", finished(work / "finetune" / name, budget.finetune_steps),
                       finetune, work, data, arm, seed, encoder, fraction, budget)  # fmt: skip
            scored = all((work / "eval" / s[0] / name / "summary.json").exists() for s in test_sets)
            timed(f"eval-{name}", scored, export_and_score, work, ft, name, test_sets)
            report()
            print(f"evidence: {arm} seed {seed} done", file=sys.stderr, flush=True)
    print(args.out / "REPORT.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
