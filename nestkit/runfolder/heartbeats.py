"""Heartbeat files: `heartbeat/rank<R>.json`, one per rank, rewritten about every second.

The format is owned here; `nestkit.monitor.heartbeat.Heartbeat` fills it in a training process and
the watchdog, the node monitor, `nestkit stacks` and the report read it.
"""

from __future__ import annotations

import os

from nestkit.runfolder.layout import heartbeat_dir, heartbeat_path, rank_of_file
from nestkit.runfolder.records import read_json, write_json_atomic

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

__all__ = [
    "ABORTED",
    "FAILED",
    "FINISHED",
    "FORMAT",
    "PHASES",
    "RUNNING",
    "heartbeat_dir",
    "heartbeat_path",
    "read_heartbeats",
    "write_heartbeat",
]


def read_heartbeats(run_dir: str | os.PathLike) -> dict[int, dict]:
    """rank -> its latest heartbeat record (ranks whose file is missing or unreadable are left out)."""
    beats = {}
    for path in heartbeat_dir(run_dir).glob("rank*.json"):
        rank = rank_of_file(path)
        if rank is None or "-" in path.stem:
            continue
        record = read_json(path)
        if record is not None and record.get("format") == FORMAT:
            beats[rank] = record
    return dict(sorted(beats.items()))


def write_heartbeat(run_dir: str | os.PathLike, rank: int, record: dict) -> bool:
    """Replace rank's heartbeat (atomically); False when the file system refuses the write."""
    return write_json_atomic(heartbeat_path(run_dir, rank), record)
