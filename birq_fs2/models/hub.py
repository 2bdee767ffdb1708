"""One way to name a model on the command line (``--model``) and in recipe configs:

- an asset card name (``birq_demo_tiny``; cards in ~/.config/fairseq2/assets, in
  FAIRSEQ2_USER_ASSET_DIR, or shipped with the package);
- a directory written by ``birq-export`` (``NAME.yaml`` card + ``NAME.safetensors``);
- a recipe output directory (``birq-pretrain`` / ``birq-finetune``): its best checkpoint
  by validation score when it has scores (fine-tuning: WER), else its last one.

Every case goes through fairseq2's own `load_model` with an asset card, so state-dict
checks, dtype and device handling are fairseq2's. A CTC model's character vocabulary
travels with it: ``dict.ltr.txt`` in a run directory, the card's ``vocabulary`` field
(a path relative to the card) for exported models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from fairseq2.assets import AssetCard, StandardAssetStore, get_asset_store
from fairseq2.assets.metadata_provider import FileAssetMetadataLoader
from fairseq2.models import load_model
from fairseq2.runtime.dependency import get_dependency_resolver
from torch.nn import Module

from birq_fs2.data.vocab import CharVocabulary

VOCABULARY_FILE = "dict.ltr.txt"
_STEP_DIR = re.compile(r"step_(\d+)")


class ModelSourceError(ValueError):
    """A --model that names nothing loadable; the message names it and why."""


@dataclass
class ModelSource:
    """Where a model comes from, resolved to a fairseq2 asset card."""

    spec: str
    card: AssetCard
    family: str
    vocabulary_path: Path | None
    step: int | None = None

    def load(
        self, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Module:
        try:
            model = load_model(self.card, device=device or torch.device("cpu"), dtype=dtype)
        except Exception as ex:  # noqa: BLE001 - fairseq2 raises several kinds
            raise ModelSourceError(f"{self.spec}: cannot be loaded ({ex})") from ex
        return model.eval()

    def vocabulary(self) -> CharVocabulary:
        if self.vocabulary_path is None or not self.vocabulary_path.exists():
            raise ModelSourceError(
                f"{self.spec}: no character vocabulary ({self.vocabulary_path or 'the card has no `vocabulary` field'})."
            )
        return CharVocabulary.load(self.vocabulary_path)


def checkpoint_steps(run_dir: Path) -> list[int]:
    ckpt = Path(run_dir) / "checkpoints"
    return sorted(
        int(m.group(1)) for p in ckpt.glob("step_*") if (m := _STEP_DIR.fullmatch(p.name))
    )


def best_step(run_dir: Path) -> int | None:
    """The step with the best validation score still on disk (fairseq2 writes scores
    oriented so that higher is better), or None without scores."""
    steps = set(checkpoint_steps(run_dir))
    scored = []
    for f in (Path(run_dir) / "checkpoints" / "scores").glob("step_*.txt"):
        m = _STEP_DIR.fullmatch(f.stem)
        if m and int(m.group(1)) in steps:
            scored.append((float(f.read_text().split()[0]), int(m.group(1))))
    return max(scored)[1] if scored else None


def run_checkpoint(run_dir: Path, step: int | None = None) -> tuple[int, Path]:
    """(step, model state file) of a recipe output directory: `step`, else the best
    scored step, else the last."""
    run_dir = Path(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise ModelSourceError(f"{run_dir / 'checkpoints'}: no checkpoints (step_N folders).")
    if step is None:
        step = best_step(run_dir) or steps[-1]
    elif step not in steps:
        raise ModelSourceError(
            f"{run_dir / 'checkpoints'}: no checkpoint of step {step} (have {', '.join(map(str, steps))})."
        )
    shard = run_dir / "checkpoints" / f"step_{step}" / "model" / "pp_00" / "tp_00" / "sdp_00.pt"
    if not shard.exists():
        raise ModelSourceError(
            f"{shard}: missing (only single-shard checkpoints are supported so far)."
        )
    return step, shard


def resolve_model(spec: str | Path, *, step: int | None = None) -> ModelSource:
    """A card name, an export directory or a recipe output directory -> `ModelSource`."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "checkpoints" / "model.yaml").exists():
            return _from_run_dir(spec, path, step)
        return _from_card_dir(spec, path)
    if path.exists():
        raise ModelSourceError(
            f"{spec}: not a model directory (expected a birq-export folder or a recipe output folder)."
        )
    if "/" in spec:
        raise ModelSourceError(f"{spec}: no such directory.")
    card = get_asset_store().maybe_retrieve_card(spec)
    if card is None:
        raise ModelSourceError(f"{spec}: no model card of that name and no such directory.")
    return _from_card(spec, card)


def _from_run_dir(spec: str, run_dir: Path, step: int | None) -> ModelSource:
    meta = yaml.safe_load((run_dir / "checkpoints" / "model.yaml").read_text())
    step, shard = run_checkpoint(run_dir, step)
    card = AssetCard(
        f"{run_dir.name}@step_{step}",
        {"model_family": meta["model_family"], "model_config": meta["model_config"],
         "checkpoint": str(shard.resolve())},
    )  # fmt: skip
    vocab = run_dir / VOCABULARY_FILE
    return ModelSource(spec, card, meta["model_family"], vocab if vocab.exists() else None, step)


def _from_card_dir(spec: str, folder: Path) -> ModelSource:
    loader = get_dependency_resolver().resolve(FileAssetMetadataLoader)
    try:
        store = StandardAssetStore([loader.load(folder.resolve())])
    except Exception as ex:  # noqa: BLE001
        raise ModelSourceError(f"{spec}: unreadable asset cards ({ex})") from None
    cards = [store.retrieve_card(n) for n in sorted(store.asset_names)]
    models = [c for c in cards if c.has_field("model_family")]
    if len(models) != 1:
        found = ", ".join(c.name for c in models) or "none"
        raise ModelSourceError(
            f"{spec}: expected one model card (*.yaml with model_family) in the folder, found {found}."
        )
    return _from_card(spec, models[0])


def _from_card(spec: str, card: AssetCard) -> ModelSource:
    family_field = card.maybe_get_field("model_family")
    if family_field is None:
        raise ModelSourceError(f"{spec}: the asset card {card.name!r} is not a model card.")
    family = str(family_field.value)
    vocab = None
    vocab_field = card.maybe_get_field("vocabulary")
    if vocab_field is not None:
        base = card.metadata.get("__base_path__")
        vocab = Path(str(vocab_field.value))
        if not vocab.is_absolute() and base is not None:
            vocab = Path(base) / vocab
    return ModelSource(spec, card, family, vocab)
