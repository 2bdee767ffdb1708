"""The embedded demo corpus: labelled English speech synthesised offline.

``birq-data synth OUT --hours H`` writes a LibriSpeech-layout corpus (16 kHz mono FLAC,
``<spk>-<chapter>.trans.txt``, ``SPEAKERS.TXT``) with subsets ``train``, ``dev`` and
``test`` whose speakers are disjoint. Speakers are espeak-ng voices (accent x voice
variant) and, when installed, flite voices, each with its own speed, pitch, level and a
channel effect. Sentences come from a small generated grammar (default: a vocabulary CTC
learns in minutes on a CPU), CPython's pydoc topics or WordNet's example sentences.

Everything is drawn from ``--seed`` up front; utterances render in worker processes in a
fixed order with one torch thread each, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from birq_fs2.frames import SAMPLE_RATE

from .vocab import normalize_transcript

SUBSETS = ("train", "dev", "test")

_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
_VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 f1 f2 f3 f4 f5 klatt klatt2 klatt3 Andy Annie Denis Ed Gene Lee "
    "Linda Mike Paul Rob Steph Zac grandma grandpa shelby travis victor"
).split()
_FLITE_VOICES = ("kal16", "awb", "rms", "slt")
_CHANNELS = ("clean", "telephone", "bright", "muffled", "room")


class SynthError(RuntimeError):
    pass


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SynthError(
            f"`{name}` was not found. Install the Debian package: sudo apt-get install {name}"
        )
    return path


# ------------------------------------------------------------------------ sentences

_GRAMMAR = {
    "NAME": "anna ben clara david emma frank grace henry iris jack laura martin nora oscar paula "
    "robert sarah thomas".split(),
    "ADJ": "old young small large quiet busy bright dark warm cold green red blue brown happy "
    "tired clever careful gentle heavy".split(),
    "NOUN": "dog cat bird horse farmer teacher doctor child river garden window kitchen table "
    "letter story village market road bridge boat".split(),
    "NOUNS": "dogs cats birds horses apples letters stories boats books stones flowers "
    "lamps".split(),
    "VERBED": "saw found followed painted carried opened watched helped visited cleaned "
    "pushed moved".split(),
    "VERB": "see find follow paint carry open watch help visit clean push move".split(),
    "PREP": "near behind under over beside across through".split(),
    "NUM": "two three four five six seven eight nine ten".split(),
    "TIME": "this morning last night in the evening before noon after the rain".split(" "),
}
_TEMPLATES = (
    "the ADJ NOUN VERBED the NOUN PREP the NOUN",
    "NAME VERBED NUM ADJ NOUNS",
    "did the NOUN VERB the ADJ NOUN",
    "NAME and NAME VERBED the NOUN PREP the ADJ NOUN",
    "the NOUN was ADJ and the NOUN was ADJ",
    "NUM NOUNS were PREP the ADJ NOUN",
    "NAME will VERB the NOUN tomorrow",
    "we VERBED the ADJ NOUN PREP the NOUN",
)


def grammar_sentences(rng: random.Random) -> Iterator[str]:
    while True:
        words = [
            rng.choice(_GRAMMAR[w]) if w in _GRAMMAR else w for w in rng.choice(_TEMPLATES).split()
        ]
        yield " ".join(words)


def _pool_sentences(rng: random.Random, pool: list[str]) -> Iterator[str]:
    if not pool:
        raise SynthError("The text source has no usable sentences.")
    while True:
        yield rng.choice(pool)


def _usable(sentence: str, max_words: int = 20) -> str | None:
    if re.search(r"[0-9_<>{}\[\]=/\\@#$%^&*+]", sentence):
        return None
    # Quotation marks, not apostrophes: drop quotes that open or close a word.
    text = " ".join(w.strip("'") for w in normalize_transcript(sentence).split())
    text = " ".join(w for w in text.split() if w)
    return text.lower() if 3 <= len(text.split()) <= max_words else None


def pydoc_sentences() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for body in topics.values():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(body.split())):
            if (text := _usable(sentence)) is not None:
                out.append(text)
    return sorted(set(out))


def wordnet_sentences(root: Path = Path("/usr/share/wordnet")) -> list[str]:
    files = sorted(root.glob("data.*"))
    if not files:
        raise SynthError(f"No WordNet data under {root}: sudo apt-get install wordnet-base")
    out = []
    for f in files:
        for quoted in re.findall(r'"([^"]+)"', f.read_text(encoding="latin-1")):
            if (text := _usable(quoted)) is not None:
                out.append(text)
    return sorted(set(out))


def sentence_source(name: str, rng: random.Random) -> Iterator[str]:
    if name == "grammar":
        return grammar_sentences(rng)
    if name == "pydoc":
        return _pool_sentences(rng, pydoc_sentences())
    if name == "wordnet":
        return _pool_sentences(rng, wordnet_sentences())
    raise SynthError(f"Unknown text source {name!r} (choose grammar, pydoc or wordnet).")


# ------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    id: int
    subset: str
    engine: str  # "espeak" | "flite"
    voice: str  # espeak "accent+variant" or a flite voice
    rate: float  # 1.0 = the engine's default speed
    pitch: float  # espeak 0-99; flite mean F0 in Hz
    gain_db: float
    channel: str

    @property
    def sex(self) -> str:
        female = (
            ("+f", "Annie", "Linda", "Steph", "grandma", "shelby")
            if self.engine == "espeak"
            else ("slt",)
        )
        return "F" if any(tag in self.voice for tag in female) else "M"

    def describe(self) -> str:
        return f"{self.engine} {self.voice} rate={self.rate:.2f} pitch={self.pitch:.0f} gain={self.gain_db:.1f}dB {self.channel}"


def draw_speakers(num_speakers: int, rng: random.Random, use_flite: bool) -> list[Speaker]:
    if num_speakers < 3:
        raise SynthError(
            f"--speakers must be >= 3 (train, dev and test need their own), got {num_speakers}."
        )
    num_held_out = max(1, round(0.1 * num_speakers))
    subsets = ["dev"] * num_held_out + ["test"] * num_held_out
    subsets += ["train"] * (num_speakers - len(subsets))
    speakers = []
    for i, subset in enumerate(subsets):
        engine = "flite" if use_flite and rng.random() < 0.3 else "espeak"
        if engine == "espeak":
            voice = f"{rng.choice(_ACCENTS)}+{rng.choice(_VARIANTS)}"
            pitch = rng.uniform(25, 75)
        else:
            voice = rng.choice(_FLITE_VOICES)
            pitch = rng.uniform(90, 130) if voice != "slt" else rng.uniform(150, 210)
        speakers.append(
            Speaker(
                id=1000 + i,
                subset=subset,
                engine=engine,
                voice=voice,
                rate=rng.uniform(0.8, 1.2),
                pitch=pitch,
                gain_db=rng.uniform(-9.0, -1.0),
                channel=rng.choice(_CHANNELS),
            )  # fmt: skip
        )
    return speakers


# ------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Task:
    path: str
    text: str
    speaker: Speaker
    seed: int


def _run_engine(task: Task, wav: Path) -> None:
    s, text = task.speaker, task.text
    if s.engine == "espeak":
        cmd = [require_tool("espeak-ng"), "-v", s.voice, "-s", str(round(165 * s.rate)),
               "-p", str(round(s.pitch)), "-w", str(wav), text]  # fmt: skip
    else:
        cmd = [require_tool("flite"), "-voice", s.voice, "--setf", f"duration_stretch={1 / s.rate:.3f}",
               "--setf", f"int_f0_target_mean={s.pitch:.0f}", "-t", text, "-o", str(wav)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not wav.exists():
        raise SynthError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()[:200]}")


def _channel(audio, rate: int, channel: str, rng: np.random.Generator):
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(audio)
    if channel == "telephone":
        x = AF.lowpass_biquad(AF.highpass_biquad(x, rate, 300.0), rate, 3400.0)
    elif channel == "bright":
        x = AF.highpass_biquad(x, rate, 150.0)
    elif channel == "muffled":
        x = AF.lowpass_biquad(x, rate, 2500.0)
    elif channel == "room":  # a short synthetic reverb tail
        n = int(0.12 * rate)
        ir = torch.from_numpy(rng.standard_normal(n).astype(np.float32)) * torch.exp(
            -torch.arange(n) / (0.03 * rate)
        )
        ir[0] = 1.0
        x = AF.fftconvolve(x, ir / ir.abs().sum() * 3.0)[: len(x)]
    return x.numpy()


def render(task: Task) -> float:
    """Synthesise one utterance to FLAC; returns its duration in seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical arithmetic whatever the machine: byte-identical files
    try:
        return _render(task)
    finally:
        torch.set_num_threads(threads)  # in-process (jobs=1) callers keep their setting


def _render(task: Task) -> float:
    import torch
    import torchaudio.functional as AF

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        _run_engine(task, wav)
        audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    rng = np.random.default_rng(task.seed)
    audio = _channel(audio, SAMPLE_RATE, task.speaker.channel, rng)
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio / peak * 10 ** (task.speaker.gain_db / 20)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    Path(task.path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(task.path, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(pcm) / SAMPLE_RATE


# ---------------------------------------------------------------------------- corpus


@dataclass
class SynthSummary:
    out: str
    seed: int
    speakers: int
    utterances: dict[str, int]
    hours: dict[str, float]


def plan_corpus(out: Path, hours: float, num_speakers: int, seed: int, text: str, use_flite: bool):
    """Every utterance's speaker, text, path and noise seed, from `seed` alone."""
    if hours <= 0:
        raise SynthError(f"--hours must be positive, got {hours}.")
    rng = random.Random(seed)
    speakers = draw_speakers(num_speakers, rng, use_flite)
    sentences = sentence_source(text, random.Random(seed + 1))
    budget = {
        "train": hours * 3600,
        "dev": max(0.1 * hours * 3600, 60.0),
        "test": max(0.1 * hours * 3600, 60.0),
    }
    tasks: list[Task] = []
    for subset in SUBSETS:
        group = [s for s in speakers if s.subset == subset]
        planned, counters = 0.0, dict.fromkeys((s.id for s in group), 0)
        while planned < budget[subset]:
            speaker = group[len(tasks) % len(group)]
            sentence = next(sentences)
            n = counters[speaker.id]
            counters[speaker.id] += 1
            chapter = speaker.id * 10 + SUBSETS.index(subset)
            path = (
                out
                / subset
                / str(speaker.id)
                / str(chapter)
                / f"{speaker.id}-{chapter}-{n:04d}.flac"
            )
            tasks.append(Task(str(path), sentence, speaker, rng.getrandbits(63)))
            # Estimated seconds, calibrated on a 1 h corpus (espeak/flite mix, seed 0).
            planned += 0.3 + len(sentence.split()) / (3.4 * speaker.rate)
    return speakers, tasks


def synthesize_corpus(
    out: Path,
    *,
    hours: float = 1.0,
    num_speakers: int = 40,
    seed: int = 0,
    text: str = "grammar",
    jobs: int | None = None,
    use_flite: bool | None = None,
    progress: bool = True,
) -> SynthSummary:
    require_tool("espeak-ng")
    if use_flite is None:
        use_flite = shutil.which("flite") is not None
    elif use_flite:
        require_tool("flite")
    out = Path(out)
    speakers, tasks = plan_corpus(out, hours, num_speakers, seed, text, use_flite)
    jobs = jobs or min(len(tasks), os.cpu_count() or 1)
    durations = _render_all(tasks, jobs, progress)

    transcripts: dict[Path, list[str]] = {}
    for task in tasks:
        p = Path(task.path)
        key = p.parent / f"{p.parent.parent.name}-{p.parent.name}.trans.txt"
        transcripts.setdefault(key, []).append(f"{p.stem} {normalize_transcript(task.text)}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    minutes: dict[int, float] = {}
    for task, dur in zip(tasks, durations, strict=True):
        minutes[task.speaker.id] = minutes.get(task.speaker.id, 0.0) + dur / 60
    lines = [";ID  |SEX| SUBSET |MINUTES| NAME"]
    lines += [
        f"{s.id} | {s.sex} | {s.subset} | {minutes.get(s.id, 0.0):.2f} | {s.describe()}"
        for s in speakers
    ]
    (out / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n", encoding="utf-8")

    counts = {sub: sum(1 for t in tasks if t.speaker.subset == sub) for sub in SUBSETS}
    hours_out = {
        sub: sum(d for t, d in zip(tasks, durations, strict=True) if t.speaker.subset == sub) / 3600
        for sub in SUBSETS
    }
    return SynthSummary(str(out), seed, len(speakers), counts, hours_out)


def _render_all(tasks: list[Task], jobs: int, progress: bool) -> list[float]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    durations: list[float] = []
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("synthesising", total=len(tasks))
        if jobs <= 1:
            for task in tasks:
                durations.append(render(task))
                bar.advance(job)
        else:
            with ProcessPoolExecutor(jobs) as pool:
                for dur in pool.map(render, tasks, chunksize=8):
                    durations.append(dur)
                    bar.advance(job)
    return durations


def summary_dict(summary: SynthSummary) -> dict:
    return asdict(summary)
