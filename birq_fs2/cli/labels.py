"""Which layer carries the phones? HuBERT's layer analysis for a BiRQ / BEST-RQ encoder.

    birq-labels --model RUN_OR_EXPORT_OR_CARD --data CORPUS [--split dev]
        [--out DIR] [--max-utterances 200]

For each utterance of a split with phone alignments (``birq-data synth`` writes them),
the model's unmasked forward gives the output of every conformer block; each block's
output is quantized as BiRQ's enhanced labels are (`enhanced.label_norm`, then the
enhanced random-projection quantizer, noise-free nearest code), the input as BEST-RQ's
anchor labels are. Each stream is scored against the phones of the same 40 ms frames
(`birq_fs2.label_stats`: PNMI, phone and cluster purity, code usage, perplexity).
Writes ``labels.json``, ``labels.md`` and ``labels.png`` under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairseq2.nn import BatchLayout
from torch import Tensor

from birq_fs2.cli import run_command
from birq_fs2.data.alignments import aligned_utterances, frame_phones
from birq_fs2.data.audio import AudioError, AudioLoader, FbankExtractor, utterance_seed
from birq_fs2.label_stats import stream_quality
from birq_fs2.models.label_streams import frame_label_streams, layer_quantizer
from birq_fs2.models.model import BirqModel
from birq_fs2.models.source import ModelSourceError, resolve_model


def analyse(
    model_spec: str,
    data: Path,
    split: str,
    *,
    max_utterances: int = 200,
    out_dir: Path | None = None,
) -> dict:
    source = resolve_model(model_spec)
    model = source.load()
    if not isinstance(model, BirqModel):
        raise ModelSourceError(
            f"{model_spec}: a '{source.family}' model; the layer analysis needs a birq encoder."
        )
    aligned, alignments = aligned_utterances(data, split, max_utterances)
    extractor = FbankExtractor(source.feature_config())
    loader, quantizer = AudioLoader(), layer_quantizer(model)
    layers = list(range(1, model.config.encoder_config.num_encoder_layers + 1))
    frame_seconds = model.config.frame_ms / 1000
    labels: dict[str, list[Tensor]] = {}
    phones: list[str] = []
    skipped = []
    for u in aligned:
        try:
            waveform = loader(u.path).waveform
        except AudioError as ex:
            skipped.append(str(ex))
            continue
        fbank = extractor(waveform, utterance_seed(0, "labels", "dither"))[None]
        layout = BatchLayout(fbank.shape[:2], seq_lens=[fbank.shape[1]])
        (streams,) = frame_label_streams(model, fbank, layout, layers, quantizer)
        phones += frame_phones(alignments[u.id], frame_seconds, streams["anchor"].shape[0])
        for name, stream in streams.items():
            labels.setdefault(name, []).append(stream)
    quality = stream_quality(labels, phones)
    result = {
        "model": model_spec,
        "data": str(data),
        "split": split,
        "utterances": len(aligned) - len(skipped),
        "frames": len(phones),
        "phones": len(set(phones)),
        "label_layer": model.label_layer if model.has_enhanced else None,
        "codebook_size": quantizer.codebook_size,
        "streams": {name: q.to_dict() for name, q in quality.items()},
        "skipped": skipped,
    }
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def _rows(result: dict) -> list[tuple[str, dict]]:
    return list(result["streams"].items())


def markdown(result: dict) -> str:
    lines = [
        f"# Label quality: `{result['model']}` on {result['split']}",
        "",
        f"{result['utterances']} utterances, {result['frames']} frames of "
        f"{result['phones']} phones; codebook size {result['codebook_size']}; "
        f"BiRQ's label layer: {result['label_layer'] or 'none (BEST-RQ model)'}. Chance PNMI: "
        "the same labels shuffled over the frames (the estimator's bias at this frame count).",
        "",
        "| labels | PNMI | chance PNMI | phone purity | cluster purity | codes used | perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, q in _rows(result):
        mark = " (label layer)" if name == f"layer_{result['label_layer']}" else ""
        lines.append(
            f"| {name}{mark} | {q['pnmi']:.3f} | {q['chance_pnmi']:.3f} | {q['phone_purity']:.3f} "
            f"| {q['cluster_purity']:.3f} "
            f"| {q['codes_used']} | {q['perplexity']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "labels.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "labels.md").write_text(markdown(result))
    streams = result["streams"]
    layers = [int(n.split("_")[1]) for n in streams if n.startswith("layer_")]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for ax, key, title in ((axes[0], "pnmi", "PNMI"), (axes[1], "phone_purity", "Phone purity")):
        ax.plot(
            layers, [streams[f"layer_{n}"][key] for n in layers], "o-", label="layer RPQ labels"
        )
        ax.axhline(streams["anchor"][key], color="grey", linestyle="--", label="anchor (input)")
        if result["label_layer"]:
            ax.axvline(result["label_layer"], color="C3", alpha=0.3, label="label_layer")
        ax.set_xlabel("conformer block")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "labels.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-labels", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", required=True, help="birq-pretrain folder, export folder or card"
    )
    parser.add_argument("--data", required=True, type=Path, help="corpus with *.phones.txt")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--out", type=Path, help="folder for labels.{json,md,png}")
    parser.add_argument("--max-utterances", type=int, default=200)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def labels() -> int:
        result = analyse(
            args.model, args.data, args.split, max_utterances=args.max_utterances, out_dir=args.out
        )
        print(markdown(result), end="")
        return 0

    return run_command("birq-labels", args, labels)


if __name__ == "__main__":
    sys.exit(main())
