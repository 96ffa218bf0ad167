"""Manifest lines -> lhotse cuts that remember manifest:line; clear errors on bad lines."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from nestkit.core.errors import ManifestError
from nestkit.data.audio import read_audio
from nestkit.data.index import CutIndex
from nestkit.data.loading import load_cut
from tests.helpers import manifest_of, position_coded_wav, write_speech


def test_nemo_manifest_opens_no_audio_and_cuts_remember_their_lines(tmp_path):
    # the audio files do not exist: indexing a manifest must not open audio
    manifest = tmp_path / "sub" / "m.json"
    manifest.parent.mkdir()
    manifest.write_text(
        json.dumps({"audio_filepath": "a/x.wav", "duration": 2.0})
        + "\n\n"
        + json.dumps({"audio_filename": "/abs/y.flac", "duration": 3.5, "offset": 1.25})
        + "\n"
    )
    index = CutIndex.build(str(manifest))
    first, second = index.cut(0), index.cut(1)
    assert first.recording.sources[0].source == str(tmp_path / "sub" / "a" / "x.wav")
    assert (first.custom["manifest"], first.custom["line"]) == (str(manifest), 1)
    assert first.id == "x-L1"
    assert (second.custom["line"], second.start, second.duration) == (3, 1.25, 3.5)
    assert second.recording.sources[0].source == "/abs/y.flac"
    assert len(index) == 2


def test_several_manifests_are_joined_in_order(tmp_path):
    a = manifest_of(tmp_path / "a.json", [("1.wav", 1.0), ("2.wav", 2.0)])
    b = manifest_of(tmp_path / "b.json", [("3.wav", 3.0)])
    index = CutIndex.build([a, b])
    assert len(index) == 3
    assert list(index.duration) == [1.0, 2.0, 3.0]
    assert [index.where(i) for i in range(3)] == [f"{a}:1", f"{a}:2", f"{b}:1"]
    assert [index.cut(i).id for i in range(3)] == [index.cut_id(i) for i in range(3)] == ["1-L1", "2-L2", "3-L1"]


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"audio_filepath": "x.wav", "duration": 1.0', "malformed JSON"),
        ('{"duration": 1.0}', "missing audio path"),
        ('{"audio_filepath": "x.wav"}', "missing 'duration'"),
        ('{"audio_filepath": "x.wav", "duration": -2}', "invalid duration"),
        ('{"audio_filepath": "x.wav", "duration": 0}', "invalid duration"),
        ('{"audio_filepath": "x.wav", "duration": "long"}', "invalid duration"),
        ('{"audio_filepath": "x.wav", "duration": NaN}', "malformed JSON"),
        ('{"audio_filepath": "x.wav", "duration": 1, "offset": -1}', "invalid offset"),
        ("[1, 2]", "not a JSON object (expected one JSON object per line, got a JSON array)"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, line, problem):
    manifest = tmp_path / "bad.json"
    manifest.write_text(json.dumps({"audio_filepath": "ok.wav", "duration": 1.0}) + "\n" + line + "\n")
    with pytest.raises(ManifestError) as info:
        CutIndex.build(str(manifest))
    assert info.value.line == 2
    assert str(manifest) in str(info.value) and ":2:" in str(info.value)
    assert problem in str(info.value)


def test_lhotse_manifests_plain_and_gzipped(tmp_path):
    audio = write_speech(tmp_path / "s.wav", 2.0)
    nemo = manifest_of(tmp_path / "n.json", [(audio, 2.0)])
    from lhotse import CutSet

    lhotse_cuts = CutSet([CutIndex.build(nemo).cut(0)])
    for name in ("c.jsonl", "c.jsonl.gz"):
        path = tmp_path / name
        lhotse_cuts.to_file(str(path))
        index = CutIndex.build(str(path))
        cut = index.cut(0)
        assert cut.id == "s-L1" and cut.custom["manifest"] == str(path) and cut.custom["line"] == 1
        assert np.array_equal(load_cut(cut, 16000, None), read_audio(audio))
    with gzip.open(tmp_path / "c.jsonl.gz", "rt") as f:
        assert json.loads(f.readline())["id"] == "s-L1"


def test_offsets_give_exactly_the_right_samples(tmp_path):
    path, samples = position_coded_wav(tmp_path / "pos.wav", 3.0)
    entries = [
        {"audio_filepath": path, "offset": 0.5, "duration": 0.25},
        {"audio_filepath": path, "offset": 1.1, "duration": 0.3},  # 1.1 * 16000 is not exact in binary
        {"audio_filepath": path, "offset": 2.7, "duration": 0.3},  # runs to the very end
    ]
    index = CutIndex.build(manifest_of(tmp_path / "m.json", entries))
    for i, e in enumerate(entries):
        got = load_cut(index.cut(i), 16000, None)
        start, n = round(e["offset"] * 16000), round(e["duration"] * 16000)
        assert np.array_equal(got, samples[start : start + n]), e


def test_index_random_access_matches_the_lines(corpus):
    from nestkit.data.manifest import FORMAT_NEMO, cut_from_item

    index = CutIndex.build(corpus["train"])
    with open(corpus["train"], "rb") as f:
        lines = [raw for raw in f if raw.strip()]
    for i in (0, len(index) // 2, len(index) - 1):
        expected = cut_from_item(json.loads(lines[i]), FORMAT_NEMO, corpus["train"], i + 1, 16000)
        assert index.cut(i).to_dict() == expected.to_dict()
    assert index.find(index.cut_id(3)) == 3
    assert index.find("no-such-cut") is None
