"""``birq-export RUN_DIR OUT_DIR --name NAME``: a training checkpoint -> a standalone
safetensors checkpoint plus a fairseq2 asset card, so that

    FAIRSEQ2_USER_ASSET_DIR=OUT_DIR python -c "from fairseq2.models import load_model; load_model('NAME')"

(or the card copied into ~/.config/fairseq2/assets/) loads the pretrained model.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from birq_fs2.models.config import BIRQ_FAMILY


class ExportError(ValueError):
    pass


def last_step_dir(run_dir: Path, step: int | None = None) -> Path:
    ckpt = run_dir / "checkpoints"
    steps = sorted(
        (int(m.group(1)), p)
        for p in ckpt.glob("step_*")
        if (m := re.fullmatch(r"step_(\d+)", p.name))
    )
    if not steps:
        raise ExportError(f"{ckpt}: no checkpoints (step_N folders) to export.")
    if step is None:
        return steps[-1][1]
    for n, p in steps:
        if n == step:
            return p
    raise ExportError(
        f"{ckpt}: no checkpoint of step {step} (have {', '.join(str(n) for n, _ in steps)})."
    )


def export_checkpoint(run_dir: Path, out_dir: Path, name: str, *, step: int | None = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta_file = run_dir / "checkpoints" / "model.yaml"
    if not meta_file.exists():
        raise ExportError(f"{meta_file}: missing; is {run_dir} a birq-pretrain output directory?")
    meta = yaml.safe_load(meta_file.read_text())
    if meta.get("model_family") != BIRQ_FAMILY:
        raise ExportError(
            f"{meta_file}: model family {meta.get('model_family')!r}, not {BIRQ_FAMILY!r}."
        )
    step_dir = last_step_dir(run_dir, step)
    shard = step_dir / "model" / "pp_00" / "tp_00" / "sdp_00.pt"
    if not shard.exists():
        raise ExportError(
            f"{shard}: missing (only single-shard checkpoints can be exported so far)."
        )
    state = torch.load(shard, map_location="cpu", weights_only=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    card = {
        "name": name,
        "model_family": BIRQ_FAMILY,
        "model_config": meta["model_config"],
        "checkpoint": weights.name,  # relative to this card's folder
        "exported_from": f"{step_dir.resolve()}",
    }
    card_file = out_dir / f"{name}.yaml"
    card_file.write_text(yaml.safe_dump(card, sort_keys=False))
    return card_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="birq-export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a birq-pretrain OUTPUT_DIR")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", required=True, help="asset card name")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the last)")
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
        f"{card} (load with FAIRSEQ2_USER_ASSET_DIR={args.out_dir} ... load_model({args.name!r}))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
