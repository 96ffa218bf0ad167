"""Node observations: `monitor/node-<host>.json`, the node monitor's view of each rank from outside.

A rank that is stopped (SIGSTOP, a debugger) or whose thread holds the GIL in a C call cannot run
its own heartbeat or watchdog thread; its heartbeat only goes stale. The node monitor
(`nestkit.monitor.node_monitor`, one process per node) watches those processes in /proc and with
py-spy, and rewrites this file about every second:

    {"format", "host", "pid", "parent", "started_at", "written_at", "interval_s", "ended": bool,
     "ranks": {"<rank>": {"pid", "state", "state_since", "stopped_since", "cpu_busy", "alive",
                          "gone_at", "heartbeat_age_s", "stale_since", "py_spy": {"time", "why", "text"}}},
     "workers": {"<pid>": {"rank", "worker", "state", "stopped_since", "alive", "gone_at"}}}

Times are wall-clock seconds. The last file a monitor wrote stays behind as the final picture.
"""

from __future__ import annotations

import os

from nestkit.runfolder.layout import monitor_dir, node_observation_path
from nestkit.runfolder.records import read_json, write_json_atomic

FORMAT = "nestkit-node/1"


def write_observation(run_dir: str | os.PathLike, host: str, record: dict) -> bool:
    return write_json_atomic(node_observation_path(run_dir, host), {**record, "format": FORMAT}, indent=False)


def read_observations(run_dir: str | os.PathLike) -> dict[str, dict]:
    """host -> its monitor's latest observation (unreadable or foreign files are left out)."""
    found: dict[str, dict] = {}
    folder = monitor_dir(run_dir)
    if not folder.is_dir():
        return found
    for path in folder.glob("node-*.json"):
        record = read_json(path)
        if record is not None and record.get("format") == FORMAT and isinstance(record.get("host"), str):
            found[record["host"]] = record
    return found
