"""The watchdog and the run folder under real faults, on 2-rank CPU DDP with gloo.

A run folder on a small tmpfs that fills up (during a stall; and filling then freeing mid-run),
a rank stopped with SIGSTOP, rank 0 killed with SIGKILL, a DataLoader worker killed with SIGKILL.
Each ends within stall_timeout + 30 s of the fault with no process of the job left, a verdict
naming the right rank, state and file, logs that lookup/replay-batch/stacks still read, and --
where the disk comes back -- every batch and quarantine record written exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from nestkit.config import load_config
from nestkit.data.pipeline import build_pipeline
from nestkit.monitor.watchdog import STALL_EXIT_CODE
from tests.fullfs import small_tmpfs
from tests.monitor.jobs import Job, heartbeat, jsonl, steps_done
from tests.monitor.test_watchdog_e2e import STALL_S, WORLD, nestkit, watched_config

WITHIN_S = STALL_S + 30  # the bound from a fault to the end of the whole job


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output[-4000:]


# ------------------------------------------------------------------------------------------------
# A full disk


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_stall_on_a_full_run_folder_still_ends_the_job_with_the_whole_verdict_on_stderr(tmp_path, corpus):
    """Everything the watchdog writes is refused (heartbeats, request, dumps, report): the verdict
    is printed in full, every rank exits 3, and the folder is readable once space is back."""
    cfg_path = watched_config(
        tmp_path, corpus, "full", exp_manager={"create_csv_logger": False, "create_tensorboard_logger": False}
    )
    cfg = load_config(cfg_path, []).config
    blocked = list(build_pipeline(cfg, "train", 1, WORLD).sampler.batch_cuts(5, 0))[0].recording.sources[0].source
    run = cfg.run_dir.resolve()
    with small_tmpfs(run, "4m") as fs:
        job = Job(cfg_path, tmp_path, env={"NESTKIT_DEBUG_BLOCK_PATH": blocked})
        try:
            job.wait_until(lambda: len(jsonl(run / "batches" / "rank0.jsonl")) >= 2, 120, "two trained steps")
            fs.fill()
            ended = job.wait_ended(120)
        finally:
            job.kill()
        output = job.output
        assert job.process.returncode == STALL_EXIT_CODE, output[-4000:]
        _no_traceback(output)
        stalled = heartbeat(run, 1)  # its pulse: the JSON file stopped at the fill
        assert stalled["phase"] == "fetch" and stalled["status"] == "aborted"
        assert ended - stalled["phase_since"] <= WITHIN_S, output[-3000:]
        flat = " ".join(output.split())
        assert "nestkit watchdog: data stall: rank 1, worker" in flat and f"blocked reading {blocked}" in flat
        assert "The report could not be saved under" in flat and "here it is in full" in flat
        assert "verdict: data stall: rank 1" in output  # the report itself, on stderr
        for name in ("heartbeat/rank0.json", "stall/1/report.json", "stall/1/rank1/dump.json"):
            assert f"{run / name}: cannot write (no space left on device (ENOSPC))" in flat, name
        assert output.count(f"{run / 'heartbeat/rank0.json'}: cannot write") == 1  # warned once, not every second

        fs.free()
        trained = [r["step"] for r in jsonl(run / "batches" / "rank1.jsonl")]
        assert trained == list(range(len(trained))) and len(trained) >= 2
        with open(run / "batches" / "rank1.jsonl", "ab") as f:  # and a line torn by a crash, for the readers
            f.write(b'{"step": 99, "epoch": 0, "batch": 9, "cut_ids": ["utt')
        stacks = nestkit("stacks", str(run), "--format", "text", cwd=tmp_path)
        assert stacks.returncode == 0, stacks.stderr
        assert stacks.stdout.splitlines()[-1].startswith("verdict: data stall: rank 1, worker")
        assert blocked in stacks.stdout.splitlines()[-1]
        common = ["--rank", "1", "--format", "json", "--epoch", "0"]
        lookup = nestkit("lookup", cfg_path, "--batch", "1", "--no-load", *common, cwd=tmp_path)
        assert lookup.returncode == 0, lookup.stderr
        assert json.loads(lookup.stdout)["ranks"][0]["logged"]["step"] == 1  # read past the torn line
        skipped = f"{run / 'batches' / 'rank1.jsonl'}: skipped 1 line(s) that are not whole records (line {len(trained) + 1}: torn last line"
        assert skipped in " ".join(lookup.stderr.split())
        replay = nestkit("replay-batch", "1", "--config", cfg_path, *common, cwd=tmp_path)
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["matches_log"] is True


def _with_bad_files(tmp_path: Path, corpus: dict) -> str:
    """The corpus manifest plus eight files that are not audio (quarantined each time they come up)."""
    source = Path(corpus["train"])
    lines = []
    for line in source.read_text().splitlines():  # its paths are relative to its own folder
        entry = json.loads(line)
        entry["audio_filepath"] = str(source.parent / entry["audio_filepath"])
        lines.append(json.dumps(entry))
    for i in range(8):
        bad = tmp_path / f"bad{i}.wav"
        bad.write_bytes(b"this is not audio " * 200)
        lines.append(json.dumps({"audio_filepath": str(bad), "duration": 2.0}))
    manifest = tmp_path / "train_with_bad.json"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_logs_on_a_disk_that_fills_and_frees_lose_nothing_and_duplicate_nothing(tmp_path, corpus):
    """batches/ and quarantine/ are full from the start and free again at step 15: no worker dies
    (its records travel with their batches to the rank, which holds them), and in the end every
    trained step has exactly one batch record and exactly its quarantine records, in order.
    (A disk filling in the middle of a line is the previous test and tests/runfolder.)"""
    steps = 30
    cfg_path = watched_config(
        tmp_path,
        {**corpus, "train": _with_bad_files(tmp_path, corpus)},
        "fillfree",
        trainer={"max_steps": steps},
        nestkit={"watchdog": {"stall_timeout_s": 30}},
    )
    run = load_config(cfg_path, []).config.run_dir.resolve()
    with small_tmpfs(run / "batches", "256k") as batches, small_tmpfs(run / "quarantine", "256k") as quarantine:
        batches.fill()
        quarantine.fill()
        job = Job(cfg_path, tmp_path)
        try:
            job.wait_until(lambda: steps_done(run, WORLD) >= 15, 120, "step 15")
            batches.free()
            quarantine.free()
            job.wait_ended(180)
        finally:
            job.kill()
        output = job.output
        assert job.process.returncode == 0, output[-4000:]
        _no_traceback(output)
        flat = " ".join(output.split())
        assert f"{run / 'batches' / 'rank0.jsonl'}: cannot write (no space left on device (ENOSPC))" in flat
        assert f"{run / 'batches' / 'rank0.jsonl'}: writable again" in flat
        assert "quarantine/rank" in flat and "the record travels with its batch" in flat

        quarantined = jsonl_all(run / "quarantine")
        # written twice = the same record (its time to the millisecond, its load time) twice; one cut
        # can fail twice in a batch legitimately: in its own slot and as another slot's substitute
        copies = Counter(json.dumps(r, sort_keys=True) for r in quarantined)
        assert max(copies.values()) == 1, [k for k, n in copies.items() if n > 1]
        per_batch = Counter((r["rank"], r["split"], r["epoch"], r["batch"]) for r in quarantined)
        for rank in range(WORLD):
            logged = jsonl(run / "batches" / f"rank{rank}.jsonl")
            assert [r["step"] for r in logged] == list(range(steps))  # every step once, in order
            for record in logged:  # every replaced sample of every trained batch recorded
                assert per_batch[(rank, "train", record["epoch"], record["batch"])] == record["failures"], record
        assert sum(r["failures"] for rank in range(WORLD) for r in jsonl(run / "batches" / f"rank{rank}.jsonl")) >= 6


def jsonl_all(folder: Path) -> list[dict]:
    return [record for path in sorted(folder.glob("rank*.jsonl")) for record in jsonl(path)]


# ------------------------------------------------------------------------------------------------
# Processes that stop or die


def _start_and_fault(tmp_path: Path, corpus: dict, name: str, fault, env: dict | None = None, **sections):
    cfg_path = watched_config(tmp_path, corpus, name, **sections)
    run = load_config(cfg_path, []).config.run_dir.resolve()
    job = Job(cfg_path, tmp_path, env=env)
    try:
        job.wait_until(lambda: steps_done(run, WORLD) >= 3, 120, "step 3")
        victim = fault(run)
        faulted_at = time.time()
        ended = job.wait_ended(WITHIN_S + 30)
    finally:
        job.kill()
    return job, run, victim, ended - faulted_at


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_stopped_rank_is_named_frozen_and_taken_down_not_called_dead(tmp_path, corpus):
    def stop_rank1(run):
        pid = heartbeat(run, 1)["pid"]
        os.kill(pid, signal.SIGSTOP)
        return pid

    job, run, pid, took = _start_and_fault(tmp_path, corpus, "frozen", stop_rank1)
    output = job.output
    assert job.process.returncode == STALL_EXIT_CODE, output[-4000:]
    assert took <= WITHIN_S, output[-3000:]
    _no_traceback(output)
    verdict = next(line for line in output.splitlines() if line.startswith("nestkit watchdog: rank 1 frozen"))
    assert f"rank 1 frozen (process {pid} stopped, state T) since step" in verdict
    assert "rank 0 waiting in" in verdict and "running" not in verdict
    report = json.loads((run / "stall" / "1" / "report.json").read_text())
    frozen = report["ranks"][1]
    assert (
        frozen["condition"] == "frozen"
        and frozen["heartbeat_age_s"] >= STALL_S - 2
        and frozen["phase_seconds"] >= STALL_S - 2
    )
    assert f"killed rank 1 (pid {pid}) on this host" in output

    stacks = nestkit("stacks", str(run), "--format", "text", cwd=tmp_path)
    assert stacks.returncode == 0, stacks.stderr
    assert "verdict: rank 1 frozen" in stacks.stdout and "died" not in stacks.stdout
    assert (
        f"afterwards: rank 0's watchdog killed rank 1 (pid {pid}): frozen (process stopped, state T)" in stacks.stdout
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_rank_0_killed_is_named_dead_and_the_cause(tmp_path, corpus):
    def kill_rank0(run):
        pid = heartbeat(run, 0)["pid"]
        os.kill(pid, signal.SIGKILL)
        return pid

    job, run, pid, took = _start_and_fault(tmp_path, corpus, "kill0", kill_rank0)
    assert took <= WITHIN_S, job.output[-3000:]
    flat = " ".join(job.output.split())
    assert (
        "nestkit: died: rank 0 died in" in flat and f"(process {pid} is gone without a word" in flat
    )  # said by rank 1
    report = json.loads(nestkit("stacks", str(run), "--format", "json", cwd=tmp_path).stdout)
    assert report["verdict"]["kind"] == "died" and report["verdict"]["culprits"] == [0], report["verdict"]
    ranks = {r["rank"]: r for r in report["ranks"]}
    assert ranks[0]["condition"] == "dead" and ranks[0]["status"] == "running"  # its own file says running
    assert ranks[1]["status"] in ("failed", "aborted")
    assert "then rank 1" in report["verdict"]["sentence"]  # the peer lost its connection after it


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_dataloader_worker_is_named_with_the_file_it_was_reading(tmp_path, corpus):
    """Every read takes 0.5 s (NESTKIT_DEBUG_SLOW_READ_S), so the worker is killed mid-read, as an
    OOM kill while decoding a huge file would be."""
    killed = {}

    def kill_worker(run):
        from nestkit.runfolder import worker_status

        def reading():
            slot = worker_status.read_slot(run / "heartbeat" / "rank1-worker0.status")
            return slot if slot and slot["state"] == "loading" else None

        deadline = time.monotonic() + 30
        while not (slot := reading()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(slot["pid"], signal.SIGKILL)
        killed.update(slot)
        return slot["pid"]

    job, run, pid, took = _start_and_fault(
        tmp_path, corpus, "killworker", kill_worker, env={"NESTKIT_DEBUG_SLOW_READ_S": "0.5"}
    )
    assert took <= WITHIN_S, job.output[-3000:]
    assert job.process.returncode not in (0, STALL_EXIT_CODE), job.output[-3000:]
    flat = " ".join(job.output.split())
    said = "nestkit: failed: rank 1 failed"  # said by rank 1 itself, before its traceback
    assert said in flat, job.output[-4000:]
    line = flat[flat.index(said) :]
    assert f"DataLoader worker (pid(s) {pid}) exited unexpectedly (killed by signal: Killed)" in line
    assert f"its worker 0 (pid {pid}) was reading {killed['path']} (cut {killed['cut_id']}" in line
    assert "when it was killed (SIGKILL: the kernel's OOM killer sends it" in line
    report = json.loads(nestkit("stacks", str(run), "--format", "json", cwd=tmp_path).stdout)
    assert report["verdict"]["kind"] == "failed" and report["verdict"]["culprits"] == [1]
    assert killed["path"] in report["verdict"]["sentence"]
