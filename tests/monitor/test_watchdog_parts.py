"""The watchdog's parts on their own: worker status slots across processes, heartbeat files,
timeout rules, the PlanStream's bookkeeping, the debug hooks, an in-process stall, the config."""

from __future__ import annotations

import multiprocessing
import os
import time

import orjson
import pytest

from nestkit.config import WatchdogConfig, config_from_dict
from nestkit.core import faults
from nestkit.core.errors import ConfigError, NestkitError
from nestkit.data.manifest import CutIndex
from nestkit.data.pipeline import build_pipeline
from nestkit.data.sampler import TrainingStream
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.watchdog import Watchdog, stall_timeout
from nestkit.runfolder import worker_status
from nestkit.runfolder.heartbeats import FINISHED, heartbeat_path, read_heartbeats
from nestkit.runfolder.incidents import latest_incident
from tests.helpers import data_config


def _load_blocked(slot: str, manifest: str, row: int) -> None:
    """A worker-like child: reports into its slot, then reads a file whose read never returns."""
    from nestkit.data.loading import load_cut

    faults.BLOCK_PATH = ".wav"  # every audio file blocks, as on a stalled mount
    worker_status.install(slot, rank=1, worker=0)
    cut = CutIndex.build([manifest], 16000).cut(row)
    worker_status.begin_batch(0, 7)
    load_cut(cut, 16000, None)


@pytest.mark.timeout(60)
def test_a_blocked_read_is_named_by_the_worker_status_slot_from_another_process(tmp_path, corpus):
    slot = tmp_path / "rank1-worker0.status"
    child = multiprocessing.get_context("fork").Process(target=_load_blocked, args=(str(slot), corpus["train"], 4))
    child.start()
    try:
        deadline = time.monotonic() + 20
        record = None
        while time.monotonic() < deadline and child.is_alive():
            record = worker_status.read_slot(slot)
            if record and record["state"] == "loading":
                break
            time.sleep(0.05)
        assert record is not None and record["state"] == "loading", record
        cut = CutIndex.build([corpus["train"]], 16000).cut(4)
        assert record["cut_id"] == cut.id and record["path"] == cut.recording.sources[0].source
        assert record["manifest"] == corpus["train"] and record["line"] == cut.custom["line"]
        assert record["batch"] == {"epoch": 0, "batch": 7} and record["pid"] == child.pid
        time.sleep(0.5)
        assert child.is_alive() and worker_status.read_slot(slot)["state"] == "loading"  # still blocked, still named
    finally:
        child.kill()
        child.join()
    assert worker_status.read_slot(slot)["cut_id"] == cut.id  # readable after the process is gone


def _hammer(path: str) -> None:
    """A writer process far busier than any DataLoader worker: a status update around a "read" of
    20 microseconds, over and over (a real read takes milliseconds)."""
    worker_status.install(path, rank=0, worker=0)
    i = 0
    while True:
        worker_status.loading(f"cut{i}", "/x/" + "a" * (i % 300), "m.json", i)
        until = time.perf_counter() + 20e-6
        while time.perf_counter() < until:
            pass
        worker_status.loaded()
        i += 1


@pytest.mark.timeout(60)
def test_slot_reads_are_never_torn_while_another_process_hammers_it(tmp_path):
    path = tmp_path / "rank0-worker0.status"
    writer = multiprocessing.get_context("fork").Process(target=_hammer, args=(str(path),))
    writer.start()
    try:
        while worker_status.read_slot(path) is None:
            time.sleep(0.01)
        lines = set()
        reads = 0
        deadline = time.monotonic() + 30  # a busy machine gives the writer little time: read on until it wrote
        while reads < 2000 or (len(lines) <= 20 and time.monotonic() < deadline):
            reads += 1
            record = worker_status.read_slot(path)
            assert record is not None, "no consistent record within the reader's retries"
            if record["state"] == "loading":  # else "idle" between reads: no cut named
                assert record["cut_id"] == f"cut{record['line']}" and len(record["path"]) == 3 + record["line"] % 300
                lines.add(record["line"])
        assert len(lines) > 20  # the writer really was writing all along
    finally:
        writer.kill()
        writer.join()


def test_heartbeat_files_are_replaced_atomically(tmp_path):
    hb = Heartbeat(tmp_path, 3, 4)
    hb.start(0.01)
    try:
        for i in range(300):
            hb.set_phase("forward" if i % 2 else "backward")
            record = orjson.loads(heartbeat_path(tmp_path, 3).read_bytes())  # never half a file
            assert record["rank"] == 3 and record["status"] == "running"
    finally:
        hb.stop(FINISHED)
    assert read_heartbeats(tmp_path)[3]["status"] == "finished"
    assert read_heartbeats(tmp_path)[3]["phase"] == "finished"


def test_stall_timeout_follows_the_phase_and_the_observed_step_times(tmp_path):
    cfg = WatchdogConfig(min_stall_timeout_s=120, stall_factor=20, first_step_timeout_s=900, slow_phase_timeout_s=1800)
    hb = Heartbeat(tmp_path, 0, 1)
    assert stall_timeout(cfg, hb)[0] == 900  # start-up
    hb.mark_step_start(0, (0, 0), [])
    hb._step_started -= 50.0  # the first step took 50 s (compilation): kept out of the statistic
    hb.mark_step_end(1)
    for _ in range(99):
        hb.mark_step_start(1, (0, 1), [])
        hb._step_started -= 2.0
        hb.mark_step_end(2)
    hb.mark_step_start(2, (0, 2), [])
    hb._step_started -= 30.0  # one slow step in a hundred: the 95th percentile ignores it
    hb.mark_step_end(3)
    seconds, rule = stall_timeout(cfg, hb)
    assert seconds == 120 and "derived" in rule  # 20 x 2 s is below the 120 s floor
    cfg.min_stall_timeout_s = 10
    assert stall_timeout(cfg, hb)[0] == pytest.approx(40, rel=0.01)
    hb.set_phase("validation")
    assert stall_timeout(cfg, hb) == (1800, "watchdog.slow_phase_timeout_s (validation)")
    hb.set_phase("forward")
    cfg.stall_timeout_s = 8
    assert stall_timeout(cfg, hb) == (8, "watchdog.stall_timeout_s")
    hb.set_phase("finished")
    assert stall_timeout(cfg, hb)[0] is None


def test_training_stream_records_what_it_handed_out_and_where_it_ended(corpus, monkeypatch):
    cfg = data_config(corpus["train"], batch_size=2)
    planner = build_pipeline(cfg, "train", 1, 2).planner
    monkeypatch.setenv(faults.STOP_RANK_ENV, "1:3")
    stream = TrainingStream(planner, rank=1, world_size=2)
    batches = list(stream)
    assert len(batches) == 3
    assert [(e, b) for e, b, _ in stream.handed_out_snapshot()] == [(0, 0), (0, 1), (0, 2)]
    # rank 1 of 2 takes micro-batches 1, 3, 5 of the epoch's sequence
    assert [c[0].custom["plan"]["index"] for _, _, c in stream.handed_out_snapshot()] == [1, 3, 5]
    assert stream.handed_out[1][2][0].id == batches[1][0].id
    assert stream.data_end["after"] == {"epoch": 0, "batch": 2} and stream.data_end["reason"] == "debug"
    assert list(stream) == []  # the hook ends this rank's data for good
    assert TrainingStream(planner, rank=0, world_size=2).stop_after is None  # other ranks run on


@pytest.mark.parametrize("value", ["1", "a:b", "1:2:3", "1:-4"])
def test_a_malformed_stop_rank_hook_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(faults.STOP_RANK_ENV, value)
    with pytest.raises(NestkitError, match=f"environment {faults.STOP_RANK_ENV}"):
        faults.stop_after(0)


@pytest.mark.timeout(60)
def test_a_rank_stuck_in_compute_is_caught_dumped_and_reported_in_process(tmp_path):
    """A real watchdog thread over a rank whose training thread is stuck in a forward (action=wait)."""
    hb = Heartbeat(tmp_path, 0, 1)
    hb.start(0.05)
    cfg = WatchdogConfig(stall_timeout_s=0.5, poll_interval_s=0.05, dump_grace_s=1, action="wait")
    watchdog = Watchdog(hb, cfg, notify=lambda text: None)
    hb.mark_step_start(0, (0, 0), [])
    hb.mark_step_end(1)
    hb.mark_step_start(1, (0, 1), [])
    watchdog.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ((tmp_path / "stall" / "1" / "report.json").exists()):
            time.sleep(0.1)  # this thread is the "stuck forward"
    finally:
        watchdog.stop()
        hb.stop(FINISHED)
    incident = latest_incident(tmp_path)
    assert incident is not None and incident.has_report()
    report = orjson.loads((incident.path / "report.json").read_bytes())
    assert report["verdict"]["kind"] == "compute_stall", report["verdict"]
    assert "rank 0 stuck in forward at step 1" in report["verdict"]["sentence"]
    assert "test_watchdog_parts.py" in report["verdict"]["sentence"]  # the frame this thread was in
    threads = (incident.rank_dir(0) / "threads.txt").read_text()
    assert "MainThread" in threads and "time.sleep(0.1)" in threads
    assert len(os.listdir(tmp_path / "stall")) == 1  # one incident per stall, not one per poll


def test_watchdog_settings_are_validated_together():
    with pytest.raises(ConfigError) as err:
        config_from_dict(
            {
                "nestkit": {
                    "dataloader_timeout_s": -1,
                    "watchdog": {"stall_timeout_s": 0, "poll_interval_s": 0, "dump_grace_s": -2},
                }
            }
        )
    text = str(err.value)
    for problem in (
        "nestkit.watchdog.stall_timeout_s: must be positive seconds or null (got 0",
        "nestkit.watchdog.poll_interval_s: must be positive (got 0",
        "nestkit.watchdog.dump_grace_s: must not be negative seconds (got -2",
        "nestkit.dataloader_timeout_s: must be >= 0 seconds, 0 = unbounded (got -1",
    ):
        assert problem in text, text
    with pytest.raises(
        ConfigError, match=r"nestkit.watchdog.action: wrong type \(expected 'abort' \| 'wait', got 'explode'\)"
    ):
        config_from_dict({"nestkit": {"watchdog": {"action": "explode"}}})
