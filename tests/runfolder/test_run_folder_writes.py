"""The run folder's one write path on a real full file system (a small tmpfs), and its readers.

Whole lines or nothing, nothing lost when the disk frees again, one warning by file name, never an
exception; a torn tail is repaired before the next append and reported by readers; memory-mapped
slots reserve their page, so a full disk never kills their writer with SIGBUS.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import orjson
import pytest

from nestkit.monitor.heartbeat import Heartbeat
from nestkit.runfolder import worker_status
from nestkit.runfolder.heartbeats import read_heartbeats
from nestkit.runfolder.incidents import open_incident
from nestkit.runfolder.quarantine import UNWRITTEN, Quarantine, read_quarantine
from nestkit.runfolder.records import JsonlWriter, read_jsonl, report_skipped, write_json_atomic
from tests.fullfs import small_tmpfs

RECORD = {"step": 0, "cut_ids": ["a" * 40] * 8, "loss": 4.5}  # about 400 bytes, like a batch-log line


def test_a_full_disk_costs_no_line_and_loses_no_record(tmp_path):
    said = []
    with small_tmpfs(tmp_path / "batches", "64k") as fs:
        writer = JsonlWriter(fs.path / "rank0.jsonl", notify=said.append)
        assert writer.append({**RECORD, "step": 0})
        fs.fill()
        written = [writer.append({**RECORD, "step": step}) for step in range(1, 40)]
        first_refused = written.index(False)  # the rest of its last 4 KiB page took a few more
        assert not any(written[first_refused:])
        text = (fs.path / "rank0.jsonl").read_bytes()
        assert text.endswith(b"\n"), "a short write left half a line behind"
        on_disk = [r["step"] for r in read_jsonl(fs.path / "rank0.jsonl").records]
        assert on_disk == list(range(len(on_disk))) and len(on_disk) < 40
        assert len(said) == 1 and "rank0.jsonl: cannot write (no space left on device (ENOSPC))" in said[0]

        fs.free()
        assert writer.append({**RECORD, "step": 40})
        writer.close()
        read = read_jsonl(fs.path / "rank0.jsonl")
        assert [r["step"] for r in read.records] == list(range(41)) and read.skipped == []
        assert "writable again" in said[-1]


def test_a_record_given_away_is_not_written_twice_and_a_torn_tail_is_cut_before_the_next_append(tmp_path):
    with small_tmpfs(tmp_path / "fs", "32k") as fs:
        path = fs.path / "rank1-worker0.jsonl"
        writer = JsonlWriter(path, notify=lambda _: None)
        fs.fill()
        assert not writer.append({**RECORD, "step": 1} | {"pad": "x" * 5000}, keep=False)
        assert not writer.pending  # its caller hands it to another process: not kept here
        fs.free()
        assert writer.append({**RECORD, "step": 2})
        writer.close()
        assert [r["step"] for r in read_jsonl(path).records] == [2]

        # an earlier writer died mid-line (kill -9, a full disk under another tool)
        with open(path, "ab") as f:
            f.write(b'{"step": 3, "cut_ids": ["a", "b"')
        read = read_jsonl(path)
        assert [r["step"] for r in read.records] == [2]
        assert [(s.line, s.reason) for s in read.skipped] == [(2, "torn last line (the writer was interrupted)")]
        said = []
        report_skipped(read.skipped, said.append)
        assert said == [
            f"nestkit: run folder file {path}: skipped 1 line(s) that are not whole records "
            "(line 2: torn last line (the writer was interrupted)); the other records were read"
        ]
        resumed = JsonlWriter(path, notify=said.append)  # a later --resume
        assert resumed.append({**RECORD, "step": 4})
        resumed.close()
        read = read_jsonl(path)
        assert [r["step"] for r in read.records] == [2, 4] and read.skipped == []
        assert "removed a torn last line" in said[-1]


def test_whole_files_keep_their_old_version_and_the_incident_markers_still_work_on_a_full_disk(tmp_path):
    with small_tmpfs(tmp_path / "stall", "32k") as fs:
        assert write_json_atomic(fs.path / "old.json", {"verdict": "old"})
        fs.fill()
        assert not write_json_atomic(fs.path / "old.json", {"verdict": "new", "pad": "x" * 8000})
        assert orjson.loads((fs.path / "old.json").read_bytes()) == {"verdict": "old"}
        assert [p.name for p in fs.path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left

        request = {"kind": "stall", "action": "abort", "rank": 1, "reason": "test", "time": time.time()}
        incident, opened = open_incident(tmp_path, request)
        assert opened and not (incident.path / "request.json").exists()  # no room for it
        seen = incident.request_or_markers(wait_s=0)  # what a peer reads: the empty marker file says enough
        assert seen["kind"] == "stall" and seen["action"] == "abort" and seen["unreadable"]
        assert not incident.is_reported()
        assert incident.mark_reported() and incident.is_reported()


def _slot_writer(path: str, fill_dir: str, ready, go) -> None:
    worker_status.install(path, rank=0, worker=0)
    ready.set()
    go.wait(30)
    for i in range(2000):  # every update after the disk filled: must never SIGBUS
        worker_status.loading(f"cut{i}", "/x.wav", "m.json", i)
    os._exit(0)


def test_a_status_slot_keeps_working_on_a_full_disk_and_refuses_cleanly_to_start_on_one(tmp_path):
    with small_tmpfs(tmp_path / "heartbeat", "64k") as fs:
        context = multiprocessing.get_context("fork")
        ready, go = context.Event(), context.Event()
        child = context.Process(
            target=_slot_writer, args=(str(fs.path / "rank0-worker0.status"), str(fs.path), ready, go)
        )
        child.start()
        assert ready.wait(30)
        fs.fill()
        go.set()
        child.join(30)
        assert child.exitcode == 0, f"the slot's writer died (exit {child.exitcode}; -{signal.SIGBUS} is SIGBUS)"
        assert worker_status.read_slot(fs.path / "rank0-worker0.status")["cut_id"] == "cut1999"
        with pytest.raises(OSError):  # reserved up front: refused with ENOSPC, never a SIGBUS later
            worker_status.StatusSlot(fs.path / "rank0-worker1.status", {})


def test_a_heartbeat_on_a_full_disk_stays_current_through_its_pulse(tmp_path):
    with small_tmpfs(tmp_path / "heartbeat", "64k") as fs:
        hb = Heartbeat(tmp_path, 1, 2)
        hb.start(60)  # the test writes by hand
        hb.mark_step_start(3, (0, 3), [])
        hb.write()
        fs.fill()
        hb.mark_step_end(4)
        hb.set_phase("fetch")
        hb.write()
        assert orjson.loads((fs.path / "rank1.json").read_bytes())["phase"] == "forward"  # the file is stale
        beat = read_heartbeats(tmp_path)[1]
        assert beat["phase"] == "fetch" and beat["step"] == 4 and beat["steps_done"] == 1 and beat["from_pulse"]
        assert beat["written_at"] > orjson.loads((fs.path / "rank1.json").read_bytes())["written_at"]


def test_a_worker_that_cannot_write_hands_its_record_to_the_rank_which_writes_it_once(tmp_path):
    """The quarantine's two processes on a full disk: the worker's write fails (marked unwritten,
    not kept, the worker lives on), the rank adopts it from the batch and writes it once space
    is back -- with its own later records, in order, and no duplicate."""
    with small_tmpfs(tmp_path / "quarantine", "32k") as fs:
        worker, rank = Quarantine(tmp_path, 0), Quarantine(tmp_path, 0)
        worker.bind_worker(1)
        big = {"kind": "audio", "category": "decode_error", "reason": "x" * 6000, "epoch": 0}
        assert UNWRITTEN not in worker.write({**big, "batch": 0, "cut_id": "c0"})
        fs.fill()
        batch = [worker.write({**big, "batch": 1, "cut_id": f"c{i}"}) for i in (1, 2)]
        assert all(r[UNWRITTEN] for r in batch)
        rank.adopt(batch)  # on_train_batch_start, in the rank's process: kept in memory
        fs.free()
        rank.adopt([{**worker.write({**big, "batch": 2, "cut_id": "c3"}), UNWRITTEN: False}])  # written by the worker
        rank.close()
        worker.close()
        records = read_quarantine(tmp_path)
        assert sorted(r["cut_id"] for r in records) == ["c0", "c1", "c2", "c3"]
        assert (fs.path / "rank0.jsonl").exists() and (fs.path / "rank0-worker1.jsonl").exists()


def test_every_log_a_run_writes_is_one_a_new_run_moves_aside(tmp_path):
    """A new run never appends to another run's logs: each is listed in layout (checked here for the
    files other modules name), and --fresh moves what is there to previous/<time>/."""
    from nestkit.runfolder.layout import RUN_LOG_FILES, STRAGGLERS_FILE, run_logs
    from nestkit.runfolder.previous import move_aside
    from nestkit.runfolder.segments import SEGMENTS_FILE

    assert SEGMENTS_FILE in RUN_LOG_FILES and STRAGGLERS_FILE in RUN_LOG_FILES
    for name in ("batches", "heartbeat", "quarantine"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rank0.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "stall").mkdir()  # empty: nothing to move
    (tmp_path / SEGMENTS_FILE).write_text('{"start_step": 0}\n')
    (tmp_path / "checkpoints").mkdir()
    logs = run_logs(tmp_path)
    assert logs == ["batches", "quarantine", "heartbeat", SEGMENTS_FILE]
    moved = move_aside(tmp_path, logs, now=0.0)
    assert moved.parent == tmp_path / "previous" and sorted(p.name for p in moved.iterdir()) == sorted(logs)
    assert run_logs(tmp_path) == [] and (moved / "batches" / "rank0.jsonl").read_text() == '{"step": 0}\n'
    assert move_aside(tmp_path, ["batches"], now=0.0).name.endswith("-2")  # two starts within a second
