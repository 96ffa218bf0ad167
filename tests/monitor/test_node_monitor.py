"""The node monitor: ranks seen from outside their process.

Real processes: a "rank" whose heartbeat thread runs, then is stopped with SIGSTOP, or holds the
GIL in a C call (a catastrophic regex: `re` never releases the GIL). Its own threads can report
nothing; the monitor (/proc + py-spy --nonblocking) and the report must say what it is, never
show its stale heartbeat as current; and the monitor must end with the job it watches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from nestkit.monitor import node_monitor
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.stack_dump import py_spy_path
from nestkit.monitor.stall_report import build_report, render_text
from nestkit.runfolder.heartbeats import FINISHED, read_heartbeats
from nestkit.runfolder.layout import node_observation_path
from nestkit.runfolder.nodes import write_observation

ROOT = Path(__file__).resolve().parents[2]

# a rank process: heartbeat every 0.2 s, 3 steps done, then `WHAT` (sleep forever, or hold the GIL)
RANK = """
import re, sys, time
from nestkit.monitor.heartbeat import Heartbeat
hb = Heartbeat(sys.argv[1], 1, 2)
hb.stall_timeout_s, hb.timeout_rule = 2.0, "watchdog.stall_timeout_s"
hb.start(0.2)
for step in range(3):
    hb.mark_step_start(step, (0, step), [])
    hb.mark_step_end(step + 1)
hb.mark_step_start(3, (0, 3), [])
print("ready", flush=True)
time.sleep(1.0)
if sys.argv[2] == "gil":
    re.match(r"(a+)+$", "a" * 64 + "b")  # never returns, never releases the GIL
time.sleep(3600)
"""


def start_rank(run: Path, what: str) -> subprocess.Popen:
    rank = subprocess.Popen(
        [sys.executable, "-c", RANK, str(run), what],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert rank.stdout.readline().strip() == "ready"
    return rank


def waiting_peer(run: Path) -> Heartbeat:
    """Rank 0, this test process: waiting in the step-3 all-reduce for rank 1, heartbeat fresh."""
    hb = Heartbeat(run, 0, 2)
    hb.stall_timeout_s, hb.timeout_rule = 2.0, "watchdog.stall_timeout_s"
    hb.mark_step_start(0, (0, 0), [])
    hb.mark_step_end(3)
    hb.enter_collective("all-reduce")
    hb.start(0.2)
    return hb


def observe_until(monitor: node_monitor.NodeMonitor, run: Path, done, seconds: float = 20.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        record = monitor.observe()
        write_observation(run, monitor.host, record)
        if done(record) or time.monotonic() > deadline:
            return record
        time.sleep(0.3)


@pytest.mark.timeout(60)
def test_a_stopped_rank_is_frozen_with_its_last_stack_never_running_on_a_stale_heartbeat(tmp_path):
    peer = waiting_peer(tmp_path)
    rank = start_rank(tmp_path, "sleep")
    try:
        time.sleep(1.5)  # its heartbeat has said "step 3, forward"; it sleeps in the last line
        os.kill(rank.pid, signal.SIGSTOP)
        stopped_at = time.time()
        monitor = node_monitor.NodeMonitor(tmp_path, os.getpid(), 0.2, 0.0, use_py_spy=True)
        seen = observe_until(monitor, tmp_path, lambda r: (r["ranks"].get("1") or {}).get("stopped_since"))
        assert seen["ranks"]["1"]["state"] == "T" and seen["ranks"]["1"]["pid"] == rank.pid
        time.sleep(3)  # its heartbeat goes stale; the report must not present it as current
        report = build_report(tmp_path)
        view = report.ranks[1]
        assert view.condition == "frozen" and view.process_state == "T"
        assert view.heartbeat_age_s >= 3 and view.phase_seconds >= time.time() - stopped_at - 1
        verdict = report.verdict
        assert verdict.kind == "frozen" and verdict.culprits == [1], verdict
        assert verdict.sentence.startswith(
            f"rank 1 frozen (process {rank.pid} stopped, state T) since step 3, in forward"
        )
        assert verdict.sentence.endswith("rank 0 waiting in all-reduce at step 3")
        if py_spy_path() is not None:  # read without the GIL, from outside: where it stopped
            assert "its last stack: <string>:15 in <module>" in verdict.sentence, verdict.sentence
        text = render_text(report)
        assert "rank 1 [frozen]" in text and "process stopped (state T), heartbeat stale for" in text
        assert "for 0.0 s" not in text.split("rank 1 [", 1)[1].splitlines()[0]
    finally:
        rank.kill()
        rank.wait()
        peer.stop(FINISHED)


@pytest.mark.timeout(60)
def test_a_rank_holding_the_gil_is_not_scheduling_python_and_py_spy_says_where(tmp_path):
    if py_spy_path() is None:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    peer = waiting_peer(tmp_path)
    rank = start_rank(tmp_path, "gil")
    try:
        monitor = node_monitor.NodeMonitor(tmp_path, os.getpid(), 0.2, 0.0, use_py_spy=True)
        seen = observe_until(monitor, tmp_path, lambda r: (r["ranks"].get("1") or {}).get("py_spy"))
        assert seen["ranks"]["1"]["stale_since"] and seen["ranks"]["1"]["state"] == "R"
        assert seen["ranks"]["1"]["cpu_busy"] is True  # it runs, in C, all the time
        verdict = build_report(tmp_path).verdict
        assert verdict.kind == "not_scheduling" and verdict.culprits == [1], verdict
        assert verdict.sentence.startswith("rank 1 not scheduling Python (heartbeat stale for "), verdict.sentence
        assert "while its process runs in C code: re/__init__.py:" in verdict.sentence
        assert "in match holding the GIL) at step 3, in forward" in verdict.sentence
    finally:
        rank.kill()
        rank.wait()
        peer.stop(FINISHED)


LAUNCHER = """
import os, sys, time
from nestkit.monitor import node_monitor
from nestkit.monitor.heartbeat import Heartbeat
hb = Heartbeat(sys.argv[1], 0, 1)
hb.start(0.2)
monitor = node_monitor.launch(sys.argv[1], 0.2)
print(monitor.pid, flush=True)
time.sleep(1.5)
if sys.argv[2] == "finish":
    hb.stop("finished")
    time.sleep(3)
os._exit(0)  # "killed": no clean-up, the monitor is never told
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["die", "finish"])
def test_the_node_monitor_ends_with_the_job_and_never_holds_its_output(tmp_path, end):
    started = time.monotonic()
    launcher = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(tmp_path), end],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    took = time.monotonic() - started
    assert launcher.returncode == 0, launcher.stderr
    assert took < (10 if end == "finish" else 6), "waiting for the job's output waited for the monitor"
    monitor_pid = int(launcher.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(monitor_pid):
        time.sleep(0.1)
    assert not _running(monitor_pid), "the node monitor outlived its job"
    final = orjson.loads(node_observation_path(tmp_path, os.uname().nodename).read_bytes())
    assert final["ended"] is True
    if end == "die":
        assert final["ranks"]["0"]["alive"] is False and final["ranks"]["0"]["gone_at"]
        assert read_heartbeats(tmp_path)[0]["status"] == "running"  # what the dead rank's own file still says
        assert build_report(tmp_path).ranks[0].condition == "dead"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_node_monitor_starts_without_torch():
    code = textwrap.dedent(
        """
        import sys
        import nestkit.monitor.node_monitor
        print(",".join(m for m in ("torch", "lhotse", "pytorch_lightning") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
