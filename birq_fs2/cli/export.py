"""``birq-export RUN_DIR OUT_DIR --name NAME``: a training checkpoint -> a standalone
safetensors checkpoint plus a fairseq2 asset card, so that

    FAIRSEQ2_USER_ASSET_DIR=OUT_DIR python -c "from fairseq2.models import load_model; load_model('NAME')"

(or the card copied into ~/.config/fairseq2/assets/) loads the model, and ``--model OUT_DIR``
names it on our command lines. RUN_DIR is a ``birq-pretrain`` output (the last checkpoint
is exported) or a ``birq-finetune`` output (the best checkpoint by validation WER; its
character vocabulary is exported with it as ``NAME.dict.ltr.txt``). The work is
`birq_fs2.export.export_checkpoint`.

``birq-export MODEL OUT_DIR --format hf``: a pretrained encoder (a run folder, an export
folder or a card name) -> a Hugging Face transformers folder (``config.json``,
``model.safetensors``, ``preprocessor_config.json``) that
``transformers.Wav2Vec2BertModel.from_pretrained(OUT_DIR)`` loads with no remote code; for
encoders pretrained with ``conv_module: {norm: layer_norm, causal: true}``
(`birq_fs2.hf_export` says why). Needs ``pip install 'birq-fs2[hf]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from birq_fs2.cli import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "run_dir", type=Path,
        help="a birq-pretrain or birq-finetune OUTPUT_DIR (with --format hf also an export folder or card name)",
    )  # fmt: skip
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--format", choices=("fairseq2", "hf"), default="fairseq2",
        help="fairseq2: safetensors + asset card (default); hf: a transformers Wav2Vec2BertModel folder",
    )  # fmt: skip
    parser.add_argument("--name", help="asset card name (--format fairseq2)")
    parser.add_argument(
        "--step", type=int, help="checkpoint step (default: best by WER, else last)"
    )
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.format == "fairseq2" and not args.name:
        parser.error("--name is required with --format fairseq2")
    return run_command("birq-export", args, lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if args.format == "hf":
        from birq_fs2.hf_export import export_hf

        out = export_hf(args.run_dir, args.out_dir, step=args.step)
        print(f"{out} (transformers: Wav2Vec2BertModel.from_pretrained({str(out)!r}))")
        return 0
    from birq_fs2.export import export_checkpoint

    card = export_checkpoint(args.run_dir, args.out_dir, args.name, step=args.step)
    print(
        f"{card} (--model {args.out_dir}, or FAIRSEQ2_USER_ASSET_DIR={args.out_dir} ... load_model({args.name!r}))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
