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

The abort path never depends on the run folder: every write goes through `nestkit.runfolder`
(which warns once and never raises), the reporter's own dump is used from memory, a verdict that
cannot be written to report.txt is printed in full to stderr, and the "abort" and "reported"
signals between ranks are empty marker files, which a full disk still takes. Processes nestkit
kills are recorded (who, why), so that no later report calls them dead.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

from nestkit.config import WatchdogConfig
from nestkit.core.procs import STOPPED_STATES, ZOMBIE_STATES, parent_pid, process_alive, process_state
from nestkit.monitor import collective, stack_dump
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.stragglers import StragglerWatch
from nestkit.runfolder import records, worker_status
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

STALL_EXIT_CODE = 3
SLOW_PHASES = ("validation", "checkpoint")
PEER_EXIT_WAIT_S = 5.0  # after the report, how long the reporter waits for peers to exit by themselves
FLUSH_BEFORE_EXIT_S = 5.0  # at most this long writing held records before os._exit (a hung mount)
WORKER_STACK_WAIT_S = 3.0
PY_SPY_TIMEOUT_S = 5.0


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
        self.stragglers: StragglerWatch | None = None  # on global rank zero only
        self._errors_said: set[str] = set()
        self._kills: list[dict] = []  # processes this rank killed, for the incident's record

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
                said = f"{type(exc).__name__}: {exc}"
                if said not in self._errors_said:  # once each: a poll every second must not flood the log
                    self._errors_said.add(said)
                    self.notify(f"nestkit watchdog (rank {self.heartbeat.rank}): internal error {said}")

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
        """Open an incident (or join one opened at the same moment), dump, report, then act.
        Whatever fails in between (a full disk, a bug), an abort still happens."""
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
        try:
            headline = f"rank {hb.rank}'s DataLoader timed out" if kind == "data_timeout" else reason
            self.notify(f"\nnestkit watchdog: {headline}; collecting the stacks of every rank and worker ...")
            own = self.dump(incident, reason)
            if kind == "data_timeout":
                then = "The DataLoader timeout ends this rank (its error follows)."
            elif abort:
                then = f"Aborting the job (exit {STALL_EXIT_CODE}); watchdog.action=wait keeps it for py-spy/gdb."
            else:
                then = "Waiting (watchdog.action=wait): attach py-spy or gdb, or stop the job."
            self.report(incident, then, own)
        except Exception as exc:  # a bug must not keep a stalled job alive: say it, then end as planned
            self.notify(
                f"\nnestkit watchdog (rank {hb.rank}): the stall report failed ({type(exc).__name__}: {exc}). "
                f"The stall: {reason}."
            )
        finally:
            incident.mark_reported()
            if abort:
                # recorded before waiting for the peers: the launcher may kill this process once they exit
                hb.stop(ABORTED, "stopped by the stall watchdog")
                self.take_down_peers(incident)
                self.abort(incident)
        return incident

    def answer(self, incident: Incident) -> None:
        """Dump for an incident another rank (or `nestkit stacks --dump`) opened, once."""
        with self._lock:
            if incident.number <= self._handled:
                return
            self._handled = incident.number
        self._respond(incident)

    def _respond(self, incident: Incident) -> None:
        request = incident.request_or_markers()
        if request.get("time", 0) < self.started_at - 5:
            return  # left over from an earlier run into the same folder
        stall = request.get("kind") in ("stall", "data_timeout")
        if stall:
            self._fired_for = self.heartbeat.progress_mono  # this rank's part of that stall is reported
        abort = stall and request.get("action", self.cfg.action) == "abort"
        if abort:
            self.aborting.set()
        try:
            self.dump(incident, request.get("reason", ""))
        finally:
            if abort:
                # stay alive until the reporter has merged the dumps: a rank that exits first may get the
                # whole job killed by the launcher before the report exists
                incident.wait_for_report(self.cfg.dump_grace_s + 30)
                self.abort(incident)

    def dump(self, incident: Incident, reason: str) -> dict:
        """This rank's part of the incident: stacks, worker stacks and status, collective, heartbeat.
        Returns it; what the run folder refuses is warned about by file and summarised on stderr."""
        hb = self.heartbeat
        out = incident.rank_dir(hb.rank)
        records.make_dir(out)
        beat = hb.write()
        threads = stack_dump.own_threads()
        wrote = records.write_text(
            out / "threads.txt",
            stack_dump.format_threads(threads, f"rank {hb.rank} pid {hb.pid} on {hb.host}: {reason}"),
        )
        workers = []
        dumps = stack_dump.worker_stacks(self.run_dir, hb.rank, hb.workers, WORKER_STACK_WAIT_S) if hb.workers else {}
        for w in hb.workers:
            text = dumps.get(w["worker"])
            entry = {**w, "stack_file": None, "frames": None, "py_spy": None}
            if text:
                name = f"worker{w['worker']}.txt"
                if records.write_text(out / name, text):
                    entry["stack_file"] = name
                entry["frames"] = [s.as_dict() for s in stack_dump.parse_faulthandler(text)]
            if self.cfg.py_spy:
                spy = stack_dump.py_spy(w["pid"], PY_SPY_TIMEOUT_S)
                if spy is not None:
                    name = f"worker{w['worker']}.py-spy.txt"
                    entry["py_spy"] = name if records.write_text(out / name, spy) else None
                    if not entry["frames"]:  # the worker did not answer SIGUSR1: py-spy's view instead
                        entry["frames"] = [s.as_dict() for s in stack_dump.parse_py_spy(spy)]
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
        wrote = records.write_json_atomic(out / DUMP, record) and wrote  # last: marks this rank's dump complete
        if not wrote:
            incident.mark_dump_refused(hb.rank)  # the reporter need not wait for files that cannot come
            self.notify(
                f"nestkit watchdog: rank {hb.rank} could not write its stall dump into {out} (see above); "
                f"it was {_doing(beat)}"
            )
        return record

    def report(self, incident: Incident, then: str, own_dump: dict | None = None) -> None:
        """Merge every rank's dump into report.json/report.txt and print the verdict; `then` says
        what happens next. When the report cannot be written, it is printed in full."""
        from nestkit.monitor.stall_report import build_report, render_text

        incident.wait_for_dumps(self.heartbeat.world_size, self.cfg.dump_grace_s, self._silent_ranks)
        own = {self.heartbeat.rank: own_dump} if own_dump is not None else {}
        report = build_report(self.run_dir, incident.number, own_dumps=own)
        text = render_text(report)
        saved = records.write_text(incident.path / REPORT_TEXT, text)
        saved = records.write_json_atomic(incident.path / REPORT_JSON, report.as_dict()) and saved
        if saved:
            where = (
                f"Stacks, worker status and heartbeats of every rank: {incident.path} "
                f"(run `nestkit stacks {self.run_dir}`)."
            )
        else:
            where = f"The report could not be saved under {incident.path} (see above); here it is in full:\n\n{text}\n"
        self.notify(f"\nnestkit watchdog: {report.verdict.sentence}.\n{where}{' ' if saved else ''}{then}\n")

    def _silent_ranks(self) -> set[int]:
        """Ranks on this host that will never dump: their process is stopped or gone."""
        silent = set()
        for rank, beat in read_heartbeats(self.run_dir).items():
            if rank == self.heartbeat.rank or beat.get("host") != self.heartbeat.host:
                continue
            gone = beat.get("status") != RUNNING or not process_alive(beat["pid"], beat.get("pid_start"))
            if gone or process_state(beat["pid"]) in STOPPED_STATES + ZOMBIE_STATES:
                silent.add(rank)
        return silent

    # -- abort --------------------------------------------------------------------------------

    def abort(self, incident: Incident | None = None) -> None:
        """Kill this rank's DataLoader workers and exit at once (Python cleanup could block on them)."""
        hb = self.heartbeat
        if hb.status != ABORTED:
            hb.stop(ABORTED, "stopped by the stall watchdog")
        children = multiprocessing.active_children()  # DataLoader workers, training and validation
        worker_of = {w["pid"]: w["worker"] for w in hb.workers}
        for child in children:
            self._kills.append(
                {
                    "pid": child.pid,
                    "rank": hb.rank,
                    "worker": worker_of.get(child.pid, child.name),
                    "reason": "the job ends: its rank aborts after the stall report",
                    "time": time.time(),
                }
            )
        if incident is not None and children:
            incident.record_kills(hb.rank, self._kills)
        for child in children:
            if child.pid is not None:  # always set: active_children() lists started processes only
                _kill(child.pid)
        _bounded(records.flush_all, FLUSH_BEFORE_EXIT_S)  # batch log and quarantine records still held
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(STALL_EXIT_CODE)

    def take_down_peers(self, incident: Incident | None = None, wait_s: float = PEER_EXIT_WAIT_S) -> None:
        """Peers on this host still running after the report: kill them and their workers (their
        own watchdog could not act: a stopped process, a C call holding the GIL)."""
        deadline = time.monotonic() + wait_s
        while True:
            peers = self._running_peers()
            if not peers or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not peers:
            return
        for beat in peers:
            state = process_state(beat["pid"])
            if state in STOPPED_STATES:
                why = f"frozen (process stopped, state {state}): it could not answer the incident"
            else:
                why = f"did not exit within {wait_s:g} s of the report (state {state}: its watchdog could not run)"
            for w in beat.get("workers", []):
                if parent_pid(w["pid"]) == beat["pid"]:
                    self._kills.append(
                        {
                            "pid": w["pid"],
                            "rank": beat["rank"],
                            "worker": w["worker"],
                            "reason": "its rank was taken down",
                            "time": time.time(),
                        }
                    )
            self._kills.append(
                {"pid": beat["pid"], "rank": beat["rank"], "worker": None, "reason": why, "time": time.time()}
            )
        if incident is not None:
            incident.record_kills(self.heartbeat.rank, self._kills)  # before the kills: the record outlives them
        for kill in self._kills:
            if kill["rank"] != self.heartbeat.rank:
                _kill(kill["pid"])
        self.notify(
            "nestkit watchdog: killed "
            + "; ".join(f"rank {b['rank']} (pid {b['pid']})" for b in peers)
            + " on this host: it did not exit by itself after the report"
        )

    def _running_peers(self) -> list[dict]:
        """Peers on this host whose process still runs and whose heartbeat says it is training."""
        return [
            b
            for r, b in read_heartbeats(self.run_dir).items()
            if r != self.heartbeat.rank
            and b.get("host") == self.heartbeat.host
            and b.get("status") == RUNNING
            and b.get("started_at", 0) >= self.started_at - 600
            and process_alive(b["pid"], b.get("pid_start"))
            and process_state(b["pid"]) not in ZOMBIE_STATES
        ]


def _doing(beat: dict) -> str:
    """`in phase collective at step 6 for 12 s` from a heartbeat record."""
    held = time.time() - (beat.get("phase_since") or time.time())
    return f"in phase {beat.get('phase')} at step {beat.get('step')} for {held:.0f} s"


def _bounded(function, seconds: float) -> None:
    """Run `function` in a daemon thread for at most `seconds` (a write to a hung mount never returns)."""
    thread = threading.Thread(target=function, name="nestkit-flush", daemon=True)
    thread.start()
    thread.join(seconds)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    except OSError as exc:
        print(f"nestkit watchdog: cannot kill process {pid} ({exc.strerror or exc})", file=sys.stderr, flush=True)
