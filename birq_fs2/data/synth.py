"""The embedded demo corpus: labelled English speech synthesised offline.

``birq-data synth OUT --hours H`` writes a LibriSpeech-layout corpus (16 kHz mono FLAC,
``<spk>-<chapter>.trans.txt``, ``SPEAKERS.TXT``) with subsets ``train``, ``dev`` and
``test`` whose speakers are disjoint. Speakers are espeak-ng voices (accent x voice
variant) and, when installed, flite voices, each with its own speed, pitch, level and a
channel effect. Sentences come from a small generated grammar (default: a vocabulary CTC
learns in minutes on a CPU), CPython's pydoc topics or WordNet's example sentences.

Next to each chapter's transcript, ``<spk>-<chapter>.phones.txt`` holds the phone
segmentation of its utterances (format: `birq_fs2.data.alignments`). flite prints its
segments with ``-psdur``. espeak-ng's command line cannot, so the utterance is rendered a
second time through libespeak-ng (ctypes; a fresh copy of the library per utterance, as
the command line is a fresh process; the same voice, speed, pitch and flags), whose
phoneme events carry their sample positions; they are kept only when that rendering has
exactly as many samples as the command line's file. Times are seconds, so resampling to 16 kHz leaves them as they
are. The last phone is set to end at the written audio's end; an utterance whose engine
puts that end more than 20 ms away gets no alignment line (with Debian 12's engines none
does: espeak-ng agrees to the sample, flite within one pitch period).

Everything is drawn from ``--seed`` up front; utterances render in worker processes in a
fixed order with one torch thread each, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile

from birq_fs2.frames import SAMPLE_RATE

from .alignments import (
    ALIGNMENT_SUFFIX,
    END_TOLERANCE,
    SILENCE,
    PhoneSegment,
    segments_from_ends,
    write_alignments,
)
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
# Diphone voices: their last unit ends half-way through the final pause (cst_diphone.c:
# the second half of a diphone ends at the middle of its segment), earlier than -psdur says.
_FLITE_DIPHONE_VOICES = frozenset({"kal", "kal16"})
_FLITE_SILENCES = frozenset({"pau", "h#", "#", "sil", "ssil"})
ALIGNMENT_TOLERANCE = END_TOLERANCE
"""Seconds the engine's end of the last phone may differ from the written audio's end."""


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


Phones = tuple[list[str], list[float]]
"""Phone names and their end times in seconds (the first phone starts at 0)."""


def _run_engine(task: Task, wav: Path) -> Phones | None:
    """Render `task` to `wav` with the engine's command line; the engine's phones, or
    None when it gave none."""
    s, text = task.speaker, task.text
    if s.engine == "espeak":
        cmd = [require_tool("espeak-ng"), "-v", s.voice, "-s", str(round(165 * s.rate)),
               "-p", str(round(s.pitch)), "-w", str(wav), text]  # fmt: skip
    else:
        cmd = [require_tool("flite"), "-voice", s.voice, "--setf", f"duration_stretch={1 / s.rate:.3f}",
               "--setf", f"int_f0_target_mean={s.pitch:.0f}", "-t", text, "-psdur", "-o", str(wav)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not wav.exists():
        raise SynthError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()[:200]}")
    if s.engine == "flite":
        return _flite_phones(proc.stdout, s.voice)
    frames = soundfile.info(str(wav)).frames
    return _espeak_phones(s.voice, round(165 * s.rate), round(s.pitch), text, frames)


def _flite_phones(stdout: str, voice: str) -> Phones | None:
    """``-psdur`` output: ``name:end`` per segment (``pau:0.230 dh:0.290 ...``)."""
    phones, ends = [], []
    for token in stdout.split():
        name, sep, end = token.rpartition(":")
        try:
            t = float(end)
        except ValueError:
            return None
        if not sep or not name:
            return None
        phones.append(SILENCE if name in _FLITE_SILENCES else name.lower())
        ends.append(t)
    if not phones:
        return None
    if voice in _FLITE_DIPHONE_VOICES and len(ends) > 1:
        ends[-1] = (ends[-2] + ends[-1]) / 2
    return phones, ends


# libespeak-ng keeps state between utterances in one process (a voice variant's settings
# leak into the next voice's timing), so each utterance is synthesised in a fresh copy of
# the library, as the command line is a fresh process: a small helper interpreter loads
# the library without initialising it and forks a child per request, which initialises,
# synthesises and answers one JSON line (synth takes ~1.3x as long as without alignments;
# a fresh interpreter per utterance took ~2x).
_ESPEAK_HELPER = r"""
import ctypes, json, os, sys

class EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

class Event(ctypes.Structure):  # espeak_EVENT (speak_lib.h)
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", EventId)]

class Voice(ctypes.Structure):  # espeak_VOICE
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p),
                ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte),
                ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte),
                ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]

Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                            ctypes.POINTER(Event))

def synthesise(lib, voice, rate, pitch, text):
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    # AUDIO_OUTPUT_SYNCHRONOUS, default buffer and data path, espeakINITIALIZE_PHONEME_EVENTS
    sample_rate = lib.espeak_Initialize(2, 0, None, 1)
    if sample_rate <= 0:
        return {"error": "espeak_Initialize failed"}
    samples, events = [0], []

    def on_audio(wav, num_samples, ev):
        samples[0] += max(num_samples, 0)
        i = 0
        while ev[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            if ev[i].type == 7:  # espeakEVENT_PHONEME
                events.append((ev[i].id.string.decode("utf-8", "replace"), ev[i].sample))
            i += 1
        return 0

    callback = Callback(on_audio)
    lib.espeak_SetSynthCallback(callback)
    # As the command line: a voice file's name, else a language (en-gb+Mike) by properties.
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        if lib.espeak_SetVoiceByProperties(ctypes.byref(Voice(languages=voice.encode()))) != 0:
            return {"error": f"no voice {voice}"}
    lib.espeak_SetParameter(1, rate, 0)  # espeakRATE, then espeakPITCH, as the command line
    lib.espeak_SetParameter(3, pitch, 0)
    data = text.encode("utf-8")
    # espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE: the command line's flags
    if lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0x1100, None, None) != 0:
        return {"error": "espeak_Synth failed"}
    lib.espeak_Synchronize()
    return {"rate": sample_rate, "samples": samples[0], "events": events}

try:
    lib = ctypes.CDLL("libespeak-ng.so.1")
except OSError as ex:
    lib, missing = None, str(ex)
for request in sys.stdin:
    if lib is None:
        answer = json.dumps({"error": missing})
    else:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a fresh copy of the uninitialised library
            os.close(r)
            try:
                out = json.dumps(synthesise(lib, *json.loads(request)))
            except Exception as ex:
                out = json.dumps({"error": repr(ex)})
            os.write(w, out.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            answer = pipe.read().decode() or json.dumps({"error": "helper child died"})
        os.waitpid(pid, 0)
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
"""

_HELPERS: dict[int, subprocess.Popen] = {}  # by the pid of the process that started it


def _espeak_events(voice: str, rate: int, pitch: int, text: str) -> dict:
    proc = _HELPERS.get(os.getpid())  # a forked worker starts its own, never its parent's
    if proc is None:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _ESPEAK_HELPER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        )  # fmt: skip
        _HELPERS[os.getpid()] = proc
        atexit.register(_stop_helper, proc)
    try:
        proc.stdin.write(json.dumps([voice, rate, pitch, text]) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
    except OSError as ex:
        return {"error": str(ex)}
    return json.loads(line) if line else {"error": "the espeak helper exited"}  # ValueError


def _stop_helper(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if proc.stdout is not None:
        proc.stdout.close()


def _espeak_phones(voice: str, rate: int, pitch: int, text: str, num_samples: int) -> Phones | None:
    """libespeak-ng's phoneme events for the command line's rendering of `text`, which
    wrote `num_samples` samples; None when the library is missing or disagrees."""
    try:
        out = _espeak_events(voice, rate, pitch, text)
        sample_rate, total = int(out["rate"]), int(out["samples"])
        events = [(str(name), int(sample)) for name, sample in out["events"]]
    except (ValueError, KeyError, TypeError):
        return None
    starts = [sample for _, sample in events]
    if total != num_samples or not events or starts != sorted(starts) or starts[-1] > total:
        return None  # not the command line's rendering: its times would not fit the audio
    phones = [
        SILENCE if not name or name.startswith("_") else name.replace(":", "\u02d0")
        for name, _ in events
    ]
    ends = [*starts[1:], total]
    if starts[0] > 0:
        phones, ends = [SILENCE, *phones], [starts[0], *ends]
    return phones, [e / sample_rate for e in ends]


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


@dataclass(frozen=True)
class Rendered:
    duration: float
    """Seconds of written audio (samples / 16000)."""
    phones: tuple[PhoneSegment, ...] | None
    """The phone segmentation, ending at `duration`; None when the engine gave none or
    its end was more than ALIGNMENT_TOLERANCE away from the audio's."""
    engine_end: float | None
    """Where the engine said the last phone ends, before it was set to `duration`."""


def render(task: Task) -> Rendered:
    """Synthesise one utterance to FLAC: its duration and phone segmentation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical arithmetic whatever the machine: byte-identical files
    try:
        return _render(task)
    finally:
        torch.set_num_threads(threads)  # in-process (jobs=1) callers keep their setting


def _render(task: Task) -> Rendered:
    import torch
    import torchaudio.functional as AF

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        found = _run_engine(task, wav)
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
    duration = len(pcm) / SAMPLE_RATE
    if found is None:
        return Rendered(duration, None, None)
    names, ends = found
    engine_end = ends[-1]
    if abs(engine_end - duration) > ALIGNMENT_TOLERANCE:
        return Rendered(duration, None, engine_end)
    ends = [min(e, duration) for e in ends[:-1]] + [duration]
    return Rendered(duration, tuple(segments_from_ends(names, ends)), engine_end)


# ---------------------------------------------------------------------------- corpus


@dataclass
class SynthSummary:
    out: str
    seed: int
    speakers: int
    utterances: dict[str, int]
    hours: dict[str, float]
    aligned: dict[str, int]
    """Utterances with a phone alignment, per subset."""
    max_alignment_error_ms: float | None
    """The largest |engine end of the last phone - audio end| over all aligned ones."""


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
    rendered = _render_all(tasks, jobs, progress)
    durations = [r.duration for r in rendered]

    transcripts: dict[Path, list[str]] = {}
    alignments: dict[Path, dict[str, tuple[PhoneSegment, ...]]] = {}
    for task, r in zip(tasks, rendered, strict=True):
        p = Path(task.path)
        stem = f"{p.parent.parent.name}-{p.parent.name}"
        key = p.parent / f"{stem}.trans.txt"
        transcripts.setdefault(key, []).append(f"{p.stem} {normalize_transcript(task.text)}")
        chapter = alignments.setdefault(p.parent / f"{stem}{ALIGNMENT_SUFFIX}", {})
        if r.phones is not None:
            chapter[p.stem] = r.phones
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for path, mapping in alignments.items():
        if mapping:
            write_alignments(path, mapping)
        else:
            path.unlink(missing_ok=True)  # a stale file of an earlier run into `out`

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
    aligned = {
        sub: sum(1 for t, r in zip(tasks, rendered, strict=True)
                 if t.speaker.subset == sub and r.phones is not None)
        for sub in SUBSETS
    }  # fmt: skip
    errors = [abs(r.engine_end - r.duration) for r in rendered if r.phones is not None]
    worst = round(max(errors) * 1000, 1) if errors else None
    return SynthSummary(str(out), seed, len(speakers), counts, hours_out, aligned, worst)


def _render_all(tasks: list[Task], jobs: int, progress: bool) -> list[Rendered]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    rendered: list[Rendered] = []
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("synthesising", total=len(tasks))
        if jobs <= 1:
            for task in tasks:
                rendered.append(render(task))
                bar.advance(job)
        else:
            with ProcessPoolExecutor(jobs) as pool:
                for r in pool.map(render, tasks, chunksize=8):
                    rendered.append(r)
                    bar.advance(job)
    return rendered


def summary_dict(summary: SynthSummary) -> dict:
    return asdict(summary)
