"""NeMo tarred datasets: path expansion, NeMo's member naming, and the findings NeMo would not report."""

from __future__ import annotations

import json

import pytest

from nestkit.core.errors import ConfigError
from nestkit.data.shards.nemo_tarred import (
    brace_expand,
    converter_member_name,
    expand_nemo_paths,
    match_members,
    member_name,
    read_tarred_dataset,
    shard_id_of,
    sub_name,
)
from nestkit.data.shards.tar_index import index_shards

from .conftest import FAST
from .corpus import encoded, make_tar, tone


def test_brace_expansion_follows_braceexpand():
    # braceexpand 0.1.7's documented examples
    assert brace_expand("item{1..3}") == ["item1", "item2", "item3"]
    assert brace_expand("{a..c}") == ["a", "b", "c"]
    assert brace_expand("index.html{,.backup}") == ["index.html", "index.html.backup"]
    assert brace_expand("python{2.{5..7},3.{2,3}}") == ["python2.5", "python2.6", "python2.7", "python3.2", "python3.3"]
    assert brace_expand("{07..10}") == ["07", "08", "09", "10"]
    assert brace_expand("{a..g..2}") == ["a", "c", "e", "g"]
    assert brace_expand("{4..1}") == ["4", "3", "2", "1"]
    assert brace_expand("{2..-1}") == ["2", "1", "0", "-1"]
    assert brace_expand("{0..10}")[-2:] == ["9", "10"] and brace_expand("{0..3}")[0] == "0"  # "0" alone: no padding
    assert brace_expand("a{x}b") == ["a{x}b"]  # not a range or a list: literal
    assert brace_expand("{0..4..2}") == ["0", "2", "4"]
    with pytest.raises(ValueError):
        brace_expand("{1{2,3}")


def test_nemo_path_spellings():
    expected = [f"/data/audio_{i}.tar" for i in range(4)]
    assert expand_nemo_paths("/data/audio_{0..3}.tar") == expected
    assert expand_nemo_paths("/data/audio__OP_0..3_CL_.tar") == expected
    assert expand_nemo_paths("/data/audio_(0..3).tar") == expected
    assert expand_nemo_paths("/data/audio_[0..3].tar") == expected
    assert expand_nemo_paths("/data/audio_<0..3>.tar") == expected
    assert expand_nemo_paths("http://host/b{a,b}/audio_{0..1}.tar") == [
        "http://host/ba/audio_0.tar",
        "http://host/ba/audio_1.tar",
        "http://host/bb/audio_0.tar",
        "http://host/bb/audio_1.tar",
    ]
    assert expand_nemo_paths(["x_{0..1}.tar", "y.tar"]) == ["x_{0..1}.tar", "y.tar"]  # lists: as is (NeMo)
    with pytest.raises(ConfigError, match="unbalanced"):
        expand_nemo_paths("/data/take(2/audio_{0..3}.tar")  # NeMo's replacement breaks folder names with (


def test_shard_ids_and_member_names():
    assert shard_id_of("/d/audio_12.tar") == 12 and shard_id_of("/d/audio_0_normalized.tar") == 0
    assert shard_id_of("/d/shard12.tar") is None
    assert shard_id_of("/d/sharded_manifests/manifest_3.json", "manifest") == 3
    assert member_name("a_b_c-sub2.wav") == "a_b_c.wav" and member_name("x-sub1") == "x"
    assert member_name("plain.wav") == "plain.wav"
    assert converter_member_name("/data/spk.1/utt.a.wav") == "_data_spk_1_utt_a.wav"
    assert sub_name("_d_x.wav", 1) == "_d_x-sub1.wav"


def _layout(folder, shards: dict[int, list[str]], lines: list[dict], per_shard_manifests: bool = False):
    """A NeMo tarred layout by hand, as the converter writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    for sid, names in shards.items():
        make_tar(folder / f"audio_{sid}.tar", [(n, encoded(tone(0.3, i), fmt="WAV")) for i, n in enumerate(names)])
    if per_shard_manifests:
        for sid in shards:
            with open(folder / f"manifest_{sid}.json", "w") as f:
                for line in lines:
                    if line.get("_file", line.get("shard_id")) == sid:
                        f.write(json.dumps({k: v for k, v in line.items() if k != "_file"}) + "\n")
        return str(folder / "manifest__OP_0..1_CL_.json"), str(folder / "audio__OP_0..1_CL_.tar")
    with open(folder / "tarred_audio_manifest.json", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return str(folder / "tarred_audio_manifest.json"), str(folder / "audio_{0..1}.tar")


def test_clean_dataset_with_sub_lines(tmp_path):
    manifest, tars = _layout(
        tmp_path,
        {0: ["_d_a.wav", "_d_b.wav"], 1: ["_d_c.wav"]},
        [
            {"audio_filepath": "_d_a.wav", "duration": 0.1, "offset": 0.0, "shard_id": 0},
            {"audio_filepath": "_d_a-sub1.wav", "duration": 0.1, "offset": 0.15, "shard_id": 0},
            {"audio_filepath": "_d_b.wav", "duration": 0.3, "shard_id": 0},
            {"audio_filepath": "_d_c.wav", "duration": 0.3, "shard_id": 1},
        ],
    )
    dataset = read_tarred_dataset(manifest, tars, FAST)
    build = index_shards(list(dataset.tars.values()), progress=False)
    match = match_members(dataset, build.indexes)
    assert match.findings == []
    assert [(c.line, c.member.name, c.offset) for c in match.cuts] == [
        (1, "_d_a.wav", 0.0),
        (2, "_d_a.wav", 0.15),
        (3, "_d_b.wav", 0.0),
        (4, "_d_c.wav", 0.0),
    ]
    assert match.cuts[0].member == match.cuts[1].member  # one member, two segments


def test_every_problem_is_named(tmp_path):
    manifest, tars = _layout(
        tmp_path,
        {0: ["_d_a.wav", "_d_b.wav", "_d_a.wav", "_d_extra.wav"], 1: ["_d_c.wav"]},
        [
            {"audio_filepath": "_d_a.wav", "duration": 0.3, "shard_id": 0},
            {"audio_filepath": "_d_b.wav", "duration": 0.3, "shard_id": 0},
            {"audio_filepath": "_d_gone.wav", "duration": 0.3, "shard_id": 0},  # member missing
            {"audio_filepath": "_d_c.wav", "duration": 0.3, "shard_id": 0},  # its member is in shard 1
            {"audio_filepath": "_d_x.wav", "duration": 0.3},  # no shard_id
            {"audio_filepath": "_d_y.wav", "duration": 0.3, "shard_id": 7},  # no tar 7
        ],
    )
    dataset = read_tarred_dataset(manifest, tars, FAST)
    match = match_members(dataset, index_shards(list(dataset.tars.values()), progress=False).indexes)
    kinds = sorted((f.kind, f.line, f.member) for f in match.findings)
    assert kinds == sorted(
        [
            ("missing_shard_id", 5, "_d_x.wav"),
            ("lines_without_shard", 6, "_d_y.wav"),
            ("duplicate_member", None, "_d_a.wav"),
            ("member_missing", 3, "_d_gone.wav"),
            ("shard_id_mismatch", 4, "_d_c.wav"),
            ("not_in_manifest", None, "_d_extra.wav"),
            ("not_in_manifest", None, "_d_c.wav"),  # shard 1 has a member but no line
            ("shard_without_lines", None, None),
        ]
    )
    messages = {f.kind: f.message() for f in match.findings}
    assert messages["member_missing"].startswith(f"manifest {manifest}:3: member '_d_gone.wav' is not in")
    assert "expected shard_id 1, got 0" in messages["shard_id_mismatch"]


def test_per_shard_manifests_check_the_lines_shard_id(tmp_path):
    manifest, tars = _layout(
        tmp_path,
        {0: ["_d_a.wav"], 1: ["_d_b.wav"]},
        [
            {"audio_filepath": "_d_a.wav", "duration": 0.3, "shard_id": 0, "_file": 0},
            {"audio_filepath": "_d_b.wav", "duration": 0.3, "shard_id": 0, "_file": 1},  # written 0, file says 1
        ],
        per_shard_manifests=True,
    )
    dataset = read_tarred_dataset(manifest, tars, FAST)
    assert sorted(dataset.tars) == [0, 1] and [len(dataset.lines[s]) for s in (0, 1)] == [1, 1]
    assert [(f.kind, f.line, f.shard_id) for f in dataset.findings] == [("shard_id_mismatch", 1, 1)]
    assert match_members(dataset, index_shards(list(dataset.tars.values()), progress=False).indexes).cuts


def test_unreadable_tar_makes_its_lines_unaddressable_not_lost(tmp_path, closed_port):
    manifest, _ = _layout(tmp_path, {0: ["_d_a.wav"]}, [{"audio_filepath": "_d_a.wav", "duration": 0.3, "shard_id": 0}])
    dataset = read_tarred_dataset(manifest, [f"http://127.0.0.1:{closed_port}/audio_0.tar"], FAST)
    build = index_shards(list(dataset.tars.values()), policy=FAST, progress=False)
    match = match_members(dataset, build.indexes)
    assert match.cuts == [] and [f.kind for f in match.findings] == ["member_missing"]
    assert "could not be read" in match.findings[0].detail
