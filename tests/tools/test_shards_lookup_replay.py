"""lookup and replay-batch on shards: a real 2-rank DDP run on a Shar corpus, each step named down to the
shard member and its byte offset and rebuilt bit-exactly; a failing member extracted into a repro folder."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from nestkit.data.shards.write import write_nemo_tarred, write_shar
from nestkit.runfolder.batch_log import read_batch_log
from tests.helpers import write_train_config
from tests.tools.test_lookup_replay import run


@pytest.fixture(scope="module")
def shar_run(tmp_path_factory):
    """A 2-rank DDP run of 6 steps (gloo, CPU) whose training data is a Shar directory."""
    from nestkit.data.synthetic import make_corpus

    folder = tmp_path_factory.mktemp("shar_run")
    corpus = make_corpus(folder / "data", num_utterances=18, num_noises=2, min_seconds=1.2, max_seconds=2.2, seed=9)
    write_shar(corpus["train"], str(folder / "shar"), shard_size=5, progress=False)
    config = write_train_config(
        folder / "config.yaml",
        corpus["train"],  # replaced by shar_path below (NeMo's rule: shar_path wins)
        corpus["noise"],
        name="run",
        model={"train_ds": {"num_workers": 1, "shar_path": str(folder / "shar"), "manifest_filepath": None}},
        trainer={"devices": 2, "max_steps": 6},
    )
    result = run("train", config, cwd=folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return {"config": config, "run_dir": folder / "runs" / "run", "folder": folder, "shar": folder / "shar"}


@pytest.mark.slow
def test_lookup_and_replay_of_a_sharded_ddp_run_match_its_log(shar_run):
    run_dir, folder = shar_run["run_dir"], shar_run["folder"]
    for rank in (0, 1):
        record = read_batch_log(run_dir, rank)[3]
        looked = run(
            "lookup",
            shar_run["config"],
            "--step",
            str(record["step"]),
            "--rank",
            str(rank),
            "--format",
            "json",
            cwd=folder,
        )
        assert looked.returncode == 0, looked.stderr[-2000:]
        [found] = json.loads(looked.stdout)["ranks"]
        assert found["fingerprint"] == record["fingerprint"] and found["matches_log"] is True
        assert [c["cut_id"] for c in found["cuts"]] == record["cut_ids"]
        for cut in found["cuts"]:
            # shard, member and byte offset: the member's bytes are exactly there in the tar
            assert (
                cut["shard"].startswith(str(shar_run["shar"] / "recording."))
                and cut["member"] == f"{cut['cut_id']}.flac"
            )
            assert cut["path"] == f"{cut['shard']}:{cut['member']}"
            with tarfile.open(cut["shard"]) as tar:
                member = tar.getmember(cut["member"])
            assert (member.offset_data, member.size) == (cut["member_offset"], cut["member_size"])
        replayed = run(
            "replay-batch", "--config", shar_run["config"], "--step", str(record["step"]), "--rank", str(rank),
            "--format", "json", cwd=folder,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        report = json.loads(replayed.stdout)
        assert report["fingerprint"] == record["fingerprint"] and report["matches_log"] is True
        assert all(s["status"] == "ok" and ".tar:" in s["path"] for s in report["samples"])
    table = run("lookup", shar_run["config"], "--batch", "0", cwd=folder)
    # the table names the member and its bytes in the tar (long paths fold: look for the parts)
    assert table.returncode == 0 and ".flac" in table.stdout and re.search(r"@\d+\+\d+", table.stdout)


def _spoil_member(tar: str, name: str) -> bytes:
    """Overwrite a member's bytes in place with non-audio of the same size; returns what it now holds."""
    with tarfile.open(tar) as t:
        member = t.getmember(name)
    junk = (b"not audio " * (member.size // 10 + 1))[: member.size]
    with open(tar, "r+b") as f:
        f.seek(member.offset_data)
        f.write(junk)
    return junk


@pytest.mark.parametrize("layout", ["shar", "nemo"])
def test_a_failing_member_gets_a_repro_folder_with_the_member_and_its_line(tmp_path, layout):
    from nestkit.data.synthetic import make_corpus

    corpus = make_corpus(tmp_path / "data", num_utterances=9, num_noises=1, min_seconds=1.2, max_seconds=1.6, seed=2)
    if layout == "shar":
        written = write_shar(corpus["train"], str(tmp_path / "out"), shard_size=4, progress=False)
        dataset = {"shar_path": str(tmp_path / "out"), "manifest_filepath": None}
        member = "utt0001-L1.flac"
    else:
        written = write_nemo_tarred(corpus["train"], str(tmp_path / "out"), shard_size=4, progress=False)
        dataset = {
            "manifest_filepath": str(tmp_path / "out" / "tarred_audio_manifest.json"),
            "is_tarred": True,
            "tarred_audio_filepaths": str(tmp_path / "out" / "audio__OP_0..1_CL_.tar"),
        }
        with tarfile.open(written.tars[0]) as t:
            member = t.getnames()[0]
    junk = _spoil_member(written.tars[0], member)
    config = write_train_config(
        tmp_path / "c.yaml", corpus["train"], model={"train_ds": {**dataset, "shuffle": False, "batch_size": 4}}
    )
    result = run(
        "replay-batch", "0", "--config", config, "--world-size", "1", "--repro-dir", str(tmp_path / "repro"),
        "--format", "json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    [failed] = [s for s in report["samples"] if s["status"] != "ok"]
    assert failed["status"] == "not_audio" and failed["path"] == f"{written.tars[0]}:{member}"
    [folder] = [Path(d) for d in report["repro_dirs"]]
    extracted = folder / member
    assert extracted.read_bytes() == junk  # the member, as a standalone file
    original = json.loads((folder / "original_line.json").read_text())
    line = json.loads((folder / ("manifest.jsonl" if layout == "shar" else "manifest.json")).read_text())
    if layout == "shar":
        assert original["id"] == line["id"] == failed["planned_cut"]
        assert line["recording"]["sources"] == [{"type": "file", "channels": [0], "source": str(extracted)}]
    else:
        assert original["audio_filepath"] == member and line["audio_filepath"] == str(extracted)
        assert "shard_id" not in line and line["duration"] == original["duration"]
    assert f"Member: {member} of shard {written.tars[0]}" in (folder / "README.txt").read_text()
    command = (folder / "command.sh").read_text().splitlines()[-1]
    again = run(*command.split()[1:], "--format", "json", "--repro-dir", str(tmp_path / "repro2"), cwd=tmp_path)
    assert [s["status"] for s in json.loads(again.stdout)["samples"]] == ["not_audio"]
