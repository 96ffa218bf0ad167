"""The cut index as a shared file: built once, memory-mapped by every process, rebuilt when stale,
safe with concurrent builders, and every unusable line collected at once."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nestkit.core.errors import ManifestError, ManifestProblems
from nestkit.data import index_io
from nestkit.data.corpus import manifest_corpus
from nestkit.data.index import CutIndex, index_folder, open_index
from tests.helpers import manifest_of

REPO = Path(__file__).parents[2]


def nemo_lines(n: int, start: int = 0) -> list[dict]:
    return [{"audio_filepath": f"a/u{i}.wav", "duration": 1.0 + i / 100} for i in range(start, start + n)]


def test_the_index_is_a_folder_beside_the_manifest_and_reopening_parses_nothing(tmp_path):
    manifest = manifest_of(tmp_path / "m.json", nemo_lines(50))
    index = CutIndex.build(manifest)
    assert Path(index.folder).parent == tmp_path / ".nestkit-index"
    assert isinstance(index.duration, np.memmap) and index.duration.dtype == np.float64
    assert np.allclose(index.duration, [1.0 + i / 100 for i in range(50)])
    stamp = os.stat(Path(index.folder) / "meta.json").st_mtime_ns
    again = CutIndex.build(manifest)
    assert again.folder == index.folder and os.stat(Path(again.folder) / "meta.json").st_mtime_ns == stamp
    assert again.cut(7).id == "u7-L8" and again.where(7) == f"{manifest}:8"


def test_a_changed_manifest_is_indexed_again_and_says_why(tmp_path):
    manifest = manifest_of(tmp_path / "m.json", nemo_lines(5))
    assert len(CutIndex.build(manifest)) == 5
    manifest_of(tmp_path / "m.json", nemo_lines(7))
    heard: list[str] = []
    index = open_index(manifest_corpus(manifest), notify=heard.append)
    assert len(index) == 7
    assert any("changed since it was indexed (size" in h for h in heard)
    assert any("rebuilt" in n for n in index.notices)


def test_every_bad_line_is_collected_in_one_error(tmp_path):
    """A manifest with 8 malformed lines: one error lists all 8, each named file:line with its problem."""
    good = nemo_lines(20)
    bad = {
        3: "{not json",
        5: json.dumps({"duration": 1.0}),
        8: json.dumps({"audio_filepath": "x.wav"}),
        9: json.dumps({"audio_filepath": "x.wav", "duration": -1}),
        12: "[1, 2]",
        15: json.dumps({"audio_filepath": "x.wav", "duration": "long"}),
        17: json.dumps({"audio_filepath": "x.wav", "duration": 1, "offset": -2}),
        20: '{"audio_filepath": "x.wav", "duration": NaN}',
    }
    lines = [bad.get(i + 1, json.dumps(entry)) for i, entry in enumerate(good + nemo_lines(8, 20))]
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestProblems) as info:
        CutIndex.build(str(manifest))
    err = info.value
    assert isinstance(err, ManifestError) and err.total == 8
    assert [p.line for p in err.problems] == sorted(bad)
    text = str(err)
    for number in bad:
        assert f"{manifest}:{number}:" in text
    assert "--skip-bad-lines" in text and "malformed JSON" in text and "invalid offset" in text
    # the same index opened by a run that may go on without them: the 8 lines are left out and named
    index = open_index(manifest_corpus(str(manifest)), skip_bad=True)
    assert len(index) == 28 - 8 and index.problem_count == 8
    assert [p.line for p in index.problems] == sorted(bad)
    assert set(int(x) for x in index.line) == set(range(1, 29)) - set(bad)


def test_chunks_and_batches_do_not_change_the_index(tmp_path, monkeypatch):
    entries = nemo_lines(300)
    entries[150] = {"duration": 1.0}  # a bad line straddling nothing special
    manifest = tmp_path / "m.json"
    manifest.write_text("".join(json.dumps(e) + "\n" + ("\n" if i % 7 == 0 else "") for i, e in enumerate(entries)))
    whole = open_index(manifest_corpus(str(manifest)), skip_bad=True, cache_dir=str(tmp_path / "a"))
    monkeypatch.setattr(index_io, "CHUNK_BYTES", 97)  # chunks end mid-line: the carry must join them
    monkeypatch.setattr(index_io, "PARSE_LINES", 4)
    small = open_index(manifest_corpus(str(manifest)), skip_bad=True, cache_dir=str(tmp_path / "b"))
    for column in ("duration", "source", "line", "start", "length"):
        assert np.array_equal(getattr(whole, column), getattr(small, column)), column
    assert [p.line for p in small.problems] == [p.line for p in whole.problems] == [151 + 150 // 7 + 1]
    assert [small.cut_id(i) for i in range(len(small))] == [whole.cut_id(i) for i in range(len(whole))]


def test_gzip_manifests_are_copied_into_the_index_and_a_cut_short_one_keeps_its_readable_lines(tmp_path):
    text = "".join(json.dumps(e) + "\n" for e in nemo_lines(400))
    whole = tmp_path / "m.json.gz"
    whole.write_bytes(gzip.compress(text.encode()))
    index = CutIndex.build(str(whole))
    assert len(index) == 400 and index.meta["sources"][0]["text"] == "blob" and index.cut(399).id == "u399-L400"
    data = gzip.compress(text.encode())
    short = tmp_path / "short.json.gz"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(ManifestProblems, match="cannot be read to its end"):
        CutIndex.build(str(short))
    kept = open_index(manifest_corpus(str(short)), skip_bad=True)
    assert 0 < len(kept) < 400 and kept.cut(len(kept) - 1).id == f"u{len(kept) - 1}-L{len(kept)}"


def test_lhotse_manifests_find_cuts_by_their_ids(tmp_path):
    from lhotse import CutSet, MonoCut, Recording
    from lhotse.audio import AudioSource

    cuts = [
        MonoCut(
            id=f"spk{i % 3}/utt-{i}",
            start=0.0,
            duration=1.5,
            channel=0,
            recording=Recording(f"r{i}", [AudioSource("file", [0], f"/x/{i}.wav")], 16000, 24000, 1.5),
        )
        for i in range(30)
    ]
    path = tmp_path / "cuts.jsonl.gz"
    CutSet(cuts).to_file(str(path))
    nemo = manifest_of(tmp_path / "n.json", nemo_lines(10))
    index = CutIndex.build([str(path), nemo])
    assert index.find_all("spk2/utt-17") == [17]
    assert index.find("u4-L5") == 34 and index.find("no-such") is None
    assert index.row_at(nemo, 5) == 34 and index.row_at(nemo, 11) is None


def test_spawned_workers_get_the_files_not_a_copy_of_the_columns(tmp_path):
    manifest = manifest_of(tmp_path / "m.json", nemo_lines(20_000))
    index = CutIndex.build(manifest)
    blob = pickle.dumps(index)
    assert len(blob) < 10_000  # the folder and the meta data, not 20k rows x 6 columns
    other = pickle.loads(blob)
    assert isinstance(other.duration, np.memmap) and other.cut_id(19_999) == index.cut_id(19_999)


def test_concurrent_builders_make_one_index_and_all_use_it(tmp_path):
    """Four processes start on a new manifest at once: one builds, the others wait and reuse its folder."""
    manifest = manifest_of(tmp_path / "m.json", nemo_lines(200_000))
    script = (
        "import sys, json; from nestkit.data.index import CutIndex\n"
        "i = CutIndex.build(sys.argv[1])\n"
        "print(json.dumps({'folder': i.folder, 'rows': len(i), 'built_s': i.meta['built_s'], 'sum': float(i.duration.sum())}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, manifest], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    results = [json.loads(o[0]) for o in outputs]
    assert len({r["folder"] for r in results}) == 1 and {r["rows"] for r in results} == {200_000}
    assert len({r["built_s"] for r in results}) == 1  # the same build, not four
    assert len({r["sum"] for r in results}) == 1
    siblings = sorted(p.name for p in (tmp_path / ".nestkit-index").iterdir())
    assert siblings == sorted([Path(results[0]["folder"]).name, Path(results[0]["folder"]).name + ".lock"])


def test_a_builder_that_loses_the_race_keeps_the_winners_index(tmp_path):
    """Where locks do not work, two builders finish: the second rename finds the first index in place."""
    from nestkit.data import index as index_module

    manifest = manifest_of(tmp_path / "m.json", nemo_lines(10))
    corpus = manifest_corpus(manifest)
    folder = index_folder(corpus)
    index_module._build(corpus, folder, False, index_module.DEFAULT_POLICY, None)
    first = json.loads(Path(folder, "meta.json").read_text())
    time.sleep(0.01)
    os.makedirs(folder + ".tmp-other")
    Path(folder, "..", Path(folder).name + ".tmp-other", "meta.json").write_text("{}")
    index_module._publish(folder + ".tmp-other", folder)  # an older index is replaced atomically...
    assert json.loads(Path(folder, "meta.json").read_text()) == {}
    index_module._build(corpus, folder, False, index_module.DEFAULT_POLICY, None)  # ...and a stale one rebuilt
    assert json.loads(Path(folder, "meta.json").read_text())["rows"] == first["rows"] == 10
    assert not [p for p in Path(folder).parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_read_only_folder_sends_the_index_to_the_cache(tmp_path, monkeypatch):
    """A manifest on a read-only file system (a real read-only tmpfs): the index goes to the user cache."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        manifest = manifest_of(folder / "m.json", nemo_lines(3))
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        monkeypatch.setenv("NESTKIT_INDEX_CACHE", str(tmp_path / "cache"))
        index = CutIndex.build(manifest)
        assert Path(index.folder).is_relative_to(tmp_path / "cache") and len(index) == 3
        assert not (folder / ".nestkit-index").exists()
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_index_with_a_damaged_column_file_is_built_again(tmp_path):
    manifest = manifest_of(tmp_path / "m.json", nemo_lines(30))
    index = CutIndex.build(manifest)
    Path(index.folder, "duration.bin").write_bytes(b"\0" * 7)  # cut short
    heard: list[str] = []
    again = open_index(manifest_corpus(manifest), notify=heard.append)
    assert len(again) == 30 and np.allclose(again.duration, [1.0 + i / 100 for i in range(30)])
    assert any("cannot be read" in h for h in heard)
