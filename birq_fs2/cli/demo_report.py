"""The demo's report: ``python -m birq_fs2.cli.demo_report OUT`` writes OUT/REPORT.md and its
plots from what ``make demo`` left in OUT (fairseq2's JSONL metrics of the runs, the
``birq-evaluate`` summaries and hypotheses, the recipe configs the runs saved).

    OUT/pretrain          BiRQ pretraining run        -> report/pretrain_curves.png
    OUT/finetune-birq     CTC from the BiRQ encoder   -> report/finetune_curves.png
    OUT/finetune-scratch  CTC from random weights (the baseline, same budget)
    OUT/eval/{birq,scratch}/summary.json, hypotheses.tsv   (test speakers)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from birq_fs2.cli import run_command
from birq_fs2.experiments.plots import plot_curves, plot_panels
from birq_fs2.experiments.runs import metric_rows, read_hypotheses
from birq_fs2.metrics import FINETUNE_METRICS, display, series

RUNS = ("pretrain", "finetune-birq", "finetune-scratch")
EVIDENCE = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "evidence" / "results.json"
)
"""benchmarks/evidence.py's committed results (a source checkout only: birq_fs2/cli/../..)."""
FINETUNE_RUNS = (("birq", "finetune-birq", "BiRQ-pretrained encoder"),
                 ("scratch", "finetune-scratch", "no pretraining (baseline)"))  # fmt: skip


def _plot_finetune(runs: dict[str, tuple[list[dict], list[dict]]], out: Path) -> None:
    panels = (("CTC loss (bits/char, train)", "train", "ctc_loss"),
              ("Validation WER (%)", "valid", "wer"),
              ("Validation CER (%)", "valid", "cer"))  # fmt: skip
    plot_panels(
        [
            (title, [
                (label, "-" if split == "train" else "o-",
                 series(train if split == "train" else valid, key, FINETUNE_METRICS))
                for label, (train, valid) in runs.items()
            ])
            for title, split, key in panels
        ],
        out,
        "fine-tuning step",
    )  # fmt: skip


# What a reader needs to reproduce a run; the full config is the run's config.yaml.
_CONFIG_KEYS = {
    "model": ("name", "family", "arch", "config_overrides"),
    "pretrained": ("model", "step", "freeze_encoder_for_n_steps"),
    "dataset": ("train_split", "valid_split", "train_fraction"),
    "schedule": None,
    "optimizer": ("name", "config.lr", "config.betas", "config.weight_decay"),
    "lr_scheduler": None,
    "regime": ("num_steps", "validate_every_n_steps", "score_metric"),
}


def _config_lines(run_dir: Path) -> list[str]:
    config = run_dir / "config.yaml"
    if not config.exists():
        return []
    import yaml

    full = yaml.safe_load(config.read_text())
    keep: dict[str, object] = {}
    for section, keys in _CONFIG_KEYS.items():
        if section not in full:
            continue
        if keys is None:
            keep[section] = full[section]
            continue
        picked: dict[str, object] = {}
        for key in keys:
            value: object = full[section]
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                picked[key] = value
        keep[section] = picked
    return [
        f"Configuration excerpt (full: `{config}`):",
        "",
        "```yaml",
        yaml.safe_dump(keep, sort_keys=False, default_flow_style=None).strip(),
        "```",
    ]


def write_demo_report(out: Path, num_examples: int = 6) -> Path:
    out = Path(out)
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# birq-fs2 demo", ""]

    summaries = {}
    for key, _, _ in FINETUNE_RUNS:
        f = out / "eval" / key / "summary.json"
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing; run the evaluation step of `make demo` first.")
        summaries[key] = json.loads(f.read_text())
    birq, scratch = summaries["birq"], summaries["scratch"]
    lines += [
        "## Test WER / CER (held-out speakers, greedy CTC, jiwer)", "",
        "| fine-tuned from | WER % | CER % | word errors / words | utterances |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for key, _, label in FINETUNE_RUNS:
        s = summaries[key]
        lines.append(
            f"| {label} | {s['wer']:.2f} | {s['cer']:.2f} | {s['word_errors']} / {s['ref_words']} | {s['num_utterances']} |"
        )
    lines += ["", f"Relative WER change from pretraining: {_relative(birq['wer'], scratch['wer'])}; "
              f"CER: {_relative(birq['cer'], scratch['cer'])}. Both fine-tuning runs use the same "
              "configuration and step budget; only the encoder's initial weights differ.", ""]  # fmt: skip
    # (train, valid) metric rows of each run, read once.
    metrics = {
        run: (metric_rows(out / run, "train"), metric_rows(out / run, "valid")) for run in RUNS
    }
    lines += _reading(birq, scratch, metrics["pretrain"][0], metrics["finetune-birq"][0])
    lines += _evidence_lines(EVIDENCE)

    lines += _data_lines(out / "corpus" / "SPEAKERS.TXT")
    lines += _runs_lines(metrics)

    pretrain = out / "pretrain"
    train, valid = metrics["pretrain"]
    if train:
        plot_curves(train, valid, report_dir / "pretrain_curves.png")
        last = train[-1]
        lines += ["## Pretraining (BiRQ tiny)", "", "![pretraining curves](report/pretrain_curves.png)", "",
                  f"Step {last['Step']}: " + ", ".join(
                      f"{k.lower()} {last[k]:.3f}" for k in map(display, ("anchor_loss", "enhanced_loss",
                      "anchor_accuracy", "enhanced_perplexity", "label_nmi")) if isinstance(last.get(k), float)
                  ) + ".", ""]  # fmt: skip
        lines += _config_lines(pretrain) + [""]

    runs = {label: metrics[folder] for _, folder, label in FINETUNE_RUNS}
    _plot_finetune(runs, report_dir / "finetune_curves.png")
    lines += ["## CTC fine-tuning", "", "![fine-tuning curves](report/finetune_curves.png)", ""]
    lines += _config_lines(out / "finetune-birq") + [""]

    lines += [
        "## Example transcripts (test)",
        "",
        "| utterance | reference | BiRQ | baseline |",
        "|---|---|---|---|",
    ]
    hyps = {key: _hypotheses(out / "eval" / key) for key, _, _ in FINETUNE_RUNS}
    for utt in sorted(hyps["birq"])[:num_examples]:
        ref, hyp = hyps["birq"][utt]
        base = hyps["scratch"].get(utt, ("", ""))[1]
        lines.append(f"| {utt} | {ref} | {hyp} | {base} |")
    lines += [
        "",
        f"The fine-tuned model is in `asr/`: `birq-transcribe --model {out / 'asr'} FILE.wav`.",
        "",
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _data_lines(speakers_file: Path) -> list[str]:
    """Speakers and minutes per subset, from the corpus's SPEAKERS.TXT."""
    if not speakers_file.exists():
        return []
    per_subset: dict[str, list[float]] = {}
    for line in speakers_file.read_text().splitlines():
        if line.startswith(";") or not line.strip():
            continue
        fields = [f.strip() for f in line.split("|")]
        per_subset.setdefault(fields[2], []).append(float(fields[3]))
    cells = [
        f"{name}: {len(m)} speakers, {sum(m):.0f} min" for name, m in sorted(per_subset.items())
    ]
    return [
        "## Data",
        "",
        f"Synthetic corpus `{speakers_file.parent}` (disjoint speakers): " + "; ".join(cells) + ".",
        "",
    ]


def _runs_lines(metrics: dict[str, tuple[list[dict], list[dict]]]) -> list[str]:
    """Steps and wall time of each run, from its last training metrics."""
    rows = []
    for folder, (train, _) in metrics.items():
        if train:
            last = train[-1]
            wall = last.get("Wall Time") or last.get("Total Time") or 0.0
            rows.append(f"| `{folder}` | {last['Step']} | {wall / 60:.1f} |")
    if not rows:
        return []
    return ["| run | steps | wall time (min) |", "|---|---|---|", *rows, ""]


def _reading(birq: dict, scratch: dict, pretrain: list[dict], finetune: list[dict]) -> list[str]:
    """One paragraph that says what the table shows, and what to suspect when
    pretraining did not help."""
    scale = (
        f"one seed each (the spread across seeds is in the evidence below), a tiny model of 2.2M "
        f"parameters, {pretrain[-1]['Step'] if pretrain else 0} pretraining and "
        f"{finetune[-1]['Step'] if finetune else 0} fine-tuning steps on synthetic speech"
    )
    if min(birq["wer"], scratch["wer"]) >= 90:
        return [
            f"**Reading.** Neither model transcribes words yet, a smoke run of the path: {scale}.",
            "",
        ]
    helped = birq["wer"] < scratch["wer"]
    text = (
        f"**Reading.** The BiRQ-pretrained encoder {'beats' if helped else 'does not beat'} the "
        f"baseline on this run ({birq['wer']:.1f} vs {scratch['wer']:.1f} % WER): {scale}. It "
        "shows the path working end to end, not what BiRQ does at scale."
    )
    last = pretrain[-1] if pretrain else {}
    perplexity = last.get(display("enhanced_perplexity"))
    if not helped and isinstance(perplexity, float) and perplexity < 16:
        text += (
            f" Suspect first: the enhanced labels collapsed during pretraining (code perplexity "
            f"{perplexity:.1f} at step {last['Step']}, of a codebook of hundreds), so the encoder "
            "learned to predict a handful of self-made codes; compare a `bestrq_tiny` pretraining "
            "(`model.arch=bestrq_tiny`) and the gamma / tau schedule."
        )
    return [text, ""]


def _evidence_lines(results_file: Path) -> list[str]:
    """The same comparison over seeds, from the committed evidence report: one demo run is
    one draw, and its WER moves by several points from seed to seed."""
    if not results_file.exists():
        return []
    evidence = json.loads(results_file.read_text())
    arms = evidence.get("arms", {})
    rows = [
        f"| `{arm}` | {arms[arm]['pretrain_steps']} | {len(s['seeds'])} | "
        f"{s['wer']:.1f} ± {s['wer_std'] or 0:.1f} | {s['cer']:.1f} ± {s['cer_std'] or 0:.1f} |"
        for arm, by_set in evidence["per_arm"].items()
        for s in [by_set["test"]]
        if arm in arms and not arms[arm]["probe"]  # the comparison, not the recipe probes
    ]  # fmt: skip
    if not rows:
        return []
    return [
        "## The same comparison over seeds (benchmarks/evidence.py)", "",
        f"The demo is one seed of the evidence's regime (about {evidence['labelled_minutes']:.0f} "
        "labelled minutes, pretraining on all the unlabelled hours). Over seeds, on "
        f"{evidence['train_hours']:.0f} h of synthetic speech ({evidence['finetune_steps']} "
        "fine-tuning steps), test WER / CER %, mean ± sd:", "",
        "| arm | pretraining steps | seeds | test WER % | test CER % |", "|---|---|---|---|---|",
        *rows, "",
        "The full table, the paired differences with confidence intervals and the reading: "
        "`benchmarks/results/evidence/REPORT.md`.", "",
    ]  # fmt: skip


def _relative(new: float, old: float) -> str:
    return f"{100 * (new - old) / old:+.1f} %" if old else "n/a"


def _hypotheses(eval_dir: Path) -> dict[str, tuple[str, str]]:
    """{utterance id: (reference, hypothesis)} of a birq-evaluate folder."""
    return {utt_id: (ref, hyp) for utt_id, ref, hyp in read_hypotheses(eval_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m birq_fs2.cli.demo_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="the demo's output folder (demo-out)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def report() -> int:
        print(write_demo_report(args.out))
        return 0

    return run_command("demo_report", args, report)


if __name__ == "__main__":
    sys.exit(main())
