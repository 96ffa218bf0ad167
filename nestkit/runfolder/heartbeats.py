"""Heartbeat files: `heartbeat/rank<R>.json`, one per rank, rewritten about every second, and its
pulse `heartbeat/rank<R>.pulse`.

The format is owned here; `nestkit.monitor.heartbeat.Heartbeat` fills it in a training process and
the watchdog, the node monitor, `nestkit stacks` and the report read it.

The JSON file is the whole record (batches in flight with their cuts). The pulse holds its
essentials (status, phase, step, position, progress) in a memory-mapped slot whose page is
reserved when training starts (see `worker_status`): it keeps being updated when the disk is full
and the JSON file cannot be replaced any more. The phase mark `heartbeat/rank<R>.phase` holds
only the step, phase and progress time, and the training thread rewrites it at every phase change
(a seqlock over a reserved page: about a microsecond), so a rank that freezes is known to have
frozen in exactly that step and phase. `read_heartbeats` returns the JSON record brought up to
date by a newer pulse and the phase mark, so a full disk never makes a live rank look stale, and a
stale heartbeat always means a rank that stopped running Python.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable

from nestkit.runfolder.layout import heartbeat_dir, heartbeat_path, phase_mark_path, pulse_path, rank_of_file
from nestkit.runfolder.records import read_json, write_json_atomic
from nestkit.runfolder.worker_status import StatusSlot, read_slot

FORMAT = "nestkit-heartbeat/1"
PHASES = (
    "startup",
    "fetch",
    "forward",
    "backward",
    "collective",
    "optimizer",
    "step_end",
    "validation",
    "checkpoint",
    "finished",
)
RUNNING, FINISHED, FAILED, ABORTED = "running", "finished", "failed", "aborted"
PHASE_INDEX = {phase: i for i, phase in enumerate(PHASES)}

# what the pulse carries: small, fixed-size fields only (a slot buffer holds about 2 KB)
PULSE_FIELDS = (
    "format",
    "rank",
    "world_size",
    "local_rank",
    "host",
    "pid",
    "pid_start",
    "started_at",
    "written_at",
    "interval_s",
    "status",
    "step",
    "steps_done",
    "phase",
    "phase_since",
    "progress_age_s",
    "stall_timeout_s",
    "position",
    "received",
    "data_end",
)
PULSE_TEXT_LIMIT = 200  # characters of `error` and `timeout_rule` kept in the pulse
PULSE_WORKERS = 16  # worker pids kept in the pulse

__all__ = [
    "ABORTED",
    "FAILED",
    "FINISHED",
    "FORMAT",
    "PHASES",
    "RUNNING",
    "heartbeat_dir",
    "heartbeat_path",
    "open_pulse",
    "pulse_record",
    "read_heartbeat",
    "read_heartbeats",
    "write_heartbeat",
]


def read_heartbeats(run_dir: str | os.PathLike, ranks: Iterable[int] | None = None) -> dict[int, dict]:
    """rank -> its latest heartbeat record, for `ranks` (default: every rank with a heartbeat file
    or pulse); ranks whose files are missing or unreadable are left out."""
    if ranks is None:
        ranks = heartbeat_ranks(run_dir)
    beats = {rank: read_heartbeat(run_dir, rank) for rank in sorted(set(ranks))}
    return {rank: beat for rank, beat in beats.items() if beat is not None}


def heartbeat_ranks(run_dir: str | os.PathLike) -> set[int]:
    """Ranks that wrote a heartbeat file or a pulse (one listing of heartbeat/)."""
    ranks = set()
    for path in heartbeat_dir(run_dir).glob("rank*"):
        if path.suffix in (".json", ".pulse") and "-" not in path.stem:
            rank = rank_of_file(path)
            if rank is not None:
                ranks.add(rank)
    return ranks


def read_heartbeat(run_dir: str | os.PathLike, rank: int) -> dict | None:
    """The rank's JSON heartbeat, brought up to date by a newer pulse (the disk filled up: such a
    record has `"from_pulse": true` and only the batches in flight the pulse confirms) and, while
    it runs, by its phase mark."""
    record = read_json(heartbeat_path(run_dir, rank))
    beat = record if record is not None and record.get("format") == FORMAT else None
    pulse = read_slot(pulse_path(run_dir, rank))
    if pulse is not None and pulse.get("format") == FORMAT:
        beat = merge_pulse(beat, pulse)
    if beat is None:
        return None
    mark = read_phase_mark(phase_mark_path(run_dir, rank))
    if mark is not None and mark["pid"] == beat.get("pid") and beat.get("status") == RUNNING:
        beat = merge_phase_mark(beat, mark)
    return beat


def merge_phase_mark(beat: dict, mark: dict) -> dict:
    """The record with the step and phase the training thread last entered (newer than any file)."""
    position = mark["position"]
    merged = {
        **beat,
        "step": mark["step"],
        "position": {"epoch": position[0], "batch": position[1]} if position else beat.get("position"),
        "phase": mark["phase"],
        "phase_since": mark["phase_since"],
    }
    if mark["phase"] == "collective":
        merged["collective"] = {**(beat.get("collective") or {}), "op": mark["op"]}
    # progress_age_s is "as of written_at": the views add the time since
    merged["progress_age_s"] = round(beat.get("written_at", mark["progress"]) - mark["progress"], 3)
    if mark["phase"] not in ("fetch", "startup"):
        merged["waiting_for"] = None
    return merged


def merge_pulse(record: dict | None, pulse: dict) -> dict:
    """The JSON record, brought up to date by a newer pulse (or the pulse alone)."""
    if record is not None and record.get("written_at", 0) >= pulse.get("written_at", 0):
        return record
    if record is not None and record.get("pid") != pulse.get("pid"):
        record = None  # an earlier process's file: nothing in it describes this one
    merged = {**(record or {}), **pulse, "from_pulse": True}
    merged.setdefault("workers", [])
    waiting = pulse.get("waiting")
    old_waiting = (record or {}).get("waiting_for")
    if waiting is None:
        merged["waiting_for"] = None
    elif old_waiting and (old_waiting["epoch"], old_waiting["batch"]) == (waiting["epoch"], waiting["batch"]):
        merged["waiting_for"] = old_waiting  # the same batch: its cuts are still right
    else:
        merged["waiting_for"] = {**waiting, "state": "loading", "cuts": []}
    # batches in flight that the JSON file listed and the pulse has not trained yet
    position = pulse.get("position")
    trained = (position["epoch"], position["batch"]) if position else None
    merged["in_flight"] = [
        b for b in (record or {}).get("in_flight") or [] if trained is None or (b["epoch"], b["batch"]) > trained
    ]
    return merged


def write_heartbeat(run_dir: str | os.PathLike, rank: int, record: dict) -> bool:
    """Replace rank's heartbeat (atomically); False when the file system refuses the write."""
    return write_json_atomic(heartbeat_path(run_dir, rank), record)


def open_pulse(run_dir: str | os.PathLike, rank: int) -> StatusSlot:
    """The rank's pulse slot, its page reserved now (OSError when it cannot be: a full disk)."""
    return StatusSlot(pulse_path(run_dir, rank), {})


def pulse_record(heartbeat: dict) -> dict:
    """The pulse's share of a heartbeat record: bounded, so that it always fits its slot."""
    pulse = {key: heartbeat.get(key) for key in PULSE_FIELDS}
    for key in ("error", "timeout_rule"):
        text = heartbeat.get(key)
        pulse[key] = text[:PULSE_TEXT_LIMIT] if isinstance(text, str) else text
    waiting = heartbeat.get("waiting_for")
    pulse["waiting"] = {"epoch": waiting["epoch"], "batch": waiting["batch"]} if waiting else None
    pulse["workers"] = (heartbeat.get("workers") or [])[:PULSE_WORKERS]
    data_end = heartbeat.get("data_end")
    if isinstance(data_end, dict) and isinstance(data_end.get("detail"), str):
        pulse["data_end"] = {**data_end, "detail": data_end["detail"][:PULSE_TEXT_LIMIT]}
    return pulse


# ------------------------------------------------------------------------------------------------
# The phase mark: a seqlock over one reserved page

_MARK_SEQ = struct.Struct("<Q")
# step, epoch and batch in training (-1: none), phase index, pid, phase_since and last progress
# (wall times), the collective it waits in (utf-8, padded)
_MARK_FIELDS = struct.Struct("<qiiIIdd24s")
_MARK_SIZE = _MARK_SEQ.size + _MARK_FIELDS.size
MARK_PAGE = 4096


class PhaseMark:
    """The writer: the training thread (and DDP's comm hook thread), at every phase change."""

    def __init__(self, path, pid: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, MARK_PAGE)  # reserved: a full disk can never SIGBUS a store
            self._map = mmap.mmap(fd, MARK_PAGE)
        finally:
            os.close(fd)
        self._pid = pid
        self._seq = 0
        self._lock = threading.Lock()  # two writer threads: the training thread and DDP's hook

    def write(
        self, step: int, position: tuple[int, int] | None, phase: str, since: float, progress: float, op: str | None
    ) -> None:
        epoch, batch = position if position is not None else (-1, -1)
        fields = (step, epoch, batch, PHASE_INDEX.get(phase, 0), self._pid, since, progress, (op or "").encode()[:24])
        with self._lock:
            self._seq += 1  # odd: being written
            _MARK_SEQ.pack_into(self._map, 0, self._seq)
            _MARK_FIELDS.pack_into(self._map, _MARK_SEQ.size, *fields)
            self._seq += 1
            _MARK_SEQ.pack_into(self._map, 0, self._seq)


def open_phase_mark(run_dir: str | os.PathLike, rank: int) -> PhaseMark:
    """The rank's phase mark, its page reserved now (OSError when it cannot be: a full disk)."""
    return PhaseMark(phase_mark_path(run_dir, rank), os.getpid())


def read_phase_mark(path, tries: int = 100) -> dict | None:
    """{step, phase, pid, phase_since, progress} as last written, or None (absent, never written)."""
    try:
        with open(path, "rb") as f:
            for _ in range(tries):
                f.seek(0)
                page = f.read(_MARK_SIZE)
                f.seek(0)
                again = f.read(_MARK_SEQ.size)
                if len(page) < _MARK_SIZE:
                    return None
                (seq,) = _MARK_SEQ.unpack_from(page)
                if seq == 0:
                    return None
                if seq % 2 == 0 and again == page[: _MARK_SEQ.size]:  # not being written, not rewritten since
                    step, epoch, batch, index, pid, since, progress, op = _MARK_FIELDS.unpack_from(page, _MARK_SEQ.size)
                    return {
                        "step": step,
                        "position": (epoch, batch) if epoch >= 0 else None,
                        "phase": PHASES[index] if index < len(PHASES) else "startup",
                        "pid": pid,
                        "phase_since": since,
                        "progress": progress,
                        "op": op.rstrip(b"\0").decode(errors="replace") or None,
                    }
                time.sleep(0.0001)
    except OSError:
        return None
    return None
