"""A training run -> a standalone safetensors checkpoint plus a fairseq2 asset card that
carries everything the model needs besides its weights (the path behind ``birq-export``).

The card holds the model family and config, the filterbank settings the model was
trained with (``features``: inference builds its features from them), a CTC model's
vocabulary (``NAME.dict.ltr.txt``, by relative path) and where the weights came from
(``exported_from``: the run folder's name and step, never an absolute path, since a
card is meant to be shared). DDP and FSDP runs export alike (`birq_fs2.checkpoints`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from safetensors.torch import save_file

from birq_fs2.checkpoints import CHECKPOINTS_DIR, MODEL_METADATA_FILE, step_dir_name
from birq_fs2.models.asr import CTC_FAMILIES
from birq_fs2.models.config import BIRQ_FAMILY
from birq_fs2.models.source import (
    FEATURES_FIELD,
    VOCABULARY_FILE,
    ModelSourceError,
    resolve_model,
)

EXPORTABLE_FAMILIES = (BIRQ_FAMILY, *CTC_FAMILIES)


class ExportError(ValueError):
    """A run folder that cannot be exported; the message names the file and why."""


def export_checkpoint(run_dir: Path, out_dir: Path, name: str, *, step: int | None = None) -> Path:
    """Export `step` of `run_dir` (default: the best by validation score, else the last)
    to ``out_dir/NAME.safetensors`` + ``out_dir/NAME.yaml``; returns the card's path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta_file = run_dir / CHECKPOINTS_DIR / MODEL_METADATA_FILE
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
    if family in CTC_FAMILIES and not vocab.exists():
        raise ExportError(f"{vocab}: missing; a CTC model is useless without its vocabulary.")
    try:
        source = resolve_model(run_dir, step=step)
        state = source.state_dict()
    except ModelSourceError as ex:
        raise ExportError(str(ex)) from None
    assert source.step is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    card = {
        "name": name,
        "model_family": family,
        "model_config": meta["model_config"],
        "checkpoint": weights.name,  # relative to this card's folder
    }
    if source.features is not None:
        card[FEATURES_FIELD] = source.features.to_dict()
    if family in CTC_FAMILIES:
        shutil.copyfile(vocab, out_dir / f"{name}.{VOCABULARY_FILE}")
        card["vocabulary"] = f"{name}.{VOCABULARY_FILE}"
    card["exported_from"] = step_dir_name(run_dir, source.step)
    card_file = out_dir / f"{name}.yaml"
    card_file.write_text(yaml.safe_dump(card, sort_keys=False))
    return card_file
