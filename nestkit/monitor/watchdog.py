"""The stall watchdog: one thread per rank that notices when its rank stops making progress.

Every `poll_interval_s` it compares the time since the rank's last progress (a phase change in the
heartbeat) with the budget of the phase it is in:
* start-up and the first step: `first_step_timeout_s` (process group, workers, compilation);
* validation and checkpointing: `slow_phase_timeout_s` (the clock restarts at each validation batch);
* any other phase: `stall_timeout_s` if set, else max(min_stall_timeout_s, stall_factor x the
  95th percentile of the recent step times) -- the first step is left out of that statistic.
A rank waiting for a batch that some loader is still reading (a read started or ended within that
budget: slow storage) is not stalled, nor are its peers waiting for it, until `slow_data_timeout_s`.

On a stall it opens an incident (nestkit.runfolder.incidents) so that every rank dumps at the same
moment: the Python stacks of all its threads, each DataLoader worker's stacks (SIGUSR1 ->
faulthandler; py-spy too when installed), the worker status slots (which file each worker reads),
the collective state, its heartbeat. The rank that opened the incident waits `dump_grace_s` for the
others, writes the merged report and prints its verdict. Then, with action=abort, every rank
kills its DataLoader workers and exits with STALL_EXIT_CODE; the reporter also kills peers on its
host that did not exit on their own (a rank whose watchdog thread cannot run). With action=wait
the job keeps hanging, for py-spy or gdb.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

from nestkit.config import WatchdogConfig
from nestkit.core.procs import parent_pid, process_start_ticks
from nestkit.monitor import collective, stack_dump
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.runfolder import worker_status
from nestkit.runfolder.heartbeats import ABORTED, RUNNING, heartbeat_dir, read_heartbeats
from nestkit.runfolder.incidents import (
    DUMP,
    REPORT_JSON,
    REPORT_TEXT,
    Incident,
    history,
    latest_incident,
    open_incident,
)
from nestkit.runfolder.records import write_json_atomic

STALL_EXIT_CODE = 3
SLOW_PHASES = ("validation", "checkpoint")


def stall_timeout(cfg: WatchdogConfig, heartbeat: Heartbeat) -> tuple[float | None, str]:
    """(seconds without progress that count as a stall in the current phase, the rule that chose it)."""
    phase = heartbeat.phase
    if phase == "finished" or heartbeat.status != RUNNING:
        return None, "not training"
    if phase in SLOW_PHASES:
        return cfg.slow_phase_timeout_s, f"watchdog.slow_phase_timeout_s ({phase})"
    if heartbeat.steps_done == 0:
        return cfg.first_step_timeout_s, "watchdog.first_step_timeout_s (start-up and first step)"
    if cfg.stall_timeout_s is not None:
        return cfg.stall_timeout_s, "watchdog.stall_timeout_s"
    recent = heartbeat.step_times.quantile(0.95) or 0.0
    derived = max(cfg.min_stall_timeout_s, cfg.stall_factor * recent)
    return derived, (
        f"derived: max(min_stall_timeout_s {cfg.min_stall_timeout_s:g}, "
        f"stall_factor {cfg.stall_factor:g} x p95 step {recent:.3g} s)"
    )


class Watchdog:
    def __init__(self, heartbeat: Heartbeat, cfg: WatchdogConfig, notify=None):
        self.heartbeat = heartbeat
        self.cfg = cfg
        self.run_dir = heartbeat.run_dir
        self.notify = notify or (lambda text: print(text, file=sys.stderr, flush=True))
        self.started_at = time.time()
        # the last incident this rank answered or opened; an earlier run's count as answered
        self._handled = history(self.run_dir, self.started_at - 5)
        self._fired_for: float | None = None  # progress_mono of the stall already declared
        self._slow_noted: float | None = None  # progress_mono of the slow wait already reported
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.aborting = threading.Event()  # set once this rank will exit through abort()
        self._thread: threading.Thread | None = None
        self.stragglers = None  # a monitor.stragglers.StragglerWatch on global rank zero

    # -- thread -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nestkit-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_s):
            try:
                self.tick()
            except Exception as exc:  # the watchdog must never be the thing that kills training
                self.notify(
                    f"nestkit watchdog (rank {self.heartbeat.rank}): internal error {type(exc).__name__}: {exc}"
                )

    def tick(self) -> None:
        hb = self.heartbeat
        if self.stragglers is not None:
            self.stragglers.tick(hb.step)
        timeout, rule = stall_timeout(self.cfg, hb)
        hb.stall_timeout_s, hb.timeout_rule = timeout, rule
        incident = latest_incident(self.run_dir)
        if incident is not None and incident.number > self._handled:
            self.answer(incident)
            return
        if not self.cfg.enabled or timeout is None:
            return
        progress = hb.progress_mono
        idle = time.monotonic() - progress
        if idle > timeout and self._fired_for != progress:
            if idle < self.cfg.slow_data_timeout_s and self._data_still_moving(progress, idle, timeout):
                return
            self._fired_for = progress
            self.declare(
                f"rank {hb.rank} made no progress for {idle:.0f} s in phase {hb.phase} "
                f"at step {hb.step} (limit {timeout:g} s: {rule})"
            )

    def _data_still_moving(self, progress: float, idle: float, timeout: float) -> bool:
        """Slow storage is not a stall: while some rank's loader keeps starting and finishing reads
        for the batch it waits on, say so once and keep watching."""
        from nestkit.monitor.stall_report import data_in_motion

        moving = data_in_motion(self.run_dir, timeout)
        if moving is None:
            return False
        if self._slow_noted != progress:
            self._slow_noted = progress
            self.notify(
                f"\nnestkit watchdog: rank {self.heartbeat.rank} has made no progress for {idle:.0f} s (limit {timeout:g} s), "
                f"but its data is moving: {moving}. Slow data loading, not a stall: watching on (a stall is declared "
                f"when no read starts or ends for {timeout:g} s, or after watchdog.slow_data_timeout_s "
                f"{self.cfg.slow_data_timeout_s:g} s without a step).\n"
            )
        return True

    # -- incidents ----------------------------------------------------------------------------

    def declare(self, reason: str, kind: str = "stall") -> Incident:
        """Open an incident (or join one opened at the same moment), dump, report, then act."""
        hb = self.heartbeat
        request = {
            "kind": kind,
            "rank": hb.rank,
            "reason": reason,
            "time": time.time(),
            "step": hb.step,
            "phase": hb.phase,
            "action": self.cfg.action,
        }
        with self._lock:
            # every rank asks for the same number: one opens it, the others join it. Reserved
            # first, so that this rank's own watchdog thread does not answer it as a follower.
            number = self._handled = self._handled + 1
        incident, opened = open_incident(self.run_dir, request, number)
        if not opened:
            self._respond(incident)
            return incident
        abort = kind != "data_timeout" and self.cfg.action == "abort"  # a data timeout raises instead
        if abort:
            self.aborting.set()
        headline = f"rank {hb.rank}'s DataLoader timed out" if kind == "data_timeout" else reason
        self.notify(f"\nnestkit watchdog: {headline}; collecting the stacks of every rank and worker ...")
        self.dump(incident, reason)
        if kind == "data_timeout":
            then = "The DataLoader timeout ends this rank (its error follows)."
        elif abort:
            then = f"Aborting the job (exit {STALL_EXIT_CODE}); watchdog.action=wait keeps it for py-spy/gdb."
        else:
            then = "Waiting (watchdog.action=wait): attach py-spy or gdb, or stop the job."
        self.report(incident, then)
        if abort:
            # recorded before waiting for the peers: the launcher may kill this process once they exit
            hb.stop(ABORTED, "stopped by the stall watchdog")
            self.take_down_peers()
            self.abort()
        return incident

    def answer(self, incident: Incident) -> None:
        """Dump for an incident another rank (or `nestkit stacks --dump`) opened, once."""
        with self._lock:
            if incident.number <= self._handled:
                return
            self._handled = incident.number
        self._respond(incident)

    def _respond(self, incident: Incident) -> None:
        request = incident.request() or {}
        if request.get("time", 0) < self.started_at - 5:
            return  # left over from an earlier run into the same folder
        stall = request.get("kind") in ("stall", "data_timeout")
        if stall:
            self._fired_for = self.heartbeat.progress_mono  # this rank's part of that stall is reported
        abort = stall and request.get("action", self.cfg.action) == "abort"
        if abort:
            self.aborting.set()
        self.dump(incident, request.get("reason", ""))
        if abort:
            # stay alive until the reporter has merged the dumps: a rank that exits first may get the
            # whole job killed by the launcher before the report exists
            incident.wait_for_report(self.cfg.dump_grace_s + 30)
            self.abort()

    def dump(self, incident: Incident, reason: str) -> dict:
        """This rank's part of the incident: stacks, worker stacks and status, collective, heartbeat."""
        hb = self.heartbeat
        out = incident.rank_dir(hb.rank)
        out.mkdir(parents=True, exist_ok=True)
        beat = hb.write()
        threads = stack_dump.own_threads()
        (out / "threads.txt").write_text(
            stack_dump.format_threads(threads, f"rank {hb.rank} pid {hb.pid} on {hb.host}: {reason}")
        )
        workers = []
        dumps = stack_dump.worker_stacks(self.run_dir, hb.rank, hb.workers) if hb.workers else {}
        for w in hb.workers:
            text = dumps.get(w["worker"])
            entry = {**w, "stack_file": None, "frames": None, "py_spy": None}
            if text:
                path = out / f"worker{w['worker']}.txt"
                path.write_text(text)
                entry["stack_file"] = path.name
                entry["frames"] = [s.as_dict() for s in stack_dump.parse_faulthandler(text)]
            if self.cfg.py_spy:
                spy = stack_dump.py_spy(w["pid"])
                if spy is not None:
                    (out / f"worker{w['worker']}.py-spy.txt").write_text(spy)
                    entry["py_spy"] = f"worker{w['worker']}.py-spy.txt"
            workers.append(entry)
        record = {
            "incident": incident.number,
            "rank": hb.rank,
            "time": time.time(),
            "reason": reason,
            "heartbeat": beat,
            "threads": [s.as_dict() for s in threads],
            "workers": workers,
            "slots": worker_status.read_slots(heartbeat_dir(self.run_dir), hb.rank),
            "collective": collective.collective_state(hb, out),
            "py_spy_available": stack_dump.py_spy_path() is not None,
        }
        write_json_atomic(out / DUMP, record)  # last: marks this rank's dump complete
        return record

    def report(self, incident: Incident, then: str) -> None:
        """Merge every rank's dump into report.json/report.txt and print the verdict; `then` says
        what happens next."""
        from nestkit.monitor.stall_report import build_report, render_text

        incident.wait_for_dumps(self.heartbeat.world_size, self.cfg.dump_grace_s)
        report = build_report(self.run_dir, incident.number)
        (incident.path / REPORT_TEXT).write_text(render_text(report))
        write_json_atomic(incident.path / REPORT_JSON, report.as_dict())
        self.notify(
            f"\nnestkit watchdog: {report.verdict.sentence}.\n"
            f"Stacks, worker status and heartbeats of every rank: {incident.path} "
            f"(run `nestkit stacks {self.run_dir}`). {then}\n"
        )

    # -- abort --------------------------------------------------------------------------------

    def abort(self) -> None:
        """Kill this rank's DataLoader workers and exit at once (Python cleanup could block on them)."""
        hb = self.heartbeat
        if hb.status != ABORTED:
            hb.stop(ABORTED, "stopped by the stall watchdog")
        for child in multiprocessing.active_children():  # DataLoader workers, training and validation
            _kill(child.pid)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STALL_EXIT_CODE)

    def take_down_peers(self, wait_s: float = 5.0) -> None:
        """Peers on this host still running after the report: kill them and their workers (their
        own watchdog could not act, e.g. a C call holding the GIL)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            peers = [
                b
                for r, b in read_heartbeats(self.run_dir).items()
                if r != self.heartbeat.rank
                and b.get("host") == self.heartbeat.host
                and b.get("status") == RUNNING
                and b.get("started_at", 0) >= self.started_at - 600
            ]
            if not peers:
                return
            time.sleep(0.5)
        for beat in peers:
            if process_start_ticks(beat["pid"]) != beat.get("pid_start"):
                continue  # gone, or the pid now names another process
            for w in beat.get("workers", []):
                if parent_pid(w["pid"]) == beat["pid"]:
                    _kill(w["pid"])
            _kill(beat["pid"])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
