"""Member indexes of real tars: lhotse's Shar, tarfile's three formats, damaged tars, staleness, HTTP."""

from __future__ import annotations

import os
import tarfile
import time

import pytest

from nestkit.data.shards.ranged import read_range
from nestkit.data.shards.tar_index import (
    build_index,
    cached_index_path,
    index_shards,
    load_or_build,
    parse_index,
    published_index_path,
    save_index,
)

from .conftest import FAST
from .corpus import encoded, lhotse_shar, make_tar, make_wavs, tar_offsets, tone, truncate


def _members(n: int, long_names: bool = False) -> list[tuple[str, bytes]]:
    prefix = "d" * 120 + "/" if long_names else ""
    return [(f"{prefix}utt{i:03d}.flac", encoded(tone(0.2, i))) for i in range(n)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_index_matches_tarfile_in_every_format(tmp_path, fmt):
    long_names = fmt != tarfile.USTAR_FORMAT  # GNU 'L' and pax 'x' headers for names over 100 bytes
    path = make_tar(tmp_path / "a.tar", _members(5, long_names), fmt)
    index = build_index(path)
    assert index.findings == [] and index.complete
    expected = tar_offsets(path)
    assert {n: (int(o), int(s)) for n, o, s in zip(index.names, index.data_offsets, index.sizes)} == expected
    for name, data in _members(5, long_names):
        address = index.address(name)
        assert read_range(address.shard, address.offset, address.size) == data


def test_lhotse_shar_tar_is_indexed_with_its_pax_headers(tmp_path):
    wavs = make_wavs(tmp_path / "wav", 3)
    long_id = tmp_path / "wav" / ("x" * 120 + ".wav")  # a cut id over 100 bytes: lhotse writes a pax header
    os.rename(wavs[2], long_id)
    out = lhotse_shar(tmp_path / "shar", wavs[:2] + [str(long_id)], shard_size=10)
    index = build_index(out["recording"][0])
    assert index.names == [
        "utt000.flac",
        "utt000.json",
        "utt001.flac",
        "utt001.json",
        "x" * 120 + ".flac",
        "x" * 120 + ".json",
    ]
    assert index.findings == []
    assert {n: (int(o), int(s)) for n, o, s in zip(index.names, index.data_offsets, index.sizes)} == tar_offsets(
        out["recording"][0]
    )
    assert index.header_offsets[4] < index.data_offsets[4] - 512  # the pax header belongs to the member


def test_truncated_tars_are_findings_not_errors(tmp_path):
    members = _members(4)
    whole = make_tar(tmp_path / "whole.tar", members)
    offsets = tar_offsets(whole)
    third = offsets["utt002.flac"][0]
    cases = {
        "mid_data": (third + 100, "truncated", 2),  # inside the third member's audio
        "mid_header": (third - 512 + 100, "truncated", 2),  # inside the third member's header
        "at_boundary": (third - 512, "no_end_marker", 2),  # right before the third header
    }
    for label, (keep, kind, indexed) in cases.items():
        path = tmp_path / f"{label}.tar"
        path.write_bytes(open(whole, "rb").read())
        truncate(str(path), keep)
        index = build_index(str(path))
        assert [f.kind for f in index.findings] == [kind], label
        assert len(index) == indexed and not (kind == "truncated" and index.complete)
        assert str(path) in index.findings[0].message()


def test_duplicate_and_non_regular_members(tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in _members(2) + [("utt000.flac", b"second copy")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))
        folder = tarfile.TarInfo("folder/")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("link.flac")
        link.type, link.linkname = tarfile.SYMTYPE, "utt000.flac"
        tar.addfile(link)
    index = build_index(str(path))
    assert [f.kind for f in index.findings] == ["duplicate_member", "not_regular", "not_regular"]
    assert len(index) == 3 and index.address("utt000.flac").size != len(b"second copy")  # the first one
    assert "a directory" in index.findings[1].detail and "symbolic link" in index.findings[2].detail


def test_corrupt_header_stops_the_walk_with_a_finding(tmp_path):
    path = make_tar(tmp_path / "bad.tar", _members(3))
    second_header = tar_offsets(path)["utt001.flac"][0] - 512
    with open(path, "r+b") as f:
        f.seek(second_header + 148)  # the checksum field
        f.write(b"9999999\0")
    index = build_index(path)
    assert [f.kind for f in index.findings] == ["corrupt_header"] and len(index) == 1


def test_save_load_and_staleness(tmp_path):
    path = make_tar(tmp_path / "audio_0.tar", _members(3))
    first = load_or_build(path)
    assert first.source == "built" and os.path.isfile(path + ".nkidx")
    again = load_or_build(path)
    assert again.source == "loaded" and again.names == first.names
    assert (again.data_offsets == first.data_offsets).all()
    # the shard is rewritten after indexing: other members, other size
    make_tar(tmp_path / "audio_0.tar", _members(5))
    rebuilt = load_or_build(path)
    assert rebuilt.source == "rebuilt" and len(rebuilt) == 5
    assert load_or_build(path).source == "loaded"
    # rewritten with the same size: only the mtime tells (ns resolution, set explicitly here)
    make_tar(tmp_path / "audio_0.tar", [(n.replace("utt", "UTT"), d) for n, d in _members(5)])
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_or_build(path).names[0] == "UTT000.flac"


def test_index_file_of_another_version_is_ignored(tmp_path):
    path = make_tar(tmp_path / "audio_0.tar", _members(2))
    (tmp_path / "audio_0.tar.nkidx").write_bytes(b"not an index")
    assert parse_index(str(tmp_path / "audio_0.tar.nkidx")) is None
    assert load_or_build(path).source == "built"


def test_shar_indexes_stay_out_of_the_shar_directory(tmp_path):
    from lhotse import CutSet

    wavs = make_wavs(tmp_path / "wav", 4)
    out = lhotse_shar(tmp_path / "shar", wavs, shard_size=2)
    for tar in out["recording"]:
        load_or_build(tar)
        assert published_index_path(tar) == str(tmp_path / "shar.nkidx" / (os.path.basename(tar) + ".nkidx"))
    assert sorted(os.listdir(tmp_path / "shar")) == sorted(os.path.basename(p) for v in out.values() for p in v)
    assert len(list(CutSet.from_shar(in_dir=str(tmp_path / "shar")))) == 4  # lhotse still reads it


def test_http_build_equals_local_and_reads_one_member_with_one_request(server, http_root):
    path = make_tar(http_root / "audio_7.tar", _members(6))
    url = server.url(path)
    local, remote = build_index(path), build_index(url, FAST)
    assert remote.names == local.names and (remote.data_offsets == local.data_offsets).all()
    assert remote.stat.etag and remote.stat.size == local.stat.size
    before = server.stats().get("/audio_7.tar", 0)
    address = remote.address("utt004.flac")
    assert read_range(address.shard, address.offset, address.size, FAST) == _members(6)[4][1]
    assert server.stats()["/audio_7.tar"] == before + 1


def test_published_index_is_used_instead_of_streaming_the_shard(server, http_root, tmp_path):
    path = make_tar(http_root / "audio_8.tar", _members(4))
    save_index(build_index(path), path + ".nkidx")  # as `write` leaves it beside the shard
    url = server.url(path)
    before = server.stats().get("/audio_8.tar", 0)
    index = load_or_build(url, cache_dir=str(tmp_path / "cache"), policy=FAST)
    assert index.source == "loaded" and index.shard == url and len(index) == 4
    assert server.stats()["/audio_8.tar"] == before + 1  # one HEAD for freshness, no GET of the shard


def test_index_shards_records_unreachable_shards(server, http_root, tmp_path, closed_port):
    local = [make_tar(tmp_path / f"audio_{i}.tar", _members(3)) for i in range(3)]
    remote = server.url(make_tar(http_root / "audio_9.tar", _members(2)))
    dead = f"http://127.0.0.1:{closed_port}/audio_10.tar"
    build = index_shards(
        local + [remote, dead], cache_dir=str(tmp_path / "cache"), policy=FAST, workers=4, progress=False
    )
    assert list(build.indexes) == local + [remote]
    assert list(build.failures) == [dead] and build.failures[dead].category == "unreachable"
    assert build.members == 11 and build.count("built") == 4
    assert [f.kind for f in build.findings()] == ["unreadable"]
    assert os.path.isfile(cached_index_path(remote, str(tmp_path / "cache")))
    again = index_shards(local + [remote], cache_dir=str(tmp_path / "cache"), policy=FAST, progress=False)
    assert again.count("loaded") == 4


def test_index_build_speed(tmp_path):
    """Figures for the report: 2000 members, local walk and reload."""
    members = [(f"utt{i:05d}.flac", os.urandom(2000 + i % 700)) for i in range(2000)]
    path = make_tar(tmp_path / "audio_0.tar", members)
    started = time.perf_counter()
    index = load_or_build(path)
    built = time.perf_counter() - started
    started = time.perf_counter()
    assert len(load_or_build(path)) == 2000
    loaded = time.perf_counter() - started
    print(
        f"\n[figures] index of 2000 members: build {built * 1000:.0f} ms, load {loaded * 1000:.1f} ms, "
        f"file {os.path.getsize(path + '.nkidx')} bytes"
    )
    assert index.findings == [] and built < 10


def test_http_versus_local_figures(server, http_root, tmp_path):
    """Figures for the report: index build and single-member reads, local vs HTTP on 127.0.0.1."""
    members = [(f"utt{i:05d}.flac", os.urandom(20_000 + i % 700)) for i in range(2000)]
    path = make_tar(http_root / "audio_bench.tar", members)
    url = server.url(path)
    started = time.perf_counter()
    local = build_index(path)
    local_s = time.perf_counter() - started
    started = time.perf_counter()
    remote = build_index(url, FAST)
    remote_s = time.perf_counter() - started
    assert remote.names == local.names
    reads = {}
    for label, index in (("local", local), ("http", remote)):
        started = time.perf_counter()
        for i in range(0, 2000, 10):
            a = index.address(i)
            assert len(read_range(a.shard, a.offset, a.size, FAST)) == a.size
        reads[label] = (time.perf_counter() - started) / 200
    print(
        f"\n[figures] 2000 members, {os.path.getsize(path) / 1e6:.0f} MB: index build local {local_s * 1000:.0f} ms, "
        f"http stream {remote_s * 1000:.0f} ms; one-member read local {reads['local'] * 1e6:.0f} us, "
        f"http {reads['http'] * 1e6:.0f} us"
    )
