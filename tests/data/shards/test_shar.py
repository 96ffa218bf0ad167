"""lhotse Shar written by lhotse's own writer: discovery, cut lines, members, and what breaks pairing."""

from __future__ import annotations

import os
import shutil
import tarfile

from nestkit.data.shards.ranged import read_range
from nestkit.data.shards.shar import discover_shar, match_cuts, read_shar_cuts, shar_from_fields
from nestkit.data.shards.tar_index import build_index, index_shards

from .conftest import FAST
from .corpus import lhotse_shar, make_tar, make_wavs


def _shar(tmp_path, n=5, shard_size=2):
    wavs = make_wavs(tmp_path / "wav", n)
    out = lhotse_shar(tmp_path / "shar", wavs, shard_size=shard_size)
    return str(tmp_path / "shar"), out


def test_discover_and_address_every_cut(tmp_path):
    folder, out = _shar(tmp_path)
    layout = discover_shar(folder)
    assert layout.findings == []
    assert [s.number for s in layout.shards] == [0, 1, 2]
    assert layout.tars() == out["recording"] and [s.cuts for s in layout.shards] == out["cuts"]
    build = index_shards(layout.tars(), progress=False)
    addresses = []
    for shard in layout.shards:
        cuts, findings = match_cuts(shard, read_shar_cuts(shard.cuts), build.indexes[shard.fields["recording"]])
        assert findings == []
        addresses += cuts
    assert [a.cut_id for a in addresses] == [f"utt{i:03d}" for i in range(5)]
    with tarfile.open(out["recording"][1]) as tar:  # the member's bytes are the flac lhotse wrote
        expected = tar.extractfile("utt003.flac").read()
    a = addresses[3]
    assert a.data.name == "utt003.flac" and a.meta.name == "utt003.json"
    assert read_range(a.data.shard, a.data.offset, a.data.size) == expected


def test_gap_missing_field_and_foreign_file(tmp_path):
    folder, out = _shar(tmp_path, n=6)
    os.remove(out["recording"][1])  # shard 1 loses its audio: lhotse would pair shard 1 with recording.000002
    for p in (out["cuts"][2], out["recording"][2]):
        shutil.move(p, p.replace(".000002.", ".000003."))  # a gap: 0, 1, 3
    (tmp_path / "shar" / "notes.txt").write_text("hello")
    layout = discover_shar(folder)
    kinds = sorted(f.kind for f in layout.findings)
    assert kinds == ["field_missing", "foreign_file", "gap"]
    assert "shard 1: cuts but no recording file" in " ".join(f.detail for f in layout.findings)
    assert [(s.number, "recording" in s.fields) for s in layout.shards] == [(0, True), (1, False), (3, True)]


def test_count_and_id_mismatches(tmp_path):
    folder, out = _shar(tmp_path, n=4, shard_size=4)
    tar_path = out["recording"][0]
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    # drop the last pair and rename the second cut's audio
    members = members[:6]
    members[2] = ("other.flac", members[2][1])
    make_tar(tmp_path / "shar" / "recording.000000.tar", members)
    layout = discover_shar(folder)
    shard = layout.shards[0]
    cuts, findings = match_cuts(shard, read_shar_cuts(shard.cuts), build_index(tar_path))
    assert sorted((f.kind, f.line) for f in findings) == [("count_mismatch", None), ("id_mismatch", 2)]
    assert [c.cut_id for c in cuts] == ["utt000", "utt002"]


def test_shar_over_http_by_fields(server, http_root):
    wavs = make_wavs(http_root / "wav", 3)
    out = lhotse_shar(http_root / "remote_shar", wavs, shard_size=2)
    base = server.url(http_root / "remote_shar")
    layout = shar_from_fields(
        {
            "cuts": f"{base}/cuts._OP_000000..000001_CL_.jsonl.gz",
            "recording": [f"{base}/recording.000000.tar", f"{base}/recording.000001.tar"],
        }
    )
    assert layout.findings == [] and [s.number for s in layout.shards] == [0, 1]
    build = index_shards(layout.tars(), policy=FAST, progress=False)
    assert not build.failures
    shard = layout.shards[1]
    cuts, findings = match_cuts(shard, read_shar_cuts(shard.cuts, FAST), build.indexes[shard.fields["recording"]])
    assert findings == [] and [c.cut_id for c in cuts] == ["utt002"]
    with tarfile.open(out["recording"][1]) as tar:
        expected = tar.extractfile("utt002.flac").read()
    assert read_range(cuts[0].data.shard, cuts[0].data.offset, cuts[0].data.size, FAST) == expected


def test_truncated_shar_tar_keeps_the_cuts_before_the_cut(tmp_path, server, http_root):
    from .corpus import truncate

    wavs = make_wavs(http_root / "wav_t", 4)
    out = lhotse_shar(http_root / "shar_t", wavs, shard_size=4)
    tar = out["recording"][0]
    offsets = tarfile.open(tar).getmembers()
    truncate(tar, offsets[5].offset_data + 10)  # inside utt002.json: utt002's pair is incomplete
    layout = discover_shar(str(http_root / "shar_t"))
    shard = layout.shards[0]
    for where in (tar, server.url(tar)):
        index = build_index(where, FAST)
        assert [f.kind for f in index.findings] == ["truncated"] and len(index) == 5
        cuts, findings = match_cuts(shard, read_shar_cuts(shard.cuts), index)
        assert [c.cut_id for c in cuts] == ["utt000", "utt001"]
        assert [f.kind for f in findings] == ["odd_members", "count_mismatch"]
