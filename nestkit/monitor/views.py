"""What the run folder says about each rank and each loading process, as of one moment.

Sources, freshest first: a stall dump (a snapshot the rank took itself), the heartbeat (brought up
to date by its pulse), the node monitor's observations (the process seen from outside: stopped,
gone, not scheduling Python, with py-spy's stack) and, for a process on this host, /proc now.
A heartbeat that is not fresh is never shown as current: a view says how stale it is, and
durations of a process that cannot have moved on (stopped, holding the GIL) run to now.

Reads only; no verdicts (see `verdicts`) and no text (see `report_text`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from nestkit.core.procs import STOPPED_STATES, ZOMBIE_STATES, parent_pid, process_alive, process_state
from nestkit.monitor.stack_dump import Frame, ThreadStack, key_frame, parse_py_spy
from nestkit.runfolder.heartbeats import FAILED, FINISHED, RUNNING

MISSING = "missing"
# conditions of a process seen from outside (RankView.condition)
FROZEN = "frozen"  # stopped (SIGSTOP, a debugger): state T
UNRESPONSIVE = "unresponsive"  # alive, but its heartbeat thread has not run for a while: no Python runs
DEAD = "dead"  # gone without a word (killed from outside, OOM killer, segfault)
KILLED = "killed"  # gone: nestkit killed it (a watchdog taking the job down)


def stale_after(interval_s: float) -> float:
    """Seconds after which a heartbeat that should be rewritten every `interval_s` is stale."""
    return 3 * interval_s + 2


@dataclass
class LoaderView:
    """A process that loads a rank's data: a DataLoader worker, or the rank itself ("main")."""

    name: str  # worker0, val-worker0, main
    pid: int | None
    state: str | None  # loading, building, augmenting, idle; None when it never reported
    seconds: float | None  # how long it has been in that state
    cut_id: str | None = None
    path: str | None = None
    manifest: str | None = None
    line: int | None = None
    batch: dict | None = None  # {"epoch", "batch"} being built
    frame: str | None = None  # where its stack dump says it is
    stack_file: str | None = None
    process: str | None = None  # seen from outside: "gone", "stopped", "zombie"; None: running or unknown

    @property
    def where(self) -> str:
        manifest = os.path.basename(self.manifest) if self.manifest else "?"
        return f"{self.path} (cut {self.cut_id}, {manifest}:{self.line})"

    @property
    def label(self) -> str:
        """`worker 1`, `validation worker 0`, `the rank itself`."""
        if self.name == "main":
            return "the rank itself"
        return self.name.replace("val-worker", "validation worker ").replace("worker", "worker ").replace("  ", " ")


@dataclass
class RankView:
    rank: int
    status: str  # the heartbeat's: running, finished, failed, aborted; or missing
    host: str | None = None
    pid: int | None = None
    alive: bool | None = None  # the process still exists (None: another host, or unknown)
    phase: str | None = None
    phase_seconds: float | None = None
    idle_seconds: float | None = None  # since the last progress
    timeout: float | None = None
    timeout_rule: str | None = None
    step: int | None = None
    steps_done: int | None = None
    position: dict | None = None  # the batch in training / last trained
    waiting_for: dict | None = None  # the batch a fetching rank waits for, with its cuts
    in_flight: list[dict] = field(default_factory=list)
    data_end: dict | None = None
    collective: dict | None = None
    step_time: dict | None = None
    frame: str | None = None  # where its main thread is (from a stall dump, else py-spy)
    blocking_call: str | None = None  # a torch.distributed call its main thread is in (from a stall dump)
    error: str | None = None
    ended_at: float | None = None  # wall time of its last heartbeat, once it stopped
    dumped: bool = False
    loaders: list[LoaderView] = field(default_factory=list)
    written_at: float | None = None  # its last heartbeat (or pulse)
    heartbeat_age_s: float | None = None  # seconds since then, at the moment the view describes
    stale: bool = False  # running, yet not rewritten for longer than a heartbeat should take
    condition: str | None = None  # frozen, unresponsive, dead, killed (see above); None: as its heartbeat says
    process_state: str | None = None  # proc(5) state letter, from /proc or the node monitor
    stopped_since: float | None = None  # wall time the node monitor first saw it stopped
    gone_at: float | None = None  # wall time its process was seen gone
    cpu_busy: bool | None = None  # it used CPU since the monitor's previous look
    killed: dict | None = None  # nestkit's record of killing it: by_rank, reason, time
    spy_frame: str | None = None  # where py-spy saw it, read from outside
    spy_gil: bool = False  # py-spy saw that thread holding the GIL

    @property
    def stalled(self) -> bool:
        return self.timeout is not None and self.idle_seconds is not None and self.idle_seconds >= self.timeout

    @property
    def died(self) -> bool:
        """Its process is gone without a word (not nestkit's doing). A rank that dumped for the
        incident is described as it was then, whatever happened to it afterwards."""
        return self.condition == DEAD

    @property
    def shown_status(self) -> str:
        """What a table shows: its condition when seen from outside, else its heartbeat's status."""
        return self.condition or self.status

    @property
    def left_loop(self) -> bool:
        """Out of the training loop: its peers' next collective will never be matched by it."""
        if self.status in (FINISHED, FAILED, MISSING) or self.condition in (DEAD, KILLED):
            return True
        in_step = self.phase in ("forward", "backward", "collective", "optimizer")
        return self.data_end is not None and not self.in_flight and not in_step

    @property
    def in_collective(self) -> bool:
        return self.phase == "collective" or self.blocking_call is not None

    @property
    def collective_op(self) -> str:
        """What the rank waits in: the heartbeat's label, or the torch.distributed call its stack shows."""
        op = (self.collective or {}).get("op") if self.phase == "collective" else None
        named = {
            "buffer broadcast": "DDP's buffer broadcast (start of forward)",
            "step-start broadcast": "Lightning's step-start broadcast",
        }
        if op:
            return named.get(op, op)
        return self.blocking_call or "a collective"

    def doing(self) -> str:
        """`waiting in all-reduce at step 4`, `in forward at step 4`, ..."""
        if self.in_collective:
            return f"waiting in {self.collective_op} at step {self.step}"
        if self.phase == "fetch":
            return f"waiting for its DataLoader at step {self.step}"
        return f"in {self.phase} at step {self.step}"


# ------------------------------------------------------------------------------------------------
# Building views


def stacks_of(records: list[dict] | None) -> list[ThreadStack]:
    return [
        ThreadStack(r["name"], r["ident"], [Frame(**f) for f in r["frames"]], r.get("current", False))
        for r in records or []
    ]


def blocking_call(stacks: list[ThreadStack]) -> str | None:
    """`barrier (from save_checkpoint)` when the main thread is inside a torch.distributed call."""
    main = next((s for s in stacks if s.name == "MainThread"), None)
    if main is None:
        return None
    frames = main.frames[:4]
    c10d = next((f for f in frames if f.file.endswith("torch/distributed/distributed_c10d.py")), None)
    if c10d is None:
        return None
    later = main.frames[main.frames.index(c10d) + 1 :]
    # the first caller with another name: Lightning's strategy.barrier() says less than save_checkpoint
    caller = next(
        (
            f
            for f in later
            if not f.file.endswith(("distributed_c10d.py", "c10d_logger.py"))
            and f.function not in (c10d.function, "wrapper")
        ),
        None,
    )
    return f"torch.distributed.{c10d.function}" + (f" (from {caller.function})" if caller else "")


def _worker_process(pid: int | None, rank_pid: int | None, same_host: bool, observed: dict | None) -> str | None:
    """ "gone", "stopped" or "zombie" for a loader process that is not simply running; None otherwise."""
    if pid is None:
        return None
    if same_host:
        state = process_state(pid)
        if state is None or (rank_pid is not None and parent_pid(pid) not in (rank_pid, None)):
            return "gone"
        return "zombie" if state in ZOMBIE_STATES else "stopped" if state in STOPPED_STATES else None
    if observed is None:
        return None
    if observed.get("alive") is False:
        return "gone"
    return "stopped" if observed.get("stopped_since") else None


def loader_views(
    slots: list[dict],
    workers: list[dict],
    ref_time: float,
    rank_pid: int | None = None,
    same_host: bool = False,
    observed: dict | None = None,
) -> list[LoaderView]:
    """Views of a rank's loading processes. `rank_pid` None: the rank no longer runs (its workers
    ended with it, so their absence says nothing)."""
    by_pid = {w["pid"]: w for w in workers}
    views = []
    for slot in slots:
        worker = by_pid.get(slot.get("pid"), {})
        since = slot.get("since")
        pid = slot.get("pid")
        views.append(
            LoaderView(
                name=slot.get("slot", "?"),
                pid=pid,
                state=slot.get("state"),
                seconds=round(max(0.0, ref_time - since), 1) if since else None,
                cut_id=slot.get("cut_id"),
                path=slot.get("path"),
                manifest=slot.get("manifest"),
                line=slot.get("line"),
                batch=slot.get("batch"),
                frame=key_frame(stacks_of(worker.get("frames"))),
                stack_file=worker.get("stack_file"),
                process=None
                if rank_pid is None or slot.get("slot") == "main"
                else _worker_process(pid, rank_pid, same_host, (observed or {}).get(str(pid))),
            )
        )
    return views


def rank_view(
    rank: int,
    latest: dict | None,
    dump: dict | None,
    slots: list[dict],
    now: float,
    node: dict | None = None,
    kills: dict[int, dict] | None = None,
) -> RankView:
    """One rank as of `now` (or as of its dump): `latest` is its heartbeat from read_heartbeats,
    `node` its host's node observation, `kills` nestkit's kill records by pid."""
    beat = (dump or {}).get("heartbeat") or latest
    if beat is None:
        return RankView(rank, MISSING)
    last = latest or beat
    status = last.get("status", RUNNING)
    pid = beat.get("pid")
    same_host = beat.get("host") == socket.gethostname()
    seen = ((node or {}).get("ranks") or {}).get(str(rank))
    if seen is not None and seen.get("pid") != pid:
        seen = None  # the monitor watched another process under this rank (an earlier run)
    node_fresh = node is not None and (node.get("ended") or now - node.get("written_at", 0) < stale_after(1.0))

    # is the process there, and in what state (from here when it runs on this host)
    if same_host and pid is not None:  # every heartbeat names its pid; without one nothing can be told
        alive = process_alive(pid, beat.get("pid_start"))
        state = process_state(pid) if alive else None
        if state in ZOMBIE_STATES:
            alive, state = False, state
    elif seen is not None and node_fresh:
        alive, state = seen.get("alive"), seen.get("state")
    else:
        alive, state = None, None
    written_at = last.get("written_at", 0.0)
    gone_at = (seen or {}).get("gone_at") if alive is False else None
    killed = (kills or {}).get(pid) if alive is False and pid is not None else None
    if killed is not None and killed.get("time", 0) < beat.get("started_at", 0):
        killed = None  # a kill of an earlier process with the same pid

    condition = None
    if dump is None and status == RUNNING:
        if killed is not None:
            condition = KILLED
        elif alive is False:
            condition = DEAD
        elif alive and state in STOPPED_STATES:
            condition = FROZEN
        elif alive and now - written_at > stale_after(beat.get("interval_s", 1.0)):
            condition = UNRESPONSIVE

    # the moment the view describes: the dump; now for a live process (a frozen or unresponsive
    # one cannot have moved on since its last heartbeat); else when it was last heard of
    if dump is not None:
        ref = beat["written_at"]
    elif status == RUNNING and (
        alive or (alive is None and now - written_at < stale_after(beat.get("interval_s", 1.0)))
    ):
        ref = now
    elif condition == KILLED and killed is not None:  # KILLED is set only with a kill record
        ref = killed.get("time", written_at)
    elif condition == DEAD and gone_at:
        ref = gone_at
    else:
        ref = written_at
    lag = max(0.0, ref - beat["written_at"])
    age = round(max(0.0, (now if dump is None else ref) - written_at), 1)
    threads = stacks_of((dump or {}).get("threads"))
    spy = (seen or {}).get("py_spy") or {}
    spy_stacks = parse_py_spy(spy.get("text") or "") if spy else []
    spy_main = next((s for s in spy_stacks if s.name == "MainThread"), spy_stacks[0] if spy_stacks else None)
    return RankView(
        rank=rank,
        host=beat.get("host"),
        pid=pid,
        status=status,
        alive=alive,
        phase=beat.get("phase"),
        phase_seconds=round(ref - beat["phase_since"], 1),
        idle_seconds=round(beat.get("progress_age_s", 0.0) + lag, 1),
        timeout=beat.get("stall_timeout_s"),
        timeout_rule=beat.get("timeout_rule"),
        step=beat.get("step"),
        steps_done=beat.get("steps_done"),
        position=beat.get("position"),
        waiting_for=beat.get("waiting_for"),
        in_flight=beat.get("in_flight") or [],
        data_end=beat.get("data_end"),
        collective=beat.get("collective"),
        step_time=beat.get("step_time"),
        frame=key_frame(threads) or (key_frame([spy_main]) if spy_main else None),
        blocking_call=blocking_call(threads),
        error=last.get("error"),
        dumped=dump is not None,
        ended_at=written_at if status != RUNNING else None,
        loaders=loader_views(
            slots,
            (dump or {}).get("workers") or [],
            ref,
            # a rank that runs: its workers' absence means something; after its end, or at its dump: as recorded
            pid if status == RUNNING and condition is None and dump is None else None,
            same_host,
            (node or {}).get("workers") or {},
        ),
        written_at=written_at,
        heartbeat_age_s=age,
        stale=status == RUNNING and age > stale_after(beat.get("interval_s", 1.0)),
        condition=condition,
        process_state=state,
        stopped_since=(seen or {}).get("stopped_since") if condition == FROZEN else None,
        gone_at=gone_at,
        cpu_busy=(seen or {}).get("cpu_busy"),
        killed=killed,
        spy_frame=key_frame([spy_main]) if spy_main else None,
        spy_gil=bool(spy_main and spy_main.current),
    )
