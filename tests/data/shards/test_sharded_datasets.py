"""Training data from shards, configured with NeMo's own keys: lhotse Shar (`shar_path`) and NeMo tarred
datasets (`is_tarred` + `tarred_audio_filepaths`), local and over a real HTTP server, with the same batches
as the per-file corpus they were made from, and every broken shard a named problem, a quarantine record
or a rebuild."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from nestkit.core.errors import ConfigError, ManifestProblems
from nestkit.data.corpus import manifest_corpus
from nestkit.data.index import open_index
from nestkit.data.pipeline import build_pipeline
from nestkit.data.shards.write import write_nemo_tarred, write_shar
from nestkit.data.synthetic import make_corpus
from nestkit.runfolder.quarantine import read_quarantine
from tests.helpers import data_config, manifest_of

from .conftest import RangeServer
from .corpus import lhotse_shar, make_wavs, truncate

REPO = Path(__file__).parents[3]
SHARD_SIZE = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A per-file corpus (16-bit PCM WAV) and its Shar and NeMo tarred copies written by nestkit."""
    folder = tmp_path_factory.mktemp("sharded")
    paths = make_corpus(folder / "files", num_utterances=14, num_noises=2, min_seconds=1.2, max_seconds=2.2, seed=5)
    write_shar(paths["train"], str(folder / "shar"), shard_size=SHARD_SIZE, progress=False)
    nemo = write_nemo_tarred(paths["train"], str(folder / "nemo"), shard_size=SHARD_SIZE, progress=False)
    shar, nemo_dir = str(folder / "shar"), str(folder / "nemo")
    return {**paths, "shar": shar, "nemo": nemo_dir, "tars": len(nemo.tars), "cuts": nemo.cuts}


def files_config(data, **ds):
    return data_config(data["train"], data["noise"], **ds)


def shar_config(data, shar_path=None, **ds):
    return data_config([], data["noise"], shar_path=shar_path or data["shar"], **ds)


def tarred_config(data, root=None, **ds):
    root = root or data["nemo"]
    return data_config(
        f"{root}/tarred_audio_manifest.json",
        data["noise"],
        is_tarred=True,
        tarred_audio_filepaths=f"{root}/audio__OP_0..{data['tars'] - 1}_CL_.tar",
        **ds,
    )


def shar_urls(base: str, shards: int) -> dict[str, str]:
    """NeMo's dict form of shar_path, with its _OP_/_CL_ range patterns, for Shar served at `base`."""
    last = shards - 1
    return {
        "cuts": f"{base}/cuts._OP_000000..{last:06d}_CL_.jsonl.gz",
        "recording": f"{base}/recording._OP_000000..{last:06d}_CL_.tar",
    }


def fingerprints(pipeline, batches: int = 3) -> list[tuple[str, list[str]]]:
    out = []
    for n in range(batches):
        batch = pipeline.batch(n, epoch=1)
        out.append((batch.fingerprint, batch.cut_ids))
    return out


def test_shar_written_by_lhotse_itself_is_read_from_shar_path(tmp_path):
    from lhotse import CutSet

    wavs = make_wavs(tmp_path / "wav", 6, seconds=1.1)
    lhotse_shar(tmp_path / "shar", wavs, shard_size=4)
    before = sorted(os.listdir(tmp_path / "shar"))
    pipeline = build_pipeline(data_config([], None, shar_path=str(tmp_path / "shar"), batch_size=3, shuffle=False))
    assert len(pipeline.index) == 6 and pipeline.index.kind == "shar"
    batch = pipeline.batch(0)
    assert batch.cut_ids == ["utt000", "utt001", "utt002"]  # lhotse's own ids
    assert batch.records[0]["path"] == f"{tmp_path / 'shar' / 'recording.000000.tar'}:utt000.flac"
    # nothing was added to the Shar directory: lhotse's own reader still reads it
    assert sorted(os.listdir(tmp_path / "shar")) == before
    assert [c.id for c in CutSet.from_shar(in_dir=str(tmp_path / "shar"))] == [f"utt{i:03d}" for i in range(6)]


def test_the_same_batches_from_files_from_shar_and_from_nemo_tars(data):
    """Same cut ids and seed -> bit-identical batches (the fingerprint covers ids, decisions and audio)."""
    expected = fingerprints(build_pipeline(files_config(data)))
    assert fingerprints(build_pipeline(shar_config(data))) == expected
    assert fingerprints(build_pipeline(tarred_config(data))) == expected


@pytest.mark.parametrize("kind", ["shar", "nemo"])
def test_shard_batches_are_the_same_with_workers_and_in_a_fresh_process(data, kind):
    cfg = shar_config(data) if kind == "shar" else tarred_config(data)
    pipeline = build_pipeline(cfg)
    pipeline.sampler.set_epoch(1)
    in_process = [pipeline.batch(n).fingerprint for n in range(len(pipeline.sampler))]
    pipeline.sampler.set_epoch(1)
    assert [b.fingerprint for b in pipeline.dataloader(num_workers=2)] == in_process
    train = [] if kind == "shar" else f"{data['nemo']}/tarred_audio_manifest.json"
    keys = (
        {"shar_path": data["shar"]}
        if kind == "shar"
        else {"is_tarred": True, "tarred_audio_filepaths": f"{data['nemo']}/audio__OP_0..{data['tars'] - 1}_CL_.tar"}
    )
    script = (
        "import json, sys; from tests.helpers import data_config; from nestkit.data.pipeline import build_pipeline\n"
        "train, noise, keys = json.loads(sys.argv[1])\n"
        "p = build_pipeline(data_config(train, noise, **keys))\n"
        "p.sampler.set_epoch(1)\n"
        "print(json.dumps([p.batch(n).fingerprint for n in range(len(p.sampler))]))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [sys.executable, "-c", script, json.dumps([train, data["noise"], keys])]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == in_process


def test_shards_over_http_give_the_same_batches(data, server, http_root, tmp_path):
    for name in ("shar", "nemo"):
        shutil.copytree(data[name], http_root / name, dirs_exist_ok=True)
    base = server.base
    last = data["tars"] - 1
    shar = shar_config(data, shar_path=shar_urls(f"{base}/shar", data["tars"]))
    tarred = data_config(
        f"{base}/nemo/tarred_audio_manifest.json",
        data["noise"],
        is_tarred=True,
        tarred_audio_filepaths=f"{base}/nemo/audio_{{0..{last}}}.tar",
    )
    expected = fingerprints(build_pipeline(files_config(data)))
    for cfg in (shar, tarred):
        pipeline = build_pipeline(cfg)
        assert pipeline.index.shards[0].startswith("http://127.0.0.1:")
        assert fingerprints(pipeline) == expected
    record = build_pipeline(shar).batch(0).records[0]
    assert record["path"].startswith(f"{base}/shar/recording.") and ".tar:" in record["path"]


def test_a_remote_manifest_is_indexed_over_http(tmp_path, server, http_root):
    manifest = manifest_of(
        http_root / "remote.json", [{"audio_filepath": f"a/{i}.wav", "duration": 1.0} for i in range(40)]
    )
    url = server.url(manifest)
    index = open_index(manifest_corpus(url), cache_dir=str(tmp_path / "cache"))
    assert len(index) == 40 and index.manifests == [url] and index.item(39)["audio_filepath"] == "a/39.wav"
    assert Path(index.folder).parent == tmp_path / "cache"


@pytest.mark.parametrize("world", range(1, 9))
def test_equal_steps_on_every_rank_over_shards(data, world):
    cfg = shar_config(data, batch_size=1)
    counts = {len(build_pipeline(cfg, rank=r, world_size=world).sampler) for r in range(world)}
    assert len(counts) == 1 and counts.pop() >= 1


def copy_of(data, name: str, tmp_path) -> str:
    target = tmp_path / name
    shutil.copytree(data[name], target)
    if os.path.isdir(data[name] + ".nkidx"):
        shutil.copytree(data[name] + ".nkidx", str(target) + ".nkidx")
    return str(target)


def test_a_truncated_tar_names_the_lost_lines_and_the_rest_trains(data, tmp_path):
    root = copy_of(data, "nemo", tmp_path)
    tar = f"{root}/audio_1.tar"
    with tarfile.open(tar) as t:
        members = [m for m in t.getmembers() if m.isreg()]
    truncate(tar, members[2].offset_data + 100)  # inside the third member: it and the fourth are lost
    with pytest.raises(ManifestProblems) as info:
        build_pipeline(tarred_config(data, root))
    assert info.value.total == 2
    assert all("is not in shard 1" in p.problem and "cut short" in p.problem for p in info.value.problems)
    skipping = tarred_config(data, root)
    skipping.nestkit.skip_bad_manifest_lines = True
    pipeline = build_pipeline(skipping)
    assert len(pipeline.index) == data["cuts"] - 2 and any(
        "ends inside" in n or "cut short" in n for n in pipeline.index.notices
    )
    assert len(pipeline.batch(0).cut_ids) == 4


def test_a_truncated_shar_tar_names_its_lost_cuts(data, tmp_path):
    root = copy_of(data, "shar", tmp_path)
    tar = f"{root}/recording.000000.tar"
    with tarfile.open(tar) as t:
        members = [m for m in t.getmembers() if m.isreg()]
    truncate(tar, members[4].offset_data + 10)  # the third cut's audio is cut: it and the fourth are lost
    with pytest.raises(ManifestProblems) as info:
        build_pipeline(shar_config(data, root))
    lost = info.value.problems
    assert [p.line for p in lost] == [3, 4] and all("no member pair" in p.problem for p in lost)


def test_a_missing_member_and_a_duplicate_member(data, tmp_path):
    root = copy_of(data, "nemo", tmp_path)
    manifest = Path(root) / "tarred_audio_manifest.json"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    lines[5]["audio_filepath"] = "never_written.wav"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with tarfile.open(f"{root}/audio_0.tar") as t:
        first = t.getmembers()[0]
        data0 = t.extractfile(first).read()
    with tarfile.open(f"{root}/audio_0.tar", "a") as t:  # the same name again, other bytes
        info = tarfile.TarInfo(first.name)
        info.size = 44
        t.addfile(info, io.BytesIO(b"\0" * 44))
    with pytest.raises(ManifestProblems) as err:
        build_pipeline(tarred_config(data, root))
    (problem,) = err.value.problems
    assert problem.line == 6 and "member 'never_written.wav' is not in shard 1" in problem.problem
    cfg = tarred_config(data, root)
    cfg.nestkit.skip_bad_manifest_lines = True
    pipeline = build_pipeline(cfg)
    assert any("duplicate" in n or "a second member with this name" in n for n in pipeline.index.notices)
    row = pipeline.index.find(lines[0]["cut_id"])
    assert pipeline.index.member(row).size == len(data0)  # the first of the two members is the one read


def test_a_shard_rewritten_after_indexing_is_indexed_again(data, tmp_path):
    root = copy_of(data, "nemo", tmp_path)
    expected = fingerprints(build_pipeline(tarred_config(data, root)))
    tar = f"{root}/audio_0.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    time.sleep(0.01)
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:  # the same members in reverse order
        for m, payload in reversed(members):
            t.addfile(m, io.BytesIO(payload))
    pipeline = build_pipeline(tarred_config(data, root))
    assert any(f"{tar} changed since it was indexed" in n for n in pipeline.index.notices)
    assert fingerprints(pipeline) == expected


def test_a_shard_cut_short_during_training_is_a_quarantined_substitute(data, tmp_path):
    root = copy_of(data, "shar", tmp_path)
    cfg = shar_config(data, root, shuffle=False, batch_size=4)
    pipeline = build_pipeline(cfg, run_dir=tmp_path / "run")
    tar = f"{root}/recording.000000.tar"
    truncate(tar, 2048)  # after the index was opened: the reads find out
    batch = pipeline.batch(0)
    assert len(batch.cut_ids) == 4 and batch.failures
    failed = batch.failures[0]
    assert failed["category"] == "truncated" and failed["path"].startswith(f"{tar}:")
    assert failed["substitute"] and failed["manifest"] == f"{root}/cuts.000000.jsonl.gz"
    assert [r["cut_id"] for r in read_quarantine(tmp_path / "run")] == [f["cut_id"] for f in batch.failures]


def test_an_unreachable_shard_server_is_a_quarantined_sample_within_the_timeout(data, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(data["shar"], served / "shar")
    srv = RangeServer(served)
    try:
        cfg = shar_config(
            data,
            shar_path=shar_urls(f"{srv.base}/shar", data["tars"]),
            sample_timeout_s=3.0,
            max_substitutes=2,
        )
        cfg.nestkit.index_cache_dir = str(tmp_path / "cache")
        pipeline = build_pipeline(cfg)
    finally:
        srv.stop()
    started = time.monotonic()
    with pytest.raises(Exception) as info:  # every cut is remote: the substitutes fail too
        pipeline.batch(0)
    took = time.monotonic() - started
    assert "failed to load" in str(info.value) and "127.0.0.1" in str(info.value)
    assert took < 3 * 3.0 + 5, took  # three bounded loads, never a hang


def test_shar_path_weights_are_honoured_or_refused(data):
    shar = data["shar"]
    half = shar_config(data, shar_path=[[shar, 0.5], [shar, 0.5]])
    assert len(build_pipeline(half).index) == 2 * data["cuts"]  # a directory listed twice: twice per epoch
    assert any("joined, each cut once per epoch" in n for n in build_pipeline(half).index.notices)
    with pytest.raises(ConfigError, match="mixing by probability"):
        build_pipeline(shar_config(data, shar_path=[[shar, 1.0], [shar, 3.0]]))


def test_lhotse_cut_ids_survive_and_index_findings_stay_outside_the_shar_dir(data):
    pipeline = build_pipeline(shar_config(data))
    assert not [p for p in os.listdir(data["shar"]) if not p.startswith(("cuts.", "recording."))]
    assert Path(pipeline.index.folder).parent == Path(data["shar"] + ".nkidx")
    row = pipeline.index.find("utt0005-L5")
    cut = pipeline.index.cut(row)
    assert cut.custom["member"]["name"] == "utt0005-L5.flac"
    assert np.isclose(cut.duration, pipeline.index.duration[row])


def test_nemos_own_yaml_reads_the_tarred_dataset_with_its_own_keys(data):
    """nest_fast-conformer.yaml as NeMo ships it, with only its tarred-dataset keys filled in."""
    from nestkit.config import load_config

    fixture = REPO / "tests" / "fixtures" / "nemo_nest_fast_conformer.yaml"
    last = data["tars"] - 1
    cfg = load_config(
        fixture,
        [
            f"model.train_ds.manifest_filepath={data['nemo']}/tarred_audio_manifest.json",
            "model.train_ds.is_tarred=true",
            f"model.train_ds.tarred_audio_filepaths={data['nemo']}/audio__OP_0..{last}_CL_.tar",
            "model.train_ds.num_workers=0",
            "model.train_ds.min_duration=null",
            "model.validation_ds.manifest_filepath=" + data["validation"],
        ],
    ).config
    pipeline = build_pipeline(cfg)
    assert pipeline.index.kind == "nemo_tarred" and len(pipeline.index) == data["cuts"]
    batch = pipeline.batch(0)
    assert len(batch.cut_ids) == 8 and all(".tar:" in r["path"] for r in batch.records)
