"""The node monitor: one small process per node that watches the node's ranks from outside.

A rank stopped by SIGSTOP (or a debugger) or whose training thread holds the GIL in a C call runs
no Python at all: its heartbeat thread and its watchdog thread are as frozen as it is, and its
last heartbeat describes the moment it stopped, not now. Such a rank can only be seen from
another process. Local rank 0 starts this one (`python -m nestkit.monitor.node_monitor`); about
every heartbeat interval it reads the heartbeats of this node's ranks, their processes' state and
CPU time in /proc (`nestkit.core.procs`) and, while a rank is stopped or its heartbeat is stale,
`py-spy dump --nonblocking` (which reads its stacks without the GIL and without pausing it), and
writes what it saw to `monitor/node-<host>.json` (format in `nestkit.runfolder.nodes`). The stall
report and `nestkit stacks` read it: "rank 1 frozen (process stopped, state T) since step 18; its
last stack: ...".

It never outlives the job and never holds it up: it takes no part in training, holds none of the
job's pipes (stdin/stdout/stderr are /dev/null: a launcher waiting for its job's output never waits
for the monitor), and ends as soon as no rank of this node is running -- every heartbeat of the
node finished, failed or aborted, or every rank process and the process that started it gone --
or when that process tells it to (SIGTERM at the end of training).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from nestkit.core.procs import (
    STOPPED_STATES,
    ZOMBIE_STATES,
    cpu_ticks,
    parent_pid,
    process_alive,
    process_start_ticks,
    process_state,
)
from nestkit.monitor.stack_dump import py_spy, py_spy_path
from nestkit.monitor.views import stale_after
from nestkit.runfolder.heartbeats import RUNNING, read_heartbeats
from nestkit.runfolder.nodes import write_observation
from nestkit.runfolder.records import describe_os_error, warn_once

PY_SPY_REFRESH_S = 15.0  # while a rank stays stopped or stale, its py-spy stack is retaken this often
PY_SPY_TIMEOUT_S = 5.0
PY_SPY_TEXT_LIMIT = 20_000  # characters of a py-spy dump kept in the observation
RESCAN_S = 15.0  # how often every rank's heartbeat is looked at to find this node's ranks
STOP_WAIT_S = 2.0  # how long `stop` waits for the monitor to write its last observation
STARTED_SLACK_S = 5.0  # heartbeats started this long before the monitor are the job's own


# ------------------------------------------------------------------------------------------------
# Started from training


def launch(run_dir: str | os.PathLike, interval_s: float, use_py_spy: bool = True) -> subprocess.Popen | None:
    """Start the node's monitor (from local rank 0); None, warned, when it cannot be started."""
    command = [
        sys.executable,
        "-m",
        "nestkit.monitor.node_monitor",
        str(run_dir),
        "--parent",
        str(os.getpid()),
        "--interval",
        str(interval_s),
        "--started-after",
        str(time.time() - STARTED_SLACK_S),
    ]
    if not use_py_spy:
        command.append("--no-py-spy")
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as exc:
        warn_once(
            run_dir, f"cannot start the node monitor ({describe_os_error(exc)}); stalls are still watched per rank"
        )
        return None


def stop(process: subprocess.Popen) -> None:
    """Ask the monitor to write its last observation and end; kill it if it does not."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------------------------------------
# The monitor process


class NodeMonitor:
    """What this node's rank processes look like from outside, updated by `observe()`."""

    def __init__(self, run_dir: Path, parent: int | None, interval_s: float, started_after: float, use_py_spy: bool):
        self.run_dir = Path(run_dir)
        self.host = socket.gethostname()
        self.parent = parent
        self.parent_start = process_start_ticks(parent) if parent is not None else None
        self.interval_s = interval_s
        self.started_after = started_after
        self.use_py_spy = use_py_spy and py_spy_path() is not None
        self.started_at = time.time()
        self.ranks: dict[int, dict] = {}  # rank -> its observation (see nestkit.runfolder.nodes)
        self.workers: dict[int, dict] = {}  # pid -> observation
        self.errors: list[str] = []
        self.beats: dict[int, dict] = {}
        self.local_ranks: set[int] = set()  # this node's ranks, from the last full listing
        self._scanned_at = 0.0

    def observe(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        # every rank's files are listed only now and then: a node reads its own ranks' files
        # each second, not the whole job's (thousands of ranks on a shared file system)
        rescan = not self.local_ranks or now - self._scanned_at >= RESCAN_S
        self.beats = {
            r: b
            for r, b in read_heartbeats(self.run_dir, None if rescan else self.local_ranks).items()
            if b.get("host") == self.host and b.get("started_at", 0) >= self.started_after
        }
        if rescan:
            self.local_ranks, self._scanned_at = set(self.beats), now
        for rank, beat in self.beats.items():
            self._observe_rank(rank, beat, now)
            for worker in beat.get("workers") or []:
                self._observe_worker(rank, worker, beat["pid"], now)
        return self.record(now)

    def _observe_rank(self, rank: int, beat: dict, now: float) -> None:
        pid = beat["pid"]
        seen = self.ranks.get(rank)
        if seen is None or seen["pid"] != pid:
            seen = self.ranks[rank] = {
                "pid": pid,
                "state": None,
                "state_since": now,
                "stopped_since": None,
                "cpu_ticks": None,
                "cpu_busy": None,
                "alive": True,
                "gone_at": None,
                "heartbeat_age_s": None,
                "stale_since": None,
                "py_spy": None,
            }
        if not seen["alive"]:
            return
        alive = process_alive(pid, beat.get("pid_start"))
        state = process_state(pid) if alive else None
        if not alive or state in ZOMBIE_STATES:
            seen.update(alive=False, gone_at=now, state=state, cpu_busy=False)
            return
        if state != seen["state"]:
            seen["state"], seen["state_since"] = state, now
        seen["stopped_since"] = (seen["stopped_since"] or now) if state in STOPPED_STATES else None
        ticks = cpu_ticks(pid)
        seen["cpu_busy"] = None if seen["cpu_ticks"] is None or ticks is None else ticks > seen["cpu_ticks"]
        seen["cpu_ticks"] = ticks
        age = now - beat.get("written_at", now)
        seen["heartbeat_age_s"] = round(age, 1)
        stale = beat.get("status") == RUNNING and age > stale_after(beat.get("interval_s", self.interval_s))
        seen["stale_since"] = (seen["stale_since"] or now) if stale else None
        if seen["stopped_since"] or seen["stale_since"]:
            self._spy(seen, "stopped" if seen["stopped_since"] else "stale", now)
        else:
            seen["py_spy"] = None  # it runs Python again: an old stack would mislead

    def _spy(self, seen: dict, why: str, now: float) -> None:
        last = seen["py_spy"]
        if not self.use_py_spy or (last is not None and now - last["time"] < PY_SPY_REFRESH_S):
            return
        text = py_spy(seen["pid"], PY_SPY_TIMEOUT_S)
        if text is not None:
            seen["py_spy"] = {"time": now, "why": why, "text": text[:PY_SPY_TEXT_LIMIT]}

    def _observe_worker(self, rank: int, worker: dict, rank_pid: int, now: float) -> None:
        pid = worker.get("pid")
        if not isinstance(pid, int):
            return
        seen = self.workers.setdefault(
            pid,
            {
                "rank": rank,
                "worker": worker.get("worker"),
                "state": None,
                "stopped_since": None,
                "alive": True,
                "gone_at": None,
            },
        )
        if not seen["alive"]:
            return
        state = process_state(pid)
        if state is None or state in ZOMBIE_STATES or parent_pid(pid) != rank_pid:
            seen.update(alive=False, gone_at=now, state=state)
            return
        seen["state"] = state
        seen["stopped_since"] = (seen["stopped_since"] or now) if state in STOPPED_STATES else None

    def record(self, now: float, ended: bool = False) -> dict:
        return {
            "host": self.host,
            "pid": os.getpid(),
            "parent": self.parent,
            "started_at": self.started_at,
            "written_at": now,
            "interval_s": self.interval_s,
            "py_spy": self.use_py_spy,
            "ended": ended,
            "ranks": {str(r): v for r, v in sorted(self.ranks.items())},
            "workers": {str(p): v for p, v in sorted(self.workers.items())},
            "errors": self.errors[-10:],
        }

    def job_over(self) -> bool:
        """No rank of this node is running: each heartbeat ended or its process is gone (killed
        ranks never write "ended"), or -- before any heartbeat -- the process that started the
        monitor is gone."""
        if self.beats:
            return all(
                b.get("status") != RUNNING or not self.ranks.get(r, {}).get("alive", True)
                for r, b in self.beats.items()
            )
        return self.parent is None or not _same_process(self.parent, self.parent_start)


def _same_process(pid: int, start: int | None) -> bool:
    """`pid` still names the process that started at `start` and has not exited (a zombie has)."""
    return start is not None and process_start_ticks(pid) == start and process_state(pid) not in ZOMBIE_STATES


def run(monitor: NodeMonitor, stop_event: threading.Event) -> None:
    while True:
        now = time.time()
        try:
            record = monitor.observe(now)
        except Exception as exc:  # a bug here must not end the watch: recorded in the observation
            monitor.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            record = monitor.record(now)
        over = monitor.job_over() or stop_event.is_set()
        if over:
            record = monitor.record(now, ended=True)
        write_observation(monitor.run_dir, monitor.host, record)
        if over:
            return
        stop_event.wait(monitor.interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nestkit.monitor.node_monitor", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--parent", type=int, default=None, help="the process that started it (local rank 0)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between observations")
    parser.add_argument("--started-after", type=float, default=0.0, help="ignore heartbeats of runs started before")
    parser.add_argument("--no-py-spy", dest="py_spy", action="store_false")
    args = parser.parse_args(argv)
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: stop_event.set())
    monitor = NodeMonitor(args.run_dir, args.parent, args.interval, args.started_after, args.py_spy)
    run(monitor, stop_event)
    return 0


if __name__ == "__main__":
    sys.exit(main())
