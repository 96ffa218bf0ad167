"""Per-rank heartbeats: what each rank is doing, written where any process can read it.

The training thread only assigns a few attributes of a `Heartbeat` (phase, step, position: a
hundred nanoseconds each); a background thread serialises the state every `heartbeat_interval_s`
to `<run_dir>/heartbeat/rank<R>.json` (write a temporary file, then `os.replace`, so a reader never
sees half a file) and its essentials to the memory-mapped pulse `rank<R>.pulse` (every 0.2 s), which
keeps working on a full disk; at each phase change the training thread itself rewrites the phase
mark `rank<R>.phase` (step, batch, phase, collective: about 3 us), so a rank that freezes is known
to have frozen in exactly that phase. `nestkit stacks`, the node monitor and the watchdogs of all
ranks read them.

Phases: startup, fetch (waiting for the DataLoader), forward, backward, collective (backward is
done, the rank waits for its peers' gradients), optimizer, step_end (callbacks: logging,
checkpoint decisions), validation, checkpoint, finished.
"""

from __future__ import annotations

import heapq
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nestkit.core.procs import process_start_ticks
from nestkit.runfolder.heartbeats import (
    FINISHED,
    FORMAT,
    RUNNING,
    PhaseMark,
    open_phase_mark,
    open_pulse,
    pulse_record,
    write_heartbeat,
)
from nestkit.runfolder.layout import heartbeat_path, pulse_path
from nestkit.runfolder.records import describe_os_error, warn_once
from nestkit.runfolder.worker_status import StatusSlot

if TYPE_CHECKING:
    from nestkit.data.sampler import TrainingStream

PULSE_INTERVAL_S = 0.2  # the pulse's refresh (the JSON file keeps heartbeat_interval_s)


class StepTimes:
    """The last `size` step durations in a fixed ring (no allocation per step)."""

    def __init__(self, size: int = 200):
        self._values = [0.0] * size
        self.count = 0
        self.first: float | None = None  # the first step (start-up, compilation) is kept apart

    def add(self, seconds: float) -> None:
        if self.first is None:
            self.first = seconds
            return
        self._values[self.count % len(self._values)] = seconds
        self.count += 1

    def recent(self) -> list[float]:
        n = min(self.count, len(self._values))
        return sorted(self._values[:n]) if n else ([self.first] if self.first is not None else [])

    def quantile(self, q: float) -> float | None:
        values = self.recent()
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    def summary(self) -> dict:
        values = self.recent()
        if not values:
            return {"count": 0}
        return {
            "count": self.count + (self.first is not None),
            "first": _round(self.first),
            "median": _round(values[len(values) // 2]),
            "p95": _round(self.quantile(0.95)),
            "max": _round(values[-1]),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


TIMING_WINDOW_STEPS = 50  # steps the per-rank timing summary (and the straggler check) looks back over
RECENT_LOADS_KEPT = 2048  # per-sample load times kept for naming a rank's slowest files
SLOW_LOADS_SHOWN = 5


@dataclass(frozen=True)
class StepCost:
    """Where one micro-batch's wall time went on this rank."""

    data_wait_s: float  # in the DataLoader's next(): waiting for a batch since the previous step began
    compute_s: float  # step start to step end, less the waits for peers inside it
    peer_wait_s: float  # in collectives (DDP's buffer broadcast and all-reduce, Lightning's broadcast)

    @property
    def wall_s(self) -> float:
        return self.data_wait_s + self.compute_s + self.peer_wait_s


class StepTiming:
    """Data wait, compute and peer wait of a rank's recent steps, and its slowest recent sample loads.
    The training thread adds a few numbers per step; summaries are made on the heartbeat's thread
    (deque copies are atomic under the GIL)."""

    def __init__(self, window: int = TIMING_WINDOW_STEPS):
        self.window: deque[StepCost] = deque(maxlen=window)
        self.loads: deque[tuple] = deque(maxlen=RECENT_LOADS_KEPT)  # (ms, cut_id, path, manifest, line)
        self.last: StepCost | None = None
        self.steps = 0
        self.totals = [0.0, 0.0, 0.0]  # data wait, compute, peer wait since start (first step included)
        self.pending_wait = 0.0  # fetch waits since the last step started
        self.pending_peer = 0.0  # collective waits since the last step ended
        self._peer_at_start = 0.0
        self._wait = 0.0  # the running step's data wait

    def start_step(self, records: list[dict], load_ms: list[float] | None) -> float:
        """A step begins: returns its data wait; notes the batch's per-sample load times."""
        self._wait, self.pending_wait = self.pending_wait, 0.0
        self._peer_at_start = self.pending_peer
        for ms, record in zip(load_ms or (), records):
            self.loads.append(
                (ms, record.get("cut_id"), record.get("path"), record.get("manifest"), record.get("line"))
            )
        return self._wait

    def end_step(self, step_seconds: float) -> StepCost:
        in_step_peer = self.pending_peer - self._peer_at_start
        cost = StepCost(
            round(self._wait, 6),
            round(max(0.0, step_seconds - in_step_peer), 6),
            round(self.pending_peer, 6),
        )
        self.pending_peer = self._peer_at_start = 0.0
        if self.steps:  # the first step (start-up: workers, first fetches, compilation) stays out of the window
            self.window.append(cost)
        self.steps += 1
        self.last = cost
        for i, value in enumerate((cost.data_wait_s, cost.compute_s, cost.peer_wait_s)):
            self.totals[i] += value
        return cost

    def summary(self) -> dict:
        costs = list(self.window)
        out: dict = {"steps": self.steps, "window": len(costs)}
        out["totals"] = dict(zip(("data_wait_s", "compute_s", "peer_wait_s"), (round(t, 4) for t in self.totals)))
        if costs:
            for name in ("data_wait_s", "compute_s", "peer_wait_s"):
                values = sorted(getattr(c, name) for c in costs)
                out[name] = round(values[len(values) // 2], 5)
            wall = sum(c.wall_s for c in costs)
            out["data_wait_share"] = round(sum(c.data_wait_s for c in costs) / wall, 4) if wall > 0 else 0.0
            out["compute_share"] = round(sum(c.compute_s for c in costs) / wall, 4) if wall > 0 else 0.0
        out["slow_loads"] = slowest_loads(list(self.loads))
        return out


def slowest_loads(loads: list[tuple], count: int = SLOW_LOADS_SHOWN) -> list[dict]:
    """The `count` slowest loads, one per file (its slowest), slowest first."""
    best: dict = {}
    for entry in loads:
        key = entry[2] or entry[1]
        if key not in best or entry[0] > best[key][0]:
            best[key] = entry
    top = heapq.nlargest(count, best.values(), key=lambda e: e[0])
    return [
        {"ms": ms, "cut_id": cut, "path": path, "manifest": manifest, "line": line}
        for ms, cut, path, manifest, line in top
    ]


@dataclass
class CollectiveState:
    """DDP's gradient all-reduce of the current step, as the comm hook sees it."""

    backend: str | None = None
    op: str | None = None  # the collective the rank entered last: "all-reduce" or "buffer broadcast"
    round: int = 0  # all-reduce rounds started (one per optimizer step with DDP)
    buckets_launched: int = 0
    bytes_launched: int = 0
    round_started: float | None = None  # wall time the round's first bucket was launched
    last_launched: float | None = None  # wall time of the last bucket launch: after it, the rank only waits
    futures: list = field(default_factory=list, repr=False)  # the round's all-reduce futures

    def as_dict(self) -> dict:
        # completed buckets are counted when asked, not by a callback per bucket on the backend's
        # thread (which would take the GIL in the middle of the all-reduce)
        done = sum(1 for f in list(self.futures) if f.done())
        return {
            "backend": self.backend,
            "op": self.op,
            "round": self.round,
            "buckets_launched": self.buckets_launched,
            "buckets_done": done,
            "bytes_launched": self.bytes_launched,
            "round_started": self.round_started,
            "last_launched": self.last_launched,
        }


def cut_summary(cut) -> dict:
    """id, file, manifest:line of a cut (for in-flight batches)."""
    from nestkit.data.loading import cut_path

    custom = cut.custom or {}
    return {"cut_id": cut.id, "path": cut_path(cut), "manifest": custom.get("manifest"), "line": custom.get("line")}


class Heartbeat:
    """One rank's progress. The training thread calls the `mark_*`/`set_phase` methods; everything
    else (snapshot, write) runs on other threads."""

    def __init__(self, run_dir: str | os.PathLike, rank: int, world_size: int, local_rank: int = 0):
        self.run_dir = Path(run_dir)
        self.path = heartbeat_path(run_dir, rank)
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_start = process_start_ticks(self.pid)
        self.started_at = time.time()
        self.status = RUNNING
        self.error: str | None = None
        self.phase = "startup"
        self.phase_since = self.started_at
        self.progress_mono = time.monotonic()  # the watchdog's clock: wall time may jump
        self.step = 0  # the optimizer step in progress (the batch log's "step")
        self.steps_done = 0
        self.position: tuple[int, int] | None = None  # (epoch, batch) in training
        self.batch_records: list[dict] = []  # the trained batch's per-utterance records (cut, file, line)
        self.received: tuple[int, int] | None = None  # last batch that came out of the DataLoader
        self.stream: TrainingStream | None = None  # what was handed to the DataLoader
        self.workers: list[dict] = []  # [{"worker": w, "pid": p}]
        self.collective = CollectiveState()
        self.step_times = StepTimes()
        self.timing = StepTiming()  # data wait vs compute vs peer wait per step
        self.stall_timeout_s: float | None = None  # set by the watchdog, for the record
        self.timeout_rule = ""
        self._step_started = 0.0
        self._fetch_s = 0.0
        self._cut_cache: dict[tuple[int, int], list[dict]] = {}
        self.interval_s = 1.0
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self.last_written: float | None = None  # wall time of the last heartbeat that reached the disk
        self.write_failures = 0
        self._pulse: StatusSlot | None = None  # the memory-mapped slot, opened by start()
        self._mark: PhaseMark | None = None  # the memory-mapped phase mark, opened by start()

    # -- training thread ----------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        now = time.time()
        if self.phase == "collective":  # time spent waiting for peers
            self.timing.pending_peer += now - self.phase_since
        self.phase = phase
        self.phase_since = now
        self.progress_mono = time.monotonic()
        mark = self._mark
        if mark is not None:  # outside readers see the phase a frozen rank froze in, not a second before
            mark.write(self.step, self.position, phase, self.phase_since, self.phase_since, self.collective.op)

    def enter_collective(self, op: str) -> None:
        """The rank has nothing to do until its peers join `op`."""
        self.collective.op = op
        self.set_phase("collective")

    def mark_progress(self) -> None:
        """Progress inside a phase (a validation batch): the phase's stall clock restarts."""
        self.progress_mono = time.monotonic()
        mark = self._mark
        if mark is not None:
            mark.write(self.step, self.position, self.phase, self.phase_since, time.time(), self.collective.op)

    def mark_fetched(self, position: tuple[int, int] | None, seconds: float) -> None:
        self.received = position
        self._fetch_s = seconds
        self.timing.pending_wait += seconds

    def mark_step_start(
        self, step: int, position: tuple[int, int] | None, records: list[dict], load_ms: list[float] | None = None
    ) -> None:
        self.step = step
        self.position = position
        self.batch_records = records
        self.timing.start_step(records, load_ms)
        self._step_started = time.monotonic()
        self.set_phase("forward")

    def mark_step_end(self, next_step: int) -> None:
        # a step's time is its compute plus the wait for its batch; validation and checkpointing
        # between steps have their own budget and stay out of it
        self.step_times.add(time.monotonic() - self._step_started + self._fetch_s)
        self.timing.end_step(time.monotonic() - self._step_started)
        self.steps_done += 1
        self.step = next_step  # from here on the rank works towards the next step (fetching its batch)
        self.set_phase("step_end")

    # -- any thread ---------------------------------------------------------------------------

    def _cuts(self, epoch: int, batch: int, cuts) -> list[dict]:
        key = (epoch, batch)
        if key not in self._cut_cache:
            if len(self._cut_cache) > 64:
                self._cut_cache.clear()
            self._cut_cache[key] = [cut_summary(c) for c in cuts]
        return self._cut_cache[key]

    def in_flight(self) -> list[dict]:
        """Batches handed to the DataLoader and not trained yet, oldest first; `state` says whether
        the DataLoader still owes it ("loading") or Lightning holds it already ("prefetched")."""
        stream = self.stream
        if stream is None:
            return []
        out = []
        for epoch, batch, cuts in stream.handed_out_snapshot():
            key = (epoch, batch)
            if self.position is not None and key <= self.position:
                continue
            state = "prefetched" if self.received is not None and key <= self.received else "loading"
            out.append({"epoch": epoch, "batch": batch, "state": state, "cuts": self._cuts(epoch, batch, cuts)})
        return out

    def _progress(self, now: float) -> dict:
        """The fields the heartbeat and its pulse share: who, when, and where training is."""
        return {
            **self._identity(),
            "written_at": now,
            "status": self.status,
            "error": self.error,
            "step": self.step,
            "steps_done": self.steps_done,
            "phase": self.phase,
            "phase_since": self.phase_since,
            "progress_age_s": round(time.monotonic() - self.progress_mono, 3),
            "stall_timeout_s": self.stall_timeout_s,
            "timeout_rule": self.timeout_rule,
            "position": _pos(self.position),
        }

    def snapshot(self) -> dict:
        in_flight = self.in_flight()
        waiting = next((b for b in in_flight if b["state"] == "loading"), None)
        stream = self.stream
        data_end = getattr(stream, "data_end", None) if stream is not None else None
        return {
            **self._progress(time.time()),
            "batch_cuts": [{k: r.get(k) for k in ("cut_id", "path", "manifest", "line")} for r in self.batch_records],
            "received": _pos(self.received),
            "waiting_for": waiting if self.phase in ("fetch", "startup") else None,
            "in_flight": [
                {k: b[k] for k in ("epoch", "batch", "state")} | {"cut_ids": [c["cut_id"] for c in b["cuts"]]}
                for b in in_flight
            ],
            "data_end": data_end,
            "workers": self.workers,
            "collective": self.collective.as_dict(),
            "step_time": self.step_times.summary(),
            "timing": self.timing.summary(),
        }

    def write(self) -> dict:
        """Snapshot and write the heartbeat; never raises for the file (a full disk is warned about
        once by the run folder's writer, and the snapshot is still returned for stall dumps)."""
        with self._write_lock:  # the writer thread and a final write from the training thread
            data = self.snapshot()
            if write_heartbeat(self.run_dir, self.rank, data):
                self.last_written = data["written_at"]
            else:
                self.write_failures += 1
            if self._pulse is not None:
                self._pulse.write(pulse_record(data))
            return data

    def start(self, interval_s: float) -> None:
        self.interval_s = interval_s
        try:
            self._pulse = open_pulse(self.run_dir, self.rank)
            self._mark = open_phase_mark(self.run_dir, self.rank)
        except OSError as exc:
            warn_once(
                pulse_path(self.run_dir, self.rank),
                f"cannot create the heartbeat's pulse ({describe_os_error(exc)}); "
                "if the disk fills up, this rank's heartbeat will look stale",
            )
        self.write()
        self._writer = threading.Thread(target=self._run, args=(interval_s,), name="nestkit-heartbeat", daemon=True)
        self._writer.start()

    def _run(self, interval_s: float) -> None:
        # the pulse is refreshed more often than the file: when a rank freezes, its pulse names the
        # step and phase it froze in, not those of up to a second before
        every = min(PULSE_INTERVAL_S, interval_s)
        next_full = time.monotonic() + interval_s
        while not self._stop.wait(every):
            try:
                if time.monotonic() >= next_full:
                    next_full += interval_s
                    self.write()
                else:
                    self.write_pulse()
            except Exception as exc:  # a bug in a snapshot must not kill training; say it once
                warn_once(self.path, f"heartbeat snapshot failed ({type(exc).__name__}: {exc})")

    def write_pulse(self) -> None:
        """Refresh the pulse only: scalar fields, no cut lists (a few microseconds)."""
        if self._pulse is None:
            return
        with self._write_lock:
            now = time.time()
            self._pulse.write(
                pulse_record(
                    {
                        **self._progress(now),
                        "received": _pos(self.received),
                        "waiting_for": self._waiting_position() if self.phase in ("fetch", "startup") else None,
                        "data_end": getattr(self.stream, "data_end", None),
                        "workers": self.workers,
                    }
                )
            )

    def _waiting_position(self) -> dict | None:
        """The oldest batch handed to the DataLoader and not received yet (no cut summaries)."""
        stream = self.stream
        if stream is None:
            return None
        for epoch, batch, _ in stream.handed_out_snapshot():
            key = (epoch, batch)
            if (self.position is None or key > self.position) and (self.received is None or key > self.received):
                return {"epoch": epoch, "batch": batch}
        return None

    def _identity(self) -> dict:
        return {
            "format": FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "host": self.host,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "started_at": self.started_at,
            "interval_s": self.interval_s,
        }

    def stop(self, status: str, error: str | None = None) -> None:
        self._stop.set()
        self.status = status
        self.error = error
        self.stall_timeout_s, self.timeout_rule = None, f"not training ({status})"
        if status == FINISHED:
            self.set_phase("finished")
        try:
            self.write()
        except Exception as exc:
            warn_once(self.path, f"final heartbeat failed ({type(exc).__name__}: {exc})")


def _pos(position: tuple[int, int] | None) -> dict | None:
    return None if position is None else {"epoch": position[0], "batch": position[1]}
