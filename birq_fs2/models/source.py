"""One way to name a model on the command line (``--model``) and in recipe configs:

- an asset card name (``birq_demo_tiny``; cards in ~/.config/fairseq2/assets, in
  FAIRSEQ2_USER_ASSET_DIR, or shipped with the package);
- a directory written by ``birq-export`` (``NAME.yaml`` card + ``NAME.safetensors``);
- a recipe output directory (``birq-pretrain`` / ``birq-finetune``): its best checkpoint
  by validation score when it has scores (fine-tuning: WER), else its last one.

Every case goes through fairseq2's own `load_model` with an asset card, so state-dict
checks, dtype and device handling are fairseq2's (an FSDP run's sharded checkpoint is
merged first, see `birq_fs2.checkpoints`). What a model needs besides its weights
travels with it: a CTC model's character vocabulary (``dict.ltr.txt`` in a run
directory, the card's ``vocabulary`` field, a path relative to the card, for exported
models) and the filterbank settings it was trained with (the run's
``dataset.pipeline``, the card's ``features`` field).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from fairseq2.assets import AssetCard, StandardAssetStore, get_asset_store
from fairseq2.assets.metadata_provider import FileAssetMetadataLoader
from fairseq2.models import load_model
from fairseq2.models.family import ModelFamily
from fairseq2.models.hub import ModelHub
from fairseq2.nn.utils.module import reset_non_persistent_buffers, to_empty
from fairseq2.runtime.dependency import get_dependency_resolver
from torch import Tensor
from torch.nn import Module

from birq_fs2.checkpoints import (
    CHECKPOINTS_DIR,
    MODEL_METADATA_FILE,
    CheckpointError,
    load_model_state,
    model_state_files,
    refused_pickle,
    select_step,
    unpickling_error,
)
from birq_fs2.data.audio import FbankConfig
from birq_fs2.data.vocab import CharVocabulary

VOCABULARY_FILE = "dict.ltr.txt"
FEATURES_FIELD = "features"


class ModelSourceError(ValueError):
    """A --model that names nothing loadable; the message names it and why."""


@dataclass
class ModelSource:
    """Where a model comes from, resolved to a fairseq2 asset card."""

    spec: str
    card: AssetCard
    family: str
    vocabulary_path: Path | None
    features: FbankConfig | None = None
    """The filterbank settings the model was trained with; None for cards without them."""
    step: int | None = None
    run_dir: Path | None = None
    """The recipe output folder, when the model comes from one."""

    def load(
        self, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Module:
        device = device or torch.device("cpu")
        try:
            if self._is_sharded():
                model = self._load_merged(device, dtype)
            else:
                model = load_model(self.card, device=device, dtype=dtype)
        except CheckpointError as ex:
            raise ModelSourceError(str(ex)) from None
        except Exception as ex:  # noqa: BLE001 - fairseq2 raises several kinds
            if (unpickling := unpickling_error(ex)) is not None:
                checkpoint = self.card.field("checkpoint").as_uri().to_path()
                raise ModelSourceError(f"{checkpoint}: {refused_pickle(unpickling)}") from None
            raise ModelSourceError(f"{self.spec}: cannot be loaded ({ex})") from ex
        return model.eval()

    def state_dict(self) -> dict[str, Tensor]:
        """The model's unsharded state (what ``load().state_dict()`` holds), on the CPU."""
        if self.run_dir is None or self.step is None:
            return self.load().state_dict()
        return load_model_state(self.run_dir, self.step, self._meta_model().state_dict())

    def vocabulary(self) -> CharVocabulary:
        if self.vocabulary_path is None or not self.vocabulary_path.exists():
            raise ModelSourceError(
                f"{self.spec}: no character vocabulary ({self.vocabulary_path or 'the card has no `vocabulary` field'})."
            )
        return CharVocabulary.load(self.vocabulary_path)

    def feature_config(self) -> FbankConfig:
        """The training filterbank settings, or the defaults for a card without them."""
        return self.features if self.features is not None else FbankConfig()

    def _is_sharded(self) -> bool:
        return (
            self.run_dir is not None
            and self.step is not None
            and len(model_state_files(self.run_dir, self.step)) > 1
        )

    def initial_model(self, seed: int) -> Module:
        """The same architecture and config, freshly initialised (the probes' floor)."""
        family = get_dependency_resolver().resolve(ModelFamily, key=self.family)
        config = family.get_model_config(self.card)
        torch.manual_seed(seed)
        hub = ModelHub(family, get_asset_store())
        return hub.create_new_model(config, device=torch.device("cpu")).eval()

    def _meta_model(self) -> Module:
        family = get_dependency_resolver().resolve(ModelFamily, key=self.family)
        config = family.get_model_config(self.card)
        hub = ModelHub(family, get_asset_store())
        return hub.create_new_model(config, device=torch.device("cpu"), meta=True)

    def _load_merged(self, device: torch.device, dtype: torch.dtype | None) -> Module:
        # fairseq2's loader concatenates every per-rank tensor, FSDP's replicated buffers
        # included; the merged state goes into a model built on the meta device instead.
        assert self.run_dir is not None and self.step is not None
        model = self._meta_model()
        state = load_model_state(self.run_dir, self.step, model.state_dict())
        to_empty(model, device)
        model.load_state_dict(state)
        reset_non_persistent_buffers(model)
        return model.to(dtype) if dtype is not None else model


def resolve_model(spec: str | Path, *, step: int | None = None) -> ModelSource:
    """A card name, an export directory or a recipe output directory -> `ModelSource`."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / CHECKPOINTS_DIR / MODEL_METADATA_FILE).exists():
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
    meta = yaml.safe_load((run_dir / CHECKPOINTS_DIR / MODEL_METADATA_FILE).read_text())
    try:
        step = select_step(run_dir, step)
        first_shard = model_state_files(run_dir, step)[0]
    except CheckpointError as ex:
        raise ModelSourceError(str(ex)) from None
    card = AssetCard(
        f"{run_dir.name}@step_{step}",
        {"model_family": meta["model_family"], "model_config": meta["model_config"],
         "checkpoint": str(first_shard.resolve())},
    )  # fmt: skip
    vocab = run_dir / VOCABULARY_FILE
    return ModelSource(
        spec, card, meta["model_family"], vocab if vocab.exists() else None,
        features=run_features(run_dir), step=step, run_dir=run_dir,
    )  # fmt: skip


def run_features(run_dir: Path) -> FbankConfig | None:
    """The filterbank settings of a recipe run (its config.yaml's dataset.pipeline.features;
    runs written before that section existed kept them in dataset.pipeline itself)."""
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        return None
    pipeline = (yaml.safe_load(config_file.read_text()).get("dataset") or {}).get("pipeline")
    if not pipeline:
        return None
    return FbankConfig.from_dict(pipeline.get("features", pipeline), source=f"{config_file}")


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
    features_field = card.maybe_get_field(FEATURES_FIELD)
    features = None
    if features_field is not None:
        try:
            features = FbankConfig.from_dict(
                features_field.value, source=f"{spec}: `{FEATURES_FIELD}`"
            )
        except ValueError as ex:
            raise ModelSourceError(str(ex)) from None
    return ModelSource(spec, card, family, vocab, features=features)
