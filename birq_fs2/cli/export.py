"""``birq-export RUN_DIR OUT_DIR --name NAME``: a training checkpoint -> a standalone
safetensors checkpoint plus a fairseq2 asset card, so that

    FAIRSEQ2_USER_ASSET_DIR=OUT_DIR python -c "from fairseq2.models import load_model; load_model('NAME')"

(or the card copied into ~/.config/fairseq2/assets/) loads the model, and ``--model OUT_DIR``
names it on our command lines. RUN_DIR is a ``birq-pretrain`` output (the last checkpoint
is exported) or a ``birq-finetune`` output (the best checkpoint by validation WER; its
character vocabulary is exported with it as ``NAME.dict.ltr.txt``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import yaml
from fairseq2.models.wav2vec2.asr import WAV2VEC2_ASR_FAMILY
from safetensors.torch import save_file

from birq_fs2.models.config import BIRQ_FAMILY
from birq_fs2.models.hub import VOCABULARY_FILE, ModelSourceError, run_checkpoint

EXPORTABLE_FAMILIES = (BIRQ_FAMILY, WAV2VEC2_ASR_FAMILY)


class ExportError(ValueError):
    pass


def export_checkpoint(run_dir: Path, out_dir: Path, name: str, *, step: int | None = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta_file = run_dir / "checkpoints" / "model.yaml"
    if not meta_file.exists():
        raise ExportError(
            f"{meta_file}: missing; is {run_dir} a birq-pretrain or birq-finetune output directory?"
        )
    meta = yaml.safe_load(meta_file.read_text())
    family = meta.get("model_family")
    if family not in EXPORTABLE_FAMILIES:
        raise ExportError(
            f"{meta_file}: model family {family!r}, not one of {', '.join(EXPORTABLE_FAMILIES)}."
        )
    vocab = run_dir / VOCABULARY_FILE
    if family == WAV2VEC2_ASR_FAMILY and not vocab.exists():
        raise ExportError(f"{vocab}: missing; a CTC model is useless without its vocabulary.")
    try:
        step, shard = run_checkpoint(run_dir, step)
    except ModelSourceError as ex:
        raise ExportError(str(ex)) from None
    state = torch.load(shard, map_location="cpu", weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    card = {
        "name": name,
        "model_family": family,
        "model_config": meta["model_config"],
        "checkpoint": weights.name,  # relative to this card's folder
    }
    if family == WAV2VEC2_ASR_FAMILY:
        shutil.copyfile(vocab, out_dir / f"{name}.{VOCABULARY_FILE}")
        card["vocabulary"] = f"{name}.{VOCABULARY_FILE}"
    card["exported_from"] = str(shard.parents[3].resolve())
    card_file = out_dir / f"{name}.yaml"
    card_file.write_text(yaml.safe_dump(card, sort_keys=False))
    return card_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a birq-pretrain or birq-finetune OUTPUT_DIR")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", required=True, help="asset card name")
    parser.add_argument(
        "--step", type=int, help="checkpoint step (default: best by WER, else last)"
    )
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    try:
        card = export_checkpoint(args.run_dir, args.out_dir, args.name, step=args.step)
    except Exception as ex:  # noqa: BLE001
        if args.debug:
            raise
        print(f"birq-export: error: {ex}", file=sys.stderr)
        return 2
    print(
        f"{card} (--model {args.out_dir}, or FAIRSEQ2_USER_ASSET_DIR={args.out_dir} ... load_model({args.name!r}))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
