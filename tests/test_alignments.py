"""Phone alignments: the ``*.phones.txt`` format, synth's alignments and their checks."""

from __future__ import annotations

import ctypes.util
import filecmp
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile

from birq_fs2.cli.data import main as birq_data
from birq_fs2.data.alignments import (
    AlignmentError,
    PhoneSegment,
    find_alignment_files,
    format_line,
    frame_phones,
    load_split_alignments,
    parse_line,
    read_alignments,
    segments_from_ends,
    write_alignments,
)
from birq_fs2.data.corpus import load_split
from birq_fs2.data.synth import synthesize_corpus

SEGMENTS = [
    PhoneSegment("sil", 0.0, 0.05),
    PhoneSegment("hh", 0.05, 0.12),
    PhoneSegment("ax", 0.12, 0.2),
]
LINE = "1-10-0000 sil:0.000:0.050 hh:0.050:0.120 ax:0.120:0.200"


# -------------------------------------------------------------------------- format


def test_format_and_parse_round_trip(tmp_path):
    assert format_line("1-10-0000", SEGMENTS) == LINE
    assert parse_line(LINE) == ("1-10-0000", SEGMENTS)
    mapping = {"1-10-0002": SEGMENTS[:1], "1-10-0000": SEGMENTS}
    path = tmp_path / "1-10.phones.txt"
    write_alignments(path, mapping)
    text = path.read_text()
    assert text.endswith("\n") and text.splitlines()[0] == LINE  # sorted by id
    assert read_alignments(path) == mapping
    assert load_split_alignments(tmp_path) == {}  # not <spk>/<chapter>/
    chapter = tmp_path / "split" / "1" / "10"
    chapter.mkdir(parents=True)
    shutil.copy(path, chapter)
    assert find_alignment_files(tmp_path / "split") == [chapter / path.name]
    assert load_split_alignments(tmp_path / "split") == mapping


@pytest.mark.parametrize(
    "line, problem",
    [
        ("u1 sil:0.000:0.050 hh-0.050-0.120", "is not PHONE:START:END"),
        ("u1 sil:0.000:0.05", "3 decimals"),
        ("u1 sil:0.000:0.050 :0.050:0.120", "empty phone name"),
        ("u1 sil:0.000:0.050 hh:0.050:0.040", "not increasing"),  # non-monotonic
        ("u1 sil:0.000:0.050 hh:0.050:0.050", "not increasing"),  # zero length
        ("u1 sil:0.000:0.050 hh:0.040:0.120", "overlaps"),
        ("u1 sil:0.000:0.050 hh:0.060:0.120", "gap"),
        ("u1 sil:0.010:0.050", "first START must be 0.000"),
        ("u1", "no phone segments"),
        ("u1 ", "no phone segments"),
        ("u1 sil:0.000:0.050  hh:0.050:0.120", "is not PHONE:START:END"),  # two spaces
        ("", "empty line"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "1-10.phones.txt"
    path.write_text(f"{LINE}\n{line}\n")
    with pytest.raises(AlignmentError, match=problem) as info:
        read_alignments(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert (info.value.path, info.value.lineno) == (str(path), 2)


def test_duplicate_id_names_file_and_line(tmp_path):
    path = tmp_path / "1-10.phones.txt"
    path.write_text(f"{LINE}\n{LINE.replace('0000', '0001')}\n{LINE}\n")
    with pytest.raises(AlignmentError, match=r":3: 1-10-0000: duplicate utterance id .*line 1"):
        read_alignments(path)


def test_format_refuses_what_it_could_not_read_back():
    with pytest.raises(ValueError):
        format_line("u1", [PhoneSegment("a", 0.0, 0.1), PhoneSegment("b", 0.2, 0.3)])
    with pytest.raises(ValueError):
        format_line("u1", [PhoneSegment("a:b", 0.0, 0.1)])
    with pytest.raises(ValueError):
        format_line("u1", [PhoneSegment("a", 0.0, 0.0004)])  # zero length at 3 decimals
    with pytest.raises(ValueError):
        format_line("u1", [])


def test_segments_from_ends_rounds_drops_and_merges():
    phones = ["sil", "sil", "dh", "ax", "k", "sil"]
    ends = [0.1, 0.2304, 0.2996, 0.3004, 0.41, 0.5]
    assert segments_from_ends(phones, ends) == [
        PhoneSegment("sil", 0.0, 0.23),
        PhoneSegment("dh", 0.23, 0.3),  # ax rounds to zero length: dropped
        PhoneSegment("k", 0.3, 0.41),
        PhoneSegment("sil", 0.41, 0.5),
    ]


def test_frame_phones_takes_the_phone_at_each_frame_centre():
    # 40 ms frames, centres at 20, 60, 100, 140, 180, 220 ms; the last is past the end.
    assert frame_phones(SEGMENTS, 0.04, 6) == ["sil", "hh", "hh", "ax", "ax", "ax"]
    # A boundary exactly at a centre belongs to the segment that starts there.
    assert frame_phones([PhoneSegment("a", 0.0, 0.06), PhoneSegment("b", 0.06, 0.1)], 0.04, 2) == [
        "a",
        "b",
    ]
    assert frame_phones(SEGMENTS, 0.04, 0) == []


# --------------------------------------------------------------------------- synth

# Seed 28, 4 speakers: flite kal16 (diphone) and awb (clustergen), espeak-ng en-gb+klatt2
# (a language name, not a voice file) and en-029+f2 (a variant whose settings leak into the
# next voice inside one libespeak-ng process).
SYNTH = dict(hours=0.005, num_speakers=4, seed=28, use_flite=True, progress=False)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned") / "corpus"
    summary = synthesize_corpus(out, jobs=2, **SYNTH)
    return out, summary


def _engines(corpus: Path) -> dict[str, str]:
    rows = (corpus / "SPEAKERS.TXT").read_text().splitlines()[1:]
    return {r.split("|")[0].strip(): r.split("|")[4].split()[0] for r in rows}


def test_synth_aligns_every_utterance_to_its_audio(aligned):
    corpus, summary = aligned
    engines = _engines(corpus)
    assert set(engines.values()) == {"flite", "espeak"}
    espeak_library = ctypes.util.find_library("espeak-ng") is not None
    for split in ("train", "dev", "test"):
        alignments = load_split_alignments(corpus / split)
        utts = load_split(corpus, split)
        assert set(alignments) <= {u.id for u in utts}
        for u in utts:
            if engines[u.speaker] == "espeak" and not espeak_library:
                continue
            assert u.id in alignments, f"{u.id} ({engines[u.speaker]}) has no alignment"
            segments = alignments[u.id]
            duration = soundfile.info(str(u.path)).frames / 16000
            assert abs(segments[-1].end - duration) <= 0.0005 + 1e-9  # set to it, at 3 decimals
            phones = {s.phone for s in segments}
            assert "sil" in phones and len(phones) > 3
            if engines[u.speaker] == "flite":
                assert phones <= {"sil"} | set(
                    "aa ae ah ao aw ax axr ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow "
                    "oy p r s sh t th uh uw v w y z zh".split()
                )
        for f in find_alignment_files(corpus / split):
            transcript = f.with_name(f.name.replace(".phones.txt", ".trans.txt"))
            assert f.read_text().endswith("\n") and transcript.exists()
    # The engines' own end of the last phone, before it was set to the audio's end.
    assert summary.aligned == summary.utterances or not espeak_library
    assert summary.max_alignment_error_ms is not None and summary.max_alignment_error_ms < 20.0
    print(f"worst engine-vs-audio end difference: {summary.max_alignment_error_ms} ms")


def test_synth_alignments_are_byte_identical_again(aligned, tmp_path):
    corpus, summary = aligned
    again = tmp_path / "again"
    assert synthesize_corpus(again, jobs=1, **SYNTH) == replace(summary, out=str(again))
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*.txt"))
    assert any(f.name.endswith(".phones.txt") for f in files)
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.txt"))
    match, mismatch, errors = filecmp.cmpfiles(
        corpus, again, [str(f) for f in files], shallow=False
    )
    assert not mismatch and not errors


def test_check_names_bad_alignment_lines(aligned, tmp_path, capsys):
    corpus, _ = aligned
    assert birq_data(["check", str(corpus), "--quiet"]) == 0
    assert "alignment files): no problems" in capsys.readouterr().err

    copy = tmp_path / "dev"
    shutil.copytree(corpus / "dev", copy)
    path = find_alignment_files(copy)[0]
    lines = path.read_text().splitlines()
    assert len(lines) >= 3
    utt, *tokens = lines[1].split(" ")
    phone, start, end = tokens[1].split(":")
    tokens[1] = f"{phone}:{start}:{start}"  # zero length
    lines[1] = " ".join([utt, *tokens])
    lines[2] += " sil:99.000:99.500"  # a gap, then the wrong length
    utt, *tokens = lines[0].split(" ")
    phone, start, end = tokens[-1].split(":")
    tokens[-1] = f"{phone}:{start}:{float(end) + 0.5:.3f}"
    lines[0] = " ".join([utt, *tokens])
    lines.append("zzz-1-0000 sil:0.000:1.000")  # no audio
    path.write_text("\n".join(lines) + "\n")

    assert birq_data(["check", str(copy), "--quiet"]) == 1
    out, err = capsys.readouterr()
    reported = {(line.split()[0], line.split()[1].rstrip(":")) for line in out.splitlines()}
    assert reported == {
        ("alignment_length", f"{path}:1"),
        ("bad_alignment", f"{path}:2"),
        ("bad_alignment", f"{path}:3"),
        ("orphan_alignment", f"{path}:{len(lines)}"),
    }
    assert "not increasing" in out and "gap" in out and "zzz-1-0000: no audio file" in out
    assert "1 alignment_length, 2 bad_alignment, 1 orphan_alignment" in err
