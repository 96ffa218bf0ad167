"""Writing Shar (lhotse's writer) and NeMo's tarred layout from a per-file manifest, then reading them back."""

from __future__ import annotations

import json
import os

import numpy as np

from nestkit.data.audio import read_audio
from nestkit.data.shards.member_audio import load_member_audio
from nestkit.data.shards.nemo_tarred import match_members, read_tarred_dataset
from nestkit.data.shards.shar import discover_shar, match_cuts, read_shar_cuts
from nestkit.data.shards.tar_index import index_shards, load_or_build
from nestkit.data.shards.write import write_nemo_tarred, write_shar

from .corpus import make_wavs


def _manifest(tmp_path) -> tuple[str, list[dict]]:
    wavs = make_wavs(tmp_path / "a", 4, seconds=0.6)
    other = make_wavs(tmp_path / "b", 1, seconds=0.6)[0]  # b/utt000.wav: same basename as a/utt000.wav
    lines = [
        {"audio_filepath": wavs[0], "duration": 0.2, "offset": 0.0, "text": "first"},
        {"audio_filepath": wavs[0], "duration": 0.3, "offset": 0.25},  # same file again: a -sub line
        {"audio_filepath": os.path.relpath(wavs[1], tmp_path), "duration": 0.61},  # relative to the manifest
        {"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1.0},  # missing: recorded, not written
        {"audio_filepath": other, "duration": 0.6},
        {"audio_filepath": wavs[2], "duration": 0.62},
        {"audio_filepath": wavs[3], "duration": 0.63},
    ]
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path), lines


def _expected(tmp_path, line: dict) -> np.ndarray:
    path = line["audio_filepath"]
    path = path if os.path.isabs(path) else str(tmp_path / path)
    return read_audio(path, line.get("offset", 0.0), line["duration"])


def test_write_shar_reads_back_in_lhotse_and_in_nestkit(tmp_path):
    from lhotse import CutSet

    manifest, lines = _manifest(tmp_path)
    result = write_shar(manifest, str(tmp_path / "shar"), shard_size=2, progress=False)
    assert result.cuts == 6 and len(result.tars) == 3
    assert [(f.line, "gone.wav" in f.reason) for f in result.failures] == [(4, True)]
    assert all(os.path.isfile(p) for p in result.indexes)
    assert all(p.startswith(str(tmp_path / "shar.nkidx")) for p in result.indexes)
    # lhotse reads what its own writer wrote, the index folder beside it does not disturb it
    lhotse_cuts = list(CutSet.from_shar(in_dir=str(tmp_path / "shar")))
    assert [c.id for c in lhotse_cuts] == ["utt000-L1", "utt000-L2", "utt001-L3", "utt000-L5", "utt002-L6", "utt003-L7"]
    assert lhotse_cuts[1].custom["source"] == {
        "manifest": manifest,
        "line": 2,
        "offset": 0.25,
        "audio_filepath": lines[1]["audio_filepath"],
    }
    # nestkit addresses and decodes every cut; the audio is the line's segment (flac: 16-bit PCM)
    layout = discover_shar(str(tmp_path / "shar"))
    assert layout.findings == []
    build = index_shards(layout.tars(), progress=False)
    assert build.count("loaded") == 3  # the indexes `write_shar` left are found and fresh
    usable = [x for x in lines if "gone" not in x["audio_filepath"]]
    got = []
    for shard in layout.shards:
        cuts, findings = match_cuts(shard, read_shar_cuts(shard.cuts), build.indexes[shard.fields["recording"]])
        assert findings == []
        got += [load_member_audio(c.data, duration=c.duration) for c in cuts]
    for samples, line in zip(got, usable):
        expected = _expected(tmp_path, line)
        assert samples.shape == expected.shape and np.abs(samples - expected).max() < 1e-4


def test_write_nemo_tarred_follows_the_converter(tmp_path):
    manifest, lines = _manifest(tmp_path)
    out = tmp_path / "tarred"
    result = write_nemo_tarred(manifest, str(out), shard_size=3, progress=False)
    assert result.cuts == 6 and [os.path.basename(t) for t in result.tars] == ["audio_0.tar", "audio_1.tar"]
    assert [f.line for f in result.failures] == [4]
    written = [json.loads(x) for x in open(out / "tarred_audio_manifest.json")]
    a0 = str(tmp_path / "a" / "utt000").replace("/", "_").replace(".", "_") + ".wav"
    assert [x["audio_filepath"] for x in written[:2]] == [a0, a0.replace(".wav", "-sub1.wav")]
    assert [x["shard_id"] for x in written] == [0, 0, 0, 1, 1, 1]
    assert written[0]["text"] == "first" and written[1]["offset"] == 0.25  # every key kept
    assert len({x["audio_filepath"] for x in written}) == 6  # a/utt000.wav and b/utt000.wav: distinct names
    shard0 = [json.loads(x) for x in open(out / "sharded_manifests" / "manifest_0.json")]
    assert shard0 == written[:3]
    assert load_or_build(result.tars[0]).source == "loaded"
    # read back with NeMo's spelling of the paths: no findings, every line decodes to its segment
    dataset = read_tarred_dataset(
        str(out / "sharded_manifests" / "manifest__OP_0..1_CL_.json"), str(out / "audio__OP_0..1_CL_.tar")
    )
    match = match_members(dataset, index_shards(list(dataset.tars.values()), progress=False).indexes)
    assert match.findings == [] and len(match.cuts) == 6
    usable = [x for x in lines if "gone" not in x["audio_filepath"]]
    for cut, line in zip(match.cuts, usable):
        got = load_member_audio(cut.member, offset=cut.offset, duration=cut.duration)
        assert np.array_equal(got, _expected(tmp_path, line))  # members are the files' own bytes


def test_writes_are_deterministic(tmp_path):
    manifest, _ = _manifest(tmp_path)
    first = write_nemo_tarred(manifest, str(tmp_path / "n1"), shard_size=3, progress=False)
    second = write_nemo_tarred(manifest, str(tmp_path / "n2"), shard_size=3, progress=False)
    for a, b in zip(first.tars + first.manifests, second.tars + second.manifests):
        assert open(a, "rb").read() == open(b, "rb").read()
    s1 = write_shar(manifest, str(tmp_path / "s1"), shard_size=2, progress=False)
    s2 = write_shar(manifest, str(tmp_path / "s2"), shard_size=2, progress=False)
    for a, b in zip(s1.tars, s2.tars):
        assert open(a, "rb").read() == open(b, "rb").read()
    import gzip

    for a, b in zip(s1.manifests, s2.manifests):  # the same cuts lines (gzip headers carry a timestamp)
        assert gzip.open(a).read().replace(b"/s1", b"").replace(b"/s2", b"") == gzip.open(b).read().replace(
            b"/s1", b""
        ).replace(b"/s2", b"")


def test_sub_in_a_file_name_is_refused(tmp_path):
    wav = make_wavs(tmp_path, 1)[0]
    bad = str(tmp_path / "take-sub1.wav")
    os.rename(wav, bad)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"audio_filepath": bad, "duration": 0.5}) + "\n")
    result = write_nemo_tarred(str(manifest), str(tmp_path / "out"), progress=False)
    assert result.cuts == 0 and "-sub<N>" in result.failures[0].reason
