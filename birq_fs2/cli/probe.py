"""Frozen-encoder phone probes of pretrained encoders (`birq_fs2.probe`).

    birq-probe --model [NAME=]RUN_OR_EXPORT_OR_CARD [--model ...] --data CORPUS
        [--splits train,dev,test] [--no-floors | --only-floors] [--out DIR]
        [--train-utterances 600] [--eval-utterances 200] [--epochs 20] [--seed 0]

For each encoder: a linear phone classifier per layer (test frame accuracy, the epoch
chosen on dev) and a SUPERB-style phone recogniser over all blocks (test PER). The floors
(unless --no-floors): the first encoder's architecture freshly initialised (``random``)
and the stacked log-mel input alone (``fbank``). Probes train on the train split's
speakers, choose on dev, report on test (held-out speakers in the synthetic corpora);
phones are CMU's 39 (`birq_fs2.data.phones`). Writes probe.json, probe.md and probe.png
under --out (default: probe/) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from birq_fs2.cli import run_command
from birq_fs2.data.alignments import aligned_utterances
from birq_fs2.data.audio import FbankExtractor
from birq_fs2.data.phones import PHONES
from birq_fs2.models.model import BirqModel
from birq_fs2.models.source import ModelSourceError, resolve_model
from birq_fs2.probe import INPUT, ProbeConfig, ProbeSplit, extract, probe_encoder

SPLIT_ROLES = ("train", "dev", "test")


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    return (name, path) if sep else (Path(spec.rstrip("/")).name or spec, spec)


def run_probes(
    models: list[str],
    data: Path,
    *,
    splits: tuple[str, str, str] = SPLIT_ROLES,
    floors: bool = True,
    only_floors: bool = False,
    train_utterances: int = 600,
    eval_utterances: int = 200,
    config: ProbeConfig | None = None,
    init_seed: int | None = None,
    out_dir: Path | None = None,
    log=print,
) -> dict:
    """Probes every encoder of `models` ([NAME=]SPEC) on `data` and the floors (with
    `only_floors`: the floors of the first model alone; the random one initialised with
    `init_seed`, default the probes' seed); the result probe.json holds."""
    config = config or ProbeConfig()
    limits = (train_utterances, eval_utterances, eval_utterances)
    corpus = {
        role: aligned_utterances(data, split, n)
        for role, split, n in zip(SPLIT_ROLES, splits, limits, strict=True)
    }
    encoders: dict[str, dict] = {}
    sizes: dict[str, dict] = {}

    def probe(name: str, kind: str, spec: str, model, features, streams=None) -> None:
        started = time.perf_counter()
        extractor = FbankExtractor(features)
        feats: dict[str, ProbeSplit] = {
            role: extract(model, extractor, utts, alignments, blocks=kind != "input")
            for role, (utts, alignments) in corpus.items()
        }
        for role, split in feats.items():
            sizes.setdefault(role, {"utterances": len(split.ids), "frames": split.frames,
                                    "unmapped_frames": dict(split.unmapped), "skipped": split.skipped})  # fmt: skip
        result = probe_encoder(feats["train"], feats["dev"], feats["test"], config, streams=streams)
        encoders[name] = {"kind": kind, "model": spec, **result,
                          "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        log(f"birq-probe: {name}: best layer {result['best_layer']['stream']} "
            f"{100 * result['best_layer']['test_accuracy']:.1f} % frames, "
            f"PER {result['recogniser']['test_per']:.1f} %")  # fmt: skip

    first = None
    for spec in models:
        name, path = _named(spec)
        source = resolve_model(path)
        model = source.load()
        if not isinstance(model, BirqModel):
            raise ModelSourceError(
                f"{path}: a '{source.family}' model; the probes need a birq encoder."
            )
        layers = model.config.encoder_config.num_encoder_layers
        streams = [f"block_{k}" for k in range(1, layers + 1)]
        if not only_floors:
            probe(name, "trained", path, model, source.feature_config(), streams)
        first = first or (source, model)
        if only_floors:
            break
    if (floors or only_floors) and first is not None:
        source, model = first
        features = source.feature_config()
        init = config.seed if init_seed is None else init_seed
        probe("random", "random", f"{_named(models[0])[1]} (initialisation, seed {init})",
              source.initial_model(init), features, streams)  # fmt: skip
        probe(INPUT, "input", "stacked log-mel input", model, features, [INPUT])
    result = {
        "data": str(data), "splits": dict(zip(SPLIT_ROLES, splits, strict=True)),
        "phones": list(PHONES), "sizes": sizes, "config": asdict(config),
        "encoders": encoders,
    }  # fmt: skip
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    lines = [
        f"# Phone probes on `{result['data']}`",
        "",
        "Frozen encoders. Linear: a logistic-regression phone classifier per layer, test frame "
        "accuracy (epoch chosen on dev). PR: SUPERB-style phone recogniser (softmax-weighted "
        "sum of the blocks, linear layer, CTC), test phone error rate. Train / dev / test: "
        + ", ".join(
            f"{r} {s['utterances']} utterances ({s['frames']} frames)" for r, s in sizes.items()
        )
        + f"; {len(result['phones']) - 1} phones and silence.",
        "",
        "| encoder | best layer | frame accuracy % (test) | PR PER % (test) | PR layer weights | "
        "frame accuracy % per layer |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in result["encoders"].items():
        per_layer = ", ".join(
            f"{s.replace('block_', '')}: {100 * v['test_accuracy']:.1f}"
            for s, v in e["linear"].items()
        )
        weights = ", ".join(f"{w:.2f}" for w in e["recogniser"]["layer_weights"])
        lines.append(
            f"| {name} ({e['kind']}) | {e['best_layer']['stream']} "
            f"| {100 * e['best_layer']['test_accuracy']:.1f} | {e['recogniser']['test_per']:.1f} "
            f"| {weights} | {per_layer} |"
        )
    unmapped = sum((Counter(s["unmapped_frames"]) for s in sizes.values()), Counter())
    if unmapped:
        lines += ["", "Frames left out (alignment names that are not phones): "
                  + ", ".join(f"`{k}` {v}" for k, v in sorted(unmapped.items()))]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "probe.md").write_text(markdown(result))
    fig, (acc, per) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    names = list(result["encoders"])
    for name in names:
        e = result["encoders"][name]
        blocks = [s for s in e["linear"] if s != INPUT]
        if blocks:
            acc.plot([int(s.split("_")[1]) for s in blocks],
                     [100 * e["linear"][s]["test_accuracy"] for s in blocks], "o-", label=name)  # fmt: skip
        if INPUT in e["linear"]:
            acc.axhline(
                100 * e["linear"][INPUT]["test_accuracy"],
                color="grey",
                ls="--",
                label=f"{INPUT} input",
            )
    acc.set_xlabel("conformer block")
    acc.set_ylabel("test frame accuracy %")
    acc.set_title("Linear phone probe per layer")
    acc.grid(alpha=0.3)
    acc.legend(fontsize=7)
    per.bar(names, [result["encoders"][n]["recogniser"]["test_per"] for n in names], color="C0")
    per.set_ylabel("test PER %")
    per.set_title("Phone recogniser (CTC)")
    per.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "probe.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-probe", description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC",
                        help="birq-pretrain folder, birq-export folder or card; repeatable")  # fmt: skip
    parser.add_argument("--data", required=True, type=Path, help="corpus with *.phones.txt")
    parser.add_argument("--splits", default="train,dev,test", help="train,dev,test split names")
    parser.add_argument("--no-floors", action="store_true", help="skip the random and fbank rows")
    parser.add_argument("--only-floors", action="store_true",
                        help="only the random and fbank rows (of the first --model's architecture)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("probe"))
    parser.add_argument("--train-utterances", type=int, default=600)
    parser.add_argument("--eval-utterances", type=int, default=200, help="per dev and test split")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    splits = tuple(args.splits.split(","))
    if len(splits) != 3:
        parser.error(f"--splits takes three names (train,dev,test), not {args.splits!r}")

    def probes() -> int:
        config = ProbeConfig(epochs=args.epochs, recogniser_epochs=args.epochs, seed=args.seed)
        result = run_probes(
            args.model, args.data, splits=splits, floors=not args.no_floors, only_floors=args.only_floors,
            train_utterances=args.train_utterances, eval_utterances=args.eval_utterances,
            config=config, out_dir=args.out,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )  # fmt: skip
        print(markdown(result), end="")
        return 0

    return run_command("birq-probe", args, probes)


if __name__ == "__main__":
    sys.exit(main())
