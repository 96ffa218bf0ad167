"""lookup and replay-batch against a real 2-rank training run: same cuts, same fingerprints, same loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nestkit.runfolder.batch_log import read_batch_log
from tests.helpers import manifest_of, write_speech, write_train_config


def run(*args: str, cwd: Path, env: dict | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-rank DDP run of 8 steps with a checkpoint at step 4; its config and run folder."""
    from nestkit.data.synthetic import make_corpus

    folder = tmp_path_factory.mktemp("lookup_run")
    corpus = make_corpus(folder / "data", num_utterances=20, num_noises=3, min_seconds=1.2, max_seconds=2.5, seed=5)
    config = write_train_config(
        folder / "config.yaml",
        corpus["train"],
        corpus["noise"],
        name="run",
        model={"train_ds": {"num_workers": 1}},
        trainer={"devices": 2, "max_steps": 8},
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": 4, "keep_periodic": -1}},
    )
    result = run("train", config, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": config, "run_dir": folder / "runs" / "run", "folder": folder}


@pytest.mark.slow
def test_lookup_and_replay_agree_with_what_training_logged(trained):
    from nestkit.config import load_config
    from nestkit.tools.lookup import lookup_batch
    from nestkit.tools.session import DebugSession

    run_dir = trained["run_dir"]
    # every logged batch of both ranks, through the library (one session, as the CLI opens it)
    session = DebugSession.open(load_config(trained["config"]).config, None, run_dir)
    assert session.world_size == 2  # read from the run folder's logs
    for rank in (0, 1):
        for record in read_batch_log(run_dir, rank):
            # the log names the rank's batch number and the micro-batch's index in the epoch's sequence
            # (rank r of 2 takes r, r + 2, ...)
            place = session.layout.place_of_index(record["epoch"], record["index"])
            assert (place.rank, place.step, place.batch) == (rank, record["step"], record["batch"])
            assert record["index"] == 2 * record["batch"] + rank
            [found] = lookup_batch(session, [place])
            assert [c.cut_id for c in found.planned] == record["cut_ids"]
            assert found.fingerprint == record["fingerprint"] and found.matches_log is True
    # and once through the CLI
    record = read_batch_log(run_dir, 0)[6]
    looked = run(
        "lookup",
        trained["config"],
        "--batch",
        str(record["batch"]),
        "--epoch",
        str(record["epoch"]),
        "--all-ranks",
        "--format",
        "json",
        cwd=trained["folder"],
    )
    assert looked.returncode == 0, looked.stderr[-2000:]
    data = json.loads(looked.stdout)
    assert data["world_size"] == 2 and len(set(data["batches_per_rank"].values())) == 1
    assert data["ranks"][0]["fingerprint"] == record["fingerprint"] and data["ranks"][0]["matches_log"] is True
    assert data["ranks"][1]["matches_log"] is True
    # replay, through --step, on rank 1
    record = read_batch_log(run_dir, 1)[5]
    replayed = run(
        "replay-batch",
        "--config",
        trained["config"],
        "--step",
        str(record["step"]),
        "--rank",
        "1",
        "--format",
        "json",
        cwd=trained["folder"],
    )
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    data = json.loads(replayed.stdout)
    assert data["fingerprint"] == record["fingerprint"] and data["matches_log"] is True
    assert [s["planned_cut"] for s in data["samples"]] == record["cut_ids"]
    assert all(s["status"] == "ok" and s["load_ms"] > 0 for s in data["samples"])


@pytest.mark.slow
def test_replay_forward_reproduces_the_logged_loss(trained):
    checkpoint = trained["run_dir"] / "checkpoints" / "step4.ckpt"
    record = next(r for r in read_batch_log(trained["run_dir"], 0) if r["step"] == 4)
    replayed = run(
        "replay-batch",
        str(record["batch"]),
        "--epoch",
        str(record["epoch"]),
        "--config",
        trained["config"],
        "--forward",
        "--checkpoint",
        str(checkpoint),
        "--format",
        "json",
        cwd=trained["folder"],
    )
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    forward = json.loads(replayed.stdout)["forward"]
    assert forward["step"] == 4 and forward["checkpoint_step"] == 4
    assert forward["loss"] == record["loss"]  # bit-identical: same weights, batch, masks, dither, dropout
    assert forward["nonfinite"] is None and forward["grad_norm"] > 0


@pytest.mark.slow
def test_in_flight_batches_and_cut_and_index_lookups(trained):
    folder = trained["folder"]
    table = run("lookup", trained["config"], "--step", "2", "--all-ranks", cwd=folder)
    assert table.returncode == 0, table.stderr
    # 4 batches per epoch; 1 worker x prefetch 2 + Lightning's one batch ahead, into the next epoch
    assert "in flight while step 2 runs: batch(es) 3, 1/0, 1/1" in table.stdout
    assert "batch 2 of rank 0" in table.stdout and "batch 2 of rank 1" in table.stdout
    record = read_batch_log(trained["run_dir"], 1)[2]
    cut = record["cut_ids"][1]
    located = json.loads(run("lookup", trained["config"], "--cut", cut, "--format", "json", cwd=folder).stdout)
    [match] = located["matches"]
    assert {
        "rank": 1,
        "batch": record["batch"],
        "micro_batch": record["index"],
        "slot": 1,
        "step": record["step"],
    } in match["places"]
    batch_size = 2
    by_index = json.loads(
        run(
            "lookup",
            trained["config"],
            "--index",
            str(record["batch"] * batch_size + 1),
            "--rank",
            "1",
            "--format",
            "json",
            cwd=folder,
        ).stdout
    )
    assert by_index["cut_id"] == cut and by_index["batch"] == record["batch"]


def test_a_failing_sample_gets_a_repro_folder_that_reproduces_it(tmp_path):
    good = [(write_speech(tmp_path / f"g{i}.wav", 1.3, seed=i), 1.3) for i in range(3)]
    manifest = manifest_of(tmp_path / "train.json", [(str(tmp_path / "missing.wav"), 1.3)] + good)
    config = write_train_config(tmp_path / "c.yaml", manifest, model={"train_ds": {"shuffle": False, "batch_size": 4}})
    result = run(
        "replay-batch",
        "0",
        "--config",
        config,
        "--world-size",
        "1",
        "--repro-dir",
        str(tmp_path / "repro"),
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    [failed] = [s for s in report["samples"] if s["status"] != "ok"]
    assert (failed["planned_cut"], failed["status"], failed["line"]) == ("missing-L1", "missing", 1)
    assert failed["used_cut"] != "missing-L1"  # the batch kept its size with a substitute
    [folder] = report["repro_dirs"]
    folder = Path(folder)
    assert json.loads((folder / "manifest.json").read_text())["audio_filepath"] == str(tmp_path / "missing.wav")
    command = (folder / "command.sh").read_text().splitlines()[-1]
    assert command.startswith("nestkit replay-batch 0 --config ")
    again = run(*command.split()[1:], "--format", "json", "--repro-dir", str(tmp_path / "repro2"), cwd=tmp_path)
    assert again.returncode == 1
    again_report = json.loads(again.stdout)
    assert [s["status"] for s in again_report["samples"]] == ["missing"]
    assert "no other loadable cut to substitute" in again_report["batch_error"]  # a one-cut manifest
