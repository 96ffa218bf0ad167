"""`nestkit stacks`: verdicts from heartbeat files, and asking a live, hanging job for its stacks."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nestkit.config import load_config
from nestkit.core.procs import process_start_ticks
from nestkit.data.pipeline import build_pipeline
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.stall_report import build_report
from nestkit.runfolder.heartbeats import FAILED
from nestkit.runfolder.incidents import open_incident
from tests.monitor.test_watchdog_e2e import nestkit, watched_config


def beat(
    run: Path,
    rank: int,
    phase: str,
    step: int,
    idle: float = 0.0,
    timeout: float = 60.0,
    world: int = 2,
    op: str = "all-reduce",
) -> Heartbeat:
    """A real heartbeat file of a rank in `phase` at `step`, without progress for `idle` seconds."""
    hb = Heartbeat(run, rank, world)
    hb.mark_step_start(0, (0, 0), [])
    hb.mark_step_end(step)
    if phase == "collective":
        hb.enter_collective(op)
    else:
        hb.set_phase(phase)
    hb.progress_mono -= idle
    hb.phase_since -= idle
    hb.stall_timeout_s, hb.timeout_rule = timeout, "watchdog.stall_timeout_s"
    hb.write()
    return hb


def verdict(run: Path):
    return build_report(run).verdict


def test_healthy_and_slow_but_progressing(tmp_path):
    beat(tmp_path, 0, "forward", 5, idle=1)
    beat(tmp_path, 1, "collective", 5, idle=1)
    assert verdict(tmp_path).kind == "healthy"
    assert verdict(tmp_path).sentence.startswith("healthy: 2 of 2 ranks progressing at step 5")
    beat(tmp_path, 1, "fetch", 5, idle=40)
    slow = verdict(tmp_path)
    assert (
        slow.kind == "slow"
        and "rank 1 waiting for its DataLoader at step 5 for 40 s (stall limit 60 s)" in slow.sentence
    )


def test_a_rank_stuck_in_compute_while_its_peer_waits(tmp_path):
    beat(tmp_path, 0, "backward", 9, idle=100)
    beat(tmp_path, 1, "collective", 9, idle=95)
    found = verdict(tmp_path)
    assert found.kind == "compute_stall" and found.culprits == [0]
    assert found.sentence.startswith("compute stall: rank 0 stuck in backward at step 9 for 100 s")
    assert found.sentence.endswith("rank 1 waiting in all-reduce at step 9")


def test_every_rank_waiting_for_its_data_is_named_longest_wait_first(tmp_path):
    beat(tmp_path, 0, "fetch", 4, idle=70)
    beat(tmp_path, 1, "fetch", 4, idle=90)
    found = verdict(tmp_path)
    assert found.kind == "data_stall" and found.culprits == [1, 0], found
    assert found.sentence.startswith("data stall: rank 1 waiting 90 s for its next batch from its DataLoader")
    assert "; rank 0 waiting 70 s for its next batch" in found.sentence


def test_every_rank_in_the_same_collective_is_a_collective_stall(tmp_path):
    beat(tmp_path, 0, "collective", 4, idle=100)
    beat(tmp_path, 1, "collective", 4, idle=100)
    open_incident(tmp_path, {"kind": "stall", "rank": 0, "reason": "test", "time": time.time()})
    found = verdict(tmp_path)
    assert found.kind == "collective_stall" and "ranks 0, 1 waiting in all-reduce at step 4" in found.sentence


def test_a_failed_dead_or_silent_rank_is_a_collective_mismatch(tmp_path):
    beat(tmp_path, 0, "collective", 6, idle=100, world=3)
    failed = beat(tmp_path, 1, "forward", 6, world=3)
    failed.stop(FAILED, "RuntimeError: CUDA error: an illegal memory access")
    dead = subprocess.Popen(["sleep", "30"])
    ticks = process_start_ticks(dead.pid)
    dead.kill()
    dead.wait()
    gone = Heartbeat(tmp_path, 2, 3)
    gone.pid, gone.pid_start = dead.pid, ticks
    gone.set_phase("optimizer")
    gone.write()
    found = verdict(tmp_path)
    assert found.kind == "collective_mismatch" and found.culprits == [1, 2], found
    assert "rank 1 failed at step 6 (RuntimeError: CUDA error" in found.sentence
    assert f"rank 2 died in optimizer at step 0 (process {dead.pid} is gone without a word" in found.sentence
    assert found.sentence.endswith("while rank 0 waits in all-reduce at step 6")
    (tmp_path / "heartbeat" / "rank2.json").unlink()
    assert "rank 2 never wrote a heartbeat" in verdict(tmp_path).sentence


def test_when_every_rank_failed_the_first_failure_is_named_as_the_cause(tmp_path):
    cause = beat(tmp_path, 1, "forward", 5)
    cause.stop(
        FAILED, "RuntimeError: Skipping the `training_step` by returning None in distributed training is not supported."
    )
    time.sleep(0.05)
    peer = beat(tmp_path, 0, "collective", 5)
    peer.stop(
        FAILED,
        "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:5257.\n\nAt:\n  default_hooks.py(31): <lambda>",
    )
    found = verdict(tmp_path)
    assert found.kind == "failed" and found.culprits == [1], found
    assert found.sentence.startswith(
        "failed: rank 1 failed first, at step 5 (RuntimeError: Skipping the `training_step`"
    )
    assert found.sentence.endswith(
        "then rank 0 failed at step 5 (RuntimeError: [gloo/transport/tcp/pair.cc:553] "
        "Connection closed by peer [127.0.0.1]:5257.)"
    )  # the first line of its error only


def test_stacks_explains_a_folder_without_heartbeats(tmp_path):
    result = nestkit("stacks", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"run {tmp_path}: no heartbeats" in " ".join(result.stderr.split())
    missing = nestkit("stacks", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr  # a usage error, as a missing config is


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dump_asks_a_live_hanging_job_for_fresh_stacks_and_wait_keeps_it_alive(tmp_path, corpus):
    cfg_path = watched_config(tmp_path, corpus, "live", nestkit={"watchdog": {"action": "wait", "stall_timeout_s": 6}})
    cfg = load_config(cfg_path, []).config
    blocked = list(build_pipeline(cfg, "train", 0, 2).sampler.batch_cuts(4, 0))[1].recording.sources[0].source
    run = cfg.run_dir.resolve()
    log = open(tmp_path / "train.log", "w")
    job = subprocess.Popen(
        [sys.executable, "-m", "nestkit.cli", "train", cfg_path],
        cwd=tmp_path,
        stdout=log,
        stderr=log,
        env={**os.environ, "NESTKIT_DEBUG_BLOCK_PATH": blocked},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / "stall" / "1" / "report.json").exists():
            assert job.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.5)
        assert (run / "stall" / "1" / "report.json").exists(), (tmp_path / "train.log").read_text()[-3000:]
        time.sleep(2)
        assert job.poll() is None, "watchdog.action=wait must keep the job"
        result = nestkit("stacks", str(run), "--dump", "--wait", "20", "--format", "json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        # one incident for the stall (both watchdogs saw it; the first declared it), one for --dump
        assert report["incident"] == 2 and "nestkit stacks --dump" in report["reason"]
        assert all(r["dumped"] for r in report["ranks"])
        assert report["verdict"]["kind"] == "data_stall" and blocked in report["verdict"]["sentence"]
        assert "rank 0, worker" in report["verdict"]["sentence"]
        assert job.poll() is None  # a manual dump never stops the job
        assert "Waiting (watchdog.action=wait)" in (tmp_path / "train.log").read_text()
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher, rank 1 and every DataLoader worker: one session
        job.wait()
        log.close()


class _FullDiskDataset(torch.utils.data.Dataset):
    """Its worker raises what a write to a full disk raises, naming the file."""

    def __init__(self, path: str):
        self.path = path

    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)


def test_a_worker_that_hit_a_full_disk_is_named_with_its_file_and_the_cause(tmp_path):
    """torch wraps a worker's exception as "Caught OSError in DataLoader worker process 0" and puts
    the real line last: the verdict says which worker, which file, and that the disk is full."""
    from nestkit.monitor.stall_watch import _error_text, _kept

    full = str(tmp_path / "quarantine" / "rank1-worker0.jsonl")
    loader = torch.utils.data.DataLoader(_FullDiskDataset(full), num_workers=1, batch_size=None)
    with pytest.raises(OSError) as raised:  # torch re-raises the worker's exception type in the rank
        next(iter(loader))
    beat(tmp_path, 0, "collective", 7, idle=5)
    failing = beat(tmp_path, 1, "fetch", 7)
    failing.stop(FAILED, _kept(_error_text(raised.value)))
    found = verdict(tmp_path)
    assert found.kind == "failed" and found.culprits == [1], found
    assert found.sentence == (
        f"failed: rank 1 failed at step 7 (DataLoader worker 0 raised OSError: [Errno 28] No space left on device: "
        f"'{full}' -- the file system is full)"
    )
