"""`nestkit shard`: per-file manifests -> Shar or NeMo tarred shards, deterministic, indexes alongside,
and the printed config keys read what was written."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nestkit.data.synthetic import make_corpus
from nestkit.runfolder.records import read_jsonl
from tests.helpers import data_config

REPO = Path(__file__).parents[3]


def shard(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", "shard", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("to_shard")
    return make_corpus(folder, num_utterances=12, num_noises=1, min_seconds=1.1, max_seconds=1.5, seed=4)


@pytest.mark.parametrize("layout", ["shar", "nemo"])
def test_the_same_input_gives_the_same_bytes_and_an_index_per_tar(tmp_path, corpus, layout):
    outputs = []
    for name in ("a", "b"):
        result = shard(
            corpus["train"], "-o", str(tmp_path / name), "--format", layout, "--shard-size", "4", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        outputs.append(tmp_path / name)
        assert "use it with:" in result.stdout and "11 cuts in 3 shard(s)" in result.stdout  # 12 - 1 for validation
    a, b = outputs
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    # the same bytes (member indexes excepted: they name their tar and how long their walk took)
    for rel in files:
        if rel.name.endswith(".nkidx"):
            continue
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    tars = sorted(p for p in a.rglob("*.tar"))
    assert len(tars) == 3
    index_folder = Path(str(a) + ".nkidx") if layout == "shar" else a
    assert sorted(p.name for p in index_folder.glob("*.nkidx")) == sorted(t.name + ".nkidx" for t in tars)


def test_the_printed_keys_train_on_what_was_written(tmp_path, corpus):
    result = shard(corpus["train"], "-o", str(tmp_path / "t"), "--format", "nemo", "--shard-size", "5", cwd=tmp_path)
    keys = result.stdout.split("use it with:")[1].split()
    values = dict(k.removeprefix("model.train_ds.").split("=", 1) for k in keys)
    cfg = data_config(
        values["manifest_filepath"], is_tarred=True, tarred_audio_filepaths=values["tarred_audio_filepaths"]
    )
    from nestkit.data.pipeline import build_pipeline

    tarred = build_pipeline(cfg)
    files = build_pipeline(data_config(corpus["train"]))
    assert [tarred.batch(n).fingerprint for n in range(2)] == [files.batch(n).fingerprint for n in range(2)]
    lines = read_jsonl(tmp_path / "t" / "tarred_audio_manifest.json").records
    assert [line["cut_id"] for line in lines] == [files.index.cut_id(i) for i in range(len(files.index))]


def test_a_used_output_folder_and_an_unwritable_line_are_refused_by_name(tmp_path, corpus):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.tar").write_bytes(b"x")
    refused = shard(corpus["train"], "-o", str(tmp_path / "used"), cwd=tmp_path)
    assert refused.returncode == 1 and "not a new or empty folder" in refused.stderr
    manifest = Path(corpus["train"]).with_name("with_a_missing_file.json")  # its relative paths still resolve
    lines = Path(corpus["train"]).read_text().splitlines()
    gone = json.dumps({"audio_filepath": str(tmp_path / "gone.wav"), "duration": 1.0})
    manifest.write_text("\n".join(lines[:2] + [gone] + lines[2:]) + "\n")
    partial = shard(str(manifest), "-o", str(tmp_path / "out"), "--shard-size", "4", cwd=tmp_path)
    assert partial.returncode == 1 and f"manifest {manifest}:3: not written" in partial.stderr
    assert "11 cuts in 3 shard(s)" in partial.stdout
