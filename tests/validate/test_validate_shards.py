"""`validate-manifest` on shards: real Shar from lhotse's writer and NeMo tars, corrupted, local and over a
real HTTP range server; every planted problem named where it is, bounded in time, with the exit codes."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nestkit.validate.audio import FAULT_ENV
from nestkit.validate.categories import CATEGORIES, ERROR
from tests.data.shards.conftest import RangeServer
from tests.validate.shard_corpus import (
    broken_nemo,
    broken_shar,
    broken_shar_layouts,
    clean_nemo,
    clean_shar,
    members,
    nan_wav,
    rewrite,
)
from tests.validate.validate_corpus import run_cli, run_json, write_jsonl

SHARD_CATEGORIES = {name for name, c in CATEGORIES.items() if c.stage == "shard"}


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    """Saved indexes of URLs are looked for in a cache folder: keep the tests' out of the user's home."""
    monkeypatch.setenv("NESTKIT_INDEX_CACHE", str(tmp_path / "index-cache"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    server = RangeServer(root)
    yield root, server
    server.stop()


def triples(report: dict) -> set[tuple[str, int, str]]:
    return {(f["manifest"], f["line"], f["category"]) for f in report["findings"]}


@pytest.fixture(scope="module")
def zoo(served):
    """The broken corpora, checked once locally and once over HTTP (Shar by a config's shar_path fields)."""
    root, server = served
    shar, shar_expect = broken_shar(root / "a")
    layouts, layout_expect = broken_shar_layouts(root / "b")
    manifest, pattern, nemo_expect = broken_nemo(root / "c")
    local_args = [manifest, "--tarred-audio", pattern, "--shar", shar]
    for directory in layouts:
        local_args += ["--shar", directory]
    started = time.monotonic()
    local = run_json(*local_args, env={"NESTKIT_INDEX_CACHE": str(root / "cache")})
    local_s = time.monotonic() - started
    base = server.url(root / "a" / "shar")
    config = root / "remote.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model": {
                    "train_ds": {
                        "shar_path": {
                            "cuts": f"{base}/cuts._OP_000000..000002_CL_.jsonl.gz",
                            "recording": f"{base}/recording._OP_000000..000002_CL_.tar",
                        }
                    },
                    "validation_ds": {
                        "is_tarred": True,
                        "manifest_filepath": server.url(manifest),
                        "tarred_audio_filepaths": server.url(root / "c" / "nemo" / Path(pattern).name),
                    },
                }
            }
        )
    )
    remote = run_json("--config", str(config), env={"NESTKIT_INDEX_CACHE": str(root / "cache")})
    return {
        "root": root,
        "server": server,
        "local": local,
        "local_s": local_s,
        "remote": remote,
        "expect": shar_expect | layout_expect | nemo_expect,
        "nemo_manifest": manifest,
    }


@pytest.mark.timeout(180)
def test_every_planted_problem_is_named_where_it_is(zoo):
    done, report = zoo["local"]
    assert done.returncode == 1, done.stderr
    missed = zoo["expect"] - triples(report)
    assert not missed, f"not reported: {sorted(missed)}"
    for f in report["findings"]:  # a member's finding names shard:member, its reason says `shard:member` too
        if f["category"] in ("nan_inf", "not_audio", "member_missing", "not_in_manifest", "duplicate_member"):
            assert ".tar:" in f["path"], f
        assert f["category"] in CATEGORIES and f["severity"] == CATEGORIES[f["category"]].severity
    [nan] = [f for f in report["findings"] if f["category"] == "nan_inf"]
    assert nan["path"].startswith(str(zoo["root"] / "c" / "nemo" / "audio_0.tar") + ":")
    assert nan["reason"].startswith(f"audio {nan['path']}: samples contain NaN") and "at 0.250 s" in nan["reason"]
    summary = report["summary"]
    assert summary["shards"] == 10 and summary["members"] > 0 and summary["exit_code"] == 1
    assert summary["errors"] == sum(f["severity"] == ERROR for f in report["findings"])


@pytest.mark.timeout(180)
def test_the_same_findings_over_http(zoo):
    """Over HTTP the same problems get the same categories on the same lines; the URL names them. Only a
    saved index published beside a shard that was damaged in place (same size) is more: over HTTP its
    stat cannot tell, training would trust it, and the validator says so (`stale_index`)."""
    root, base = str(zoo["root"]), zoo["server"].base
    done, remote = zoo["remote"]
    assert done.returncode == 1, done.stderr
    assert "model.train_ds.shar_path" in done.stderr and "model.validation_ds" in done.stderr
    as_local = {
        (f["manifest"].replace(base, root), f["line"], f["category"], (f["path"] or "").replace(base, root))
        for f in remote["findings"]
    }
    stale = {x for x in as_local if x[2] == "stale_index"}
    assert stale == {(f"{root}/c/nemo/audio_1.tar", 0, "stale_index", f"{root}/c/nemo/audio_1.tar")}
    served_datasets = (f"{root}/a/", f"{root}/c/")
    local = {
        (f["manifest"], f["line"], f["category"], f["path"] or "")
        for f in zoo["local"][1]["findings"]
        if f["manifest"].startswith(served_datasets)
    }
    assert as_local - stale == local
    assert all(f["manifest"].startswith(base) for f in remote["findings"])


def test_every_shard_category_is_exercised(zoo):
    """With test_stalls_and_hangs_are_timeouts and test_unreachable_server (timeout, unreachable)."""
    seen = {f["category"] for run in ("local", "remote") for f in zoo[run][1]["findings"]}
    assert SHARD_CATEGORIES - seen == {"unreachable"}


@pytest.mark.timeout(120)
def test_clean_sharded_corpora_pass_locally_and_over_http(tmp_path, served):
    root, server = served
    folder = root / "clean"
    shar = clean_shar(folder)
    manifest, pattern = clean_nemo(folder)
    done, report = run_json("--shar", shar, manifest, "--tarred-audio", pattern)
    assert done.returncode == 0, report["findings"]
    assert report["findings"] == []
    assert (report["summary"]["shards"], report["summary"]["members"], report["summary"]["lines"]) == (4, 12, 12)
    config = tmp_path / "remote.yaml"
    config.write_text(
        "model:\n"
        "  validation_ds:\n"
        "    is_tarred: true\n"
        f"    manifest_filepath: {server.url(manifest)}\n"
        f"    tarred_audio_filepaths: {server.url(folder / 'nemo' / Path(pattern).name)}\n"
    )
    done, report = run_json("--config", str(config))
    assert done.returncode == 0 and report["findings"] == [], report["findings"]
    assert report["summary"]["members"] == 6


@pytest.mark.timeout(120)
def test_warnings_pass_unless_strict(tmp_path):
    shar = clean_shar(tmp_path, n=2, shard_size=2, rate=8000)  # lhotse keeps the rate: needs_resampling
    done, report = run_json("--shar", shar)
    assert done.returncode == 0 and {f["category"] for f in report["findings"]} == {"needs_resampling"}
    assert [f["line"] for f in report["findings"]] == [1, 2] and all(
        ".tar:utt" in f["path"] for f in report["findings"]
    )
    assert run_cli("--shar", shar, "--strict").returncode == 1


@pytest.mark.timeout(120)
def test_a_config_names_the_data_as_training_reads_it(tmp_path):
    """Relative paths are relative to the YAML, NeMo's path patterns expand, noise manifests get the noise
    rules; one NaN member planted in a NeMo tar is the only finding."""
    shar = clean_shar(tmp_path, n=2, shard_size=2)
    manifest, pattern = clean_nemo(tmp_path)
    tar = str(tmp_path / "nemo" / "audio_1.tar")
    names = members(tar)
    rewrite(tar, [(n, nan_wav() if i == 1 else b) for i, (n, b) in enumerate(names)])
    noise = write_jsonl(tmp_path / "noise.json", [{"audio_filepath": "wav/utt000.wav", "duration": 1.2}])
    (tmp_path / "train.yaml").write_text(
        "model:\n"
        "  sample_rate: 16000\n"
        "  train_ds:\n"
        f"    shar_path: [[{os.path.basename(shar)}, 1.0]]\n"
        "    noise_manifest: noise.json\n"
        "    sample_rate: ${model.sample_rate}\n"
        "  validation_ds:\n"
        "    is_tarred: true\n"
        "    manifest_filepath: nemo/sharded_manifests/manifest__OP_0..1_CL_.json\n"
        f"    tarred_audio_filepaths: nemo/{Path(pattern).name}\n"
    )
    done, report = run_json("--config", str(tmp_path / "train.yaml"), cwd="/")
    assert done.returncode == 1, done.stderr
    [nan] = report["findings"]
    assert (nan["manifest"], nan["line"], nan["category"]) == (
        str(tmp_path / "nemo" / "sharded_manifests" / "manifest_1.json"),
        2,
        "nan_inf",
    )
    assert nan["path"] == f"{tar}:{names[1][0]}"
    assert report["summary"]["noise_manifests"] == [noise] and report["summary"]["shards"] == 3


@pytest.mark.timeout(120)
def test_stalls_and_hangs_are_timeouts(tmp_path, served):
    """A server that hangs before answering and a worker stuck in a read cannot hold the run up: each is a
    `timeout` on its shard or member, the rest is checked, and the run ends within its limits."""
    root, server = served
    folder = root / "slow"
    manifest, _pattern = clean_nemo(folder)
    tars = [folder / "nemo" / "audio_0.tar", folder / "nemo" / "audio_1.tar"]
    hung = f"{server.base}/{{hang/{tars[0].relative_to(root)},{tars[1].relative_to(root)}}}"
    stuck = f"{server.url(tars[1])}:{members(str(tars[1]))[2][0]}"
    started = time.monotonic()
    done, report = run_json(
        manifest, "--tarred-audio", hung, "--shard-timeout", "2", "--timeout", "2", env={FAULT_ENV: f"stall:{stuck}"}
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    timeouts = {(f["manifest"], f["line"], f["path"]) for f in report["findings"] if f["category"] == "timeout"}
    hung_tar = f"{server.base}/hang/slow/nemo/audio_0.tar"
    assert timeouts == {(hung_tar, 0, hung_tar), (manifest, 6, stuck)}
    [member] = [f for f in report["findings"] if f["category"] == "timeout" and f["line"]]
    assert "expected <= 2 s per member" in member["reason"]
    assert [f["category"] for f in report["findings"]] == ["timeout", "timeout"]
    assert "its 3 line(s) cannot be checked" in report["findings"][1]["reason"]  # the shard that never answered
    assert report["summary"]["members"] == 3 and elapsed < 40
    # a worker stuck indexing a local shard: killed at --shard-timeout
    local = str(folder / "nemo" / "audio_0.tar")
    done, report = run_json(
        manifest,
        "--tarred-audio",
        str(folder / "nemo" / "audio_{0,1}.tar"),
        "--shard-timeout",
        "1",
        env={FAULT_ENV: f"stall:{local}"},
    )
    [timeout] = [f for f in report["findings"] if f["category"] == "timeout"]
    assert timeout["manifest"] == local and "expected <= 1 s per shard" in timeout["reason"]


@pytest.mark.timeout(60)
def test_unreachable_server(tmp_path, closed_port_url):
    manifest, _ = clean_nemo(tmp_path, n=2, shard_size=2)
    done, report = run_json(manifest, "--tarred-audio", f"{closed_port_url}/audio_0.tar", "--shard-timeout", "2")
    assert done.returncode == 1
    [f] = report["findings"]
    assert (f["manifest"], f["category"]) == (f"{closed_port_url}/audio_0.tar", "unreachable")
    assert "cannot connect" in f["reason"] and "its 2 line(s) cannot be checked" in f["reason"]


@pytest.fixture
def closed_port_url():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.timeout(120)
def test_report_formats_name_shards(tmp_path):
    shar = clean_shar(tmp_path, n=3, shard_size=3)
    tar = os.path.join(shar, "recording.000000.tar")
    with open(tar, "r+b") as f:
        f.truncate(os.path.getsize(tar) // 2)
    junit = run_cli("--shar", shar, "--format", "junit", "--output", str(tmp_path / "r.xml"))
    assert junit.returncode == 1
    suites = {s.get("name"): s for s in ET.parse(tmp_path / "r.xml").getroot()}
    shard_suite = next(s for name, s in suites.items() if name.endswith("recording.000000.tar"))
    assert "truncated_shard" in {f.get("type") for f in shard_suite.iter("failure")}
    github = run_cli("--shar", shar, "--format", "github").stdout.splitlines()
    assert any(line.startswith("::error file=") and "truncated_shard" in line for line in github)
    table = run_cli("--shar", shar).stdout.splitlines()
    assert table[-1].startswith("validate-manifest FAILED") and "1 shard(s)" in table[-1]
    assert any(": error: [member_missing] " in row and "cuts.000000.jsonl.gz:" in row for row in table)


@pytest.mark.parametrize(
    "case",
    ["shar_not_a_dir", "tarred_without_manifest", "unbalanced", "write_clean", "config_missing", "config_half_tarred"],
)
def test_shard_usage_errors_exit_2(tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "half.yaml").write_text("model:\n  train_ds:\n    is_tarred: true\n    manifest_filepath: m.json\n")
    shar = str(tmp_path)
    args = {
        "shar_not_a_dir": ["--shar", str(tmp_path / "file.txt")],
        "tarred_without_manifest": ["--tarred-audio", "audio_{0..1}.tar"],
        "unbalanced": ["m.json", "--tarred-audio", "audio_{0..1.tar"],
        "write_clean": ["--shar", shar, "--write-clean", str(tmp_path / "clean.json")],
        "config_missing": ["--config", str(tmp_path / "nope.yaml")],
        "config_half_tarred": ["--config", str(tmp_path / "half.yaml")],
    }[case]
    done = run_cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "error:" in done.stderr


@pytest.mark.timeout(120)
def test_checking_shards_stays_light(tmp_path):
    """The light install checks shards too: no lhotse or torch is imported (workers import a subset of the
    parent's modules: the pool, the file checks and the shard tasks)."""
    import subprocess
    import sys

    shar = clean_shar(tmp_path, n=2, shard_size=2)
    manifest, pattern = clean_nemo(tmp_path, n=2, shard_size=1)
    code = (
        "import sys; from nestkit.validate.validator import validate; "
        "from nestkit.validate.shards import SharSource, TarredSource; "
        f"r = validate([], shards=[SharSource({shar!r}), TarredSource({manifest!r}, {pattern!r})]); "
        "heavy = sorted(m for m in ('torch', 'lhotse', 'pytorch_lightning', 'lightning') if m in sys.modules); "
        "print(r.exit_code(False), r.shards.members, ','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100, check=False)
    assert done.stdout.split() == ["0", "4"], done.stderr
