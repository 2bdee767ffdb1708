"""fairseq2 dataset families: ``birq_speech`` (unlabelled audio, pretraining) and
``birq_asr`` (audio + transcripts, CTC).

Both read either a manifest directory (``<split>.tsv`` [+ ``.wrd``, ``dict.ltr.txt``])
or a LibriSpeech root (``<split>/`` subset folders), so a card like

    name: my_librispeech
    dataset_family: birq_asr
    dataset_config:
      path: /data/LibriSpeech

is all a user writes to train on their copy (splits: ``train-clean-100``, ``dev-clean``...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fairseq2.datasets import DataPipelineReader, SyncMode
from fairseq2.gang import Gangs

from birq_fs2.seeds import derive_seed

from .corpus import CorpusError, Utterance, find_splits, load_split, load_vocabulary
from .pipeline import DataStats, SpeechPipelineConfig, create_speech_reader
from .vocab import CharVocabulary

BIRQ_SPEECH_FAMILY = "birq_speech"
BIRQ_ASR_FAMILY = "birq_asr"


@dataclass(kw_only=True)
class SpeechDatasetConfig:
    path: Path | None = None
    """A manifest directory or a LibriSpeech root (required)."""


class SpeechDataset:
    """Unlabelled audio: batches of fbank features (`SequenceBatch`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise CorpusError(f"{self.path}: dataset directory does not exist.")
        self._cache: dict[str, list[Utterance]] = {}

    def splits(self) -> list[str]:
        return find_splits(self.path)[1]

    def utterances(self, split: str) -> list[Utterance]:
        if split not in self._cache:
            self._cache[split] = load_split(self.path, split)
        return self._cache[split]

    def create_reader(
        self,
        split: str,
        gangs: Gangs,
        config: SpeechPipelineConfig,
        *,
        seed: int,
        shuffle: bool = True,
        stats: DataStats | None = None,
        num_accumulate: int = 1,
        sync_mode: SyncMode = SyncMode.UNTIL_FIRST,
        repeat: bool = False,
        fraction: float = 1.0,
        subset_seed: int | None = None,
    ) -> DataPipelineReader:
        """`fraction` < 1 keeps a fixed subset of the split (see `subset`), chosen with
        `subset_seed` (default: `seed`)."""
        utterances = self.utterances(split)
        if fraction < 1.0:
            utterances = subset(utterances, fraction, seed if subset_seed is None else subset_seed)
        return create_speech_reader(
            utterances, config, gangs, seed=seed, shuffle=shuffle, stats=stats,
            num_accumulate=num_accumulate, sync_mode=sync_mode, vocab=self._vocab(), repeat=repeat,
        )  # fmt: skip

    def create_eval_reader(
        self, split: str, gangs: Gangs, config: SpeechPipelineConfig, *, seed: int
    ) -> DataPipelineReader:
        """Every utterance once, in order; ranks keep reading until the last one is done."""
        return self.create_reader(
            split, gangs, config, seed=seed, shuffle=False, sync_mode=SyncMode.UNTIL_LAST
        )

    def _vocab(self) -> CharVocabulary | None:
        return None


@dataclass(kw_only=True)
class AsrDatasetConfig(SpeechDatasetConfig):
    vocabulary_split: str = "train"
    """The split whose transcripts define the character vocabulary when the corpus has
    no dict.ltr.txt (the recipe's `dataset.train_split` chooses what it trains on)."""


class AsrDataset(SpeechDataset):
    """Audio + transcripts: `Seq2SeqBatch` of fbank features and character ids."""

    def __init__(self, path: Path, vocabulary_split: str = "train") -> None:
        super().__init__(path)
        self.vocabulary_split = vocabulary_split
        self._vocabulary: CharVocabulary | None = None

    @property
    def vocabulary(self) -> CharVocabulary:
        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.path, self.vocabulary_split)
        return self._vocabulary

    def _vocab(self) -> CharVocabulary | None:
        return self.vocabulary


def subset(utterances: list[Utterance], fraction: float, seed: int) -> list[Utterance]:
    """About `fraction` of the utterances, chosen by a hash of (seed, id): the same ones
    whatever the order, the rank or the other utterances of the split."""
    threshold = int(fraction * 2**64)
    return [u for u in utterances if derive_seed(seed, u.id, "subset") < threshold]


def _path(config: SpeechDatasetConfig) -> Path:
    if config.path is None:
        raise CorpusError(
            "`dataset_config.path` is not set: point it at a manifest directory or a LibriSpeech root."
        )
    return Path(config.path)


def open_speech_dataset(config: SpeechDatasetConfig) -> SpeechDataset:
    return SpeechDataset(_path(config))


def open_asr_dataset(config: AsrDatasetConfig) -> AsrDataset:
    return AsrDataset(_path(config), config.vocabulary_split)
