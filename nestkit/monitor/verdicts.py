"""The verdict rules: from every rank's view (see `views`), what is wrong and which rank causes it.

Tried in this order when a rank is stuck:
* frozen / not_scheduling -- a rank's process is stopped, or alive but running no Python (a C call
                         holding the GIL): seen from outside, so its stale heartbeat is not taken
                         for what it does now
* data_stall          -- a rank waits for its DataLoader; names the worker, file, cut, manifest:line
* collective_mismatch -- a rank left the training loop (finished, data ended, failed, died, was
                         killed) or sits in another step's collective while its peers wait
* compute_stall       -- a rank is stuck in forward/backward/optimizer/callbacks, its peers wait
* stuck               -- a rank is stuck in start-up, validation or checkpointing
* collective_stall    -- every rank waits in the same all-reduce (backend or network)
and when none is: slow (progressing, but near a limit), healthy, finished, died / failed (the
first rank to go is the cause: a peer that fails after it usually only lost its connection),
stopped (ranks missing without a recorded stall).

Pure functions of the views: no file is read here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from nestkit.monitor.views import DEAD, FROZEN, KILLED, MISSING, UNRESPONSIVE, LoaderView, RankView
from nestkit.runfolder.heartbeats import ABORTED, FAILED, FINISHED, RUNNING

LOOP_PHASES = ("fetch", "forward", "backward", "collective", "optimizer", "step_end")
COMPUTE_PHASES = ("forward", "backward", "optimizer", "step_end")
BUSY_LOADER_STATES = ("loading", "building", "augmenting")
ERROR_GIST_LIMIT = 300  # characters of an error kept in a one-line verdict


@dataclass
class Verdict:
    kind: str
    sentence: str
    culprits: list[int] = field(default_factory=list)


def _ranks(views: list[RankView]) -> str:
    numbers = [str(v.rank) for v in views]
    return ("rank " if len(numbers) == 1 else "ranks ") + ", ".join(numbers)


def _waiting(waiting: list[RankView], verb: str = "waiting") -> str:
    """`ranks 0, 2 waiting in all-reduce at step 70` (one clause per distinct collective and step)."""
    groups: dict[tuple[str, int | None], list[RankView]] = {}
    for v in waiting:
        groups.setdefault((v.collective_op, v.step), []).append(v)
    return "; ".join(f"{_ranks(g)} {verb} in {op} at step {step}" for (op, step), g in groups.items())


def _waiting_clause(waiting: list[RankView]) -> str:
    return f"; {_waiting(waiting)}" if waiting else ""


# ------------------------------------------------------------------------------------------------
# Loading processes


def culprit_loader(rank: RankView) -> LoaderView | None:
    """The loading process that holds up the batch the rank waits for."""
    wanted = rank.waiting_for
    busy = [w for w in rank.loaders if w.state in BUSY_LOADER_STATES and not w.name.startswith("val-")]
    if wanted is not None:
        for w in busy:
            if w.batch and (w.batch.get("epoch"), w.batch.get("batch")) == (wanted["epoch"], wanted["batch"]):
                return w
    return max(busy, key=lambda w: w.seconds or 0.0, default=None)


def slow_data(view: RankView, within_s: float) -> str | None:
    """Why a rank waiting for its batch is on slow storage rather than stuck: its loader started or
    finished a read less than `within_s` ago. None when that is not so."""
    loader = culprit_loader(view)
    if loader is None or loader.seconds is None or loader.seconds >= within_s or loader.process:
        return None
    batch = f"batch {view.waiting_for['batch']}" if view.waiting_for else "its next batch"
    doing = f"started reading {loader.where}" if loader.state == "loading" else f"has been {loader.state}"
    who = "it" if loader.name == "main" else loader.label
    return (
        f"rank {view.rank} waits {view.phase_seconds:.0f} s for {batch}, and {who} {doing} {loader.seconds:.1f} s ago"
    )


def _data_wait(rank: RankView) -> str:
    wanted = rank.waiting_for
    batch = f"batch {wanted['batch']}" if wanted else "its next batch"
    loader = culprit_loader(rank)
    who = f"rank {rank.rank}" + ("" if loader is None or loader.name == "main" else f", {loader.label}")
    held = f" for {loader.seconds:.0f} s" if loader is not None and loader.seconds is not None else ""
    if loader is not None and loader.process in ("gone", "zombie"):
        return f"{who} died (process {loader.pid} is gone) while reading {loader.where} in {batch}"
    if loader is not None and loader.process == "stopped":
        return f"{who} frozen (process {loader.pid} stopped) while reading {loader.where} in {batch}{held}"
    if loader is not None and loader.state == "loading":
        return f"{who} blocked reading {loader.where} in {batch}{held}"
    if loader is not None:
        return f"{who} stuck {loader.state} {batch}{held}" + (f" at {loader.frame}" if loader.frame else "")
    return (
        f"rank {rank.rank} waiting {rank.phase_seconds:.0f} s for {batch} from its DataLoader, and no worker "
        "is reading a file (dead or deadlocked workers? see their stacks)"
    )


def _data_stall(fetching: list[RankView], waiting: list[RankView]) -> Verdict:
    """Every rank that waits for its DataLoader, longest wait first (workers of several ranks can
    hang on the same shared cause: a mount, a lock, a library)."""
    ranks = sorted(fetching, key=lambda r: -(r.idle_seconds or 0.0))
    what = "; ".join(_data_wait(rank) for rank in ranks)
    return Verdict("data_stall", f"data stall: {what}{_waiting_clause(waiting)}", [r.rank for r in ranks])


# ------------------------------------------------------------------------------------------------
# Errors, deaths, processes seen from outside

_WORKER_RAISED = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)")
_WORKER_PIDS = re.compile(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)")
_KILLED_BY = re.compile(r"killed by signal: [\w ]+\.?")
_ADVICE = re.compile(r"\.\s+(?=(?:This is typically|Check the|If you|Please|GLHF))")  # torch's advice after the error
_DISK_FULL = ("No space left on device", "ENOSPC", "Errno 28", "Disk quota exceeded", "EDQUOT")


def error_gist(error: str | None, limit: int = ERROR_GIST_LIMIT) -> str:
    """The gist of an error for a one-line verdict: its first sentence (gloo and torch append advice
    and stacks of their own), or -- for an exception raised in a DataLoader worker -- the worker and
    its own exception line; with the signal that killed a worker, and what a full disk means."""
    lines = [part.strip() for part in (error or "").splitlines() if part.strip()]
    if not lines:
        return "no error recorded"
    text = _ADVICE.split(lines[0], maxsplit=1)[0]
    raised = _WORKER_RAISED.search(text)
    if raised and len(lines) > 1:
        text = f"DataLoader worker {raised.group(2)} raised {lines[-1]}"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    killed = _KILLED_BY.search(error or "")
    if killed and killed.group(0) not in text:
        text += f" ({killed.group(0).rstrip('.')})"
    if any(marker in (error or "") for marker in _DISK_FULL):
        text += " -- the file system is full"
    return text


def _dead_worker_clause(rank: RankView) -> str:
    """What the DataLoader worker named in the rank's error was doing (its status slot outlives it)."""
    error = rank.error or ""
    pids = {int(p) for found in _WORKER_PIDS.findall(error) for p in re.findall(r"\d+", found)}
    raised = _WORKER_RAISED.search(error)
    named = [w for w in rank.loaders if w.pid in pids or (raised and w.name == f"worker{raised.group(2)}")]
    killed = _KILLED_BY.search(error)
    clauses = []
    for w in named:
        if raised and not pids:
            ended = "when it raised"
        elif killed and "Killed" in killed.group(0):
            ended = (
                "when it was killed (SIGKILL: the kernel's OOM killer sends it, see `dmesg`; or a kill from outside)"
            )
        else:
            ended = "when it died"
        if w.state == "loading":
            what = f"was reading {w.where}" + (f" for batch {w.batch['batch']}" if w.batch else "")
        elif w.state in BUSY_LOADER_STATES:
            what = f"was {w.state} batch {w.batch['batch']}" if w.batch else f"was {w.state}"
        else:
            what = "was idle, between batches"
        clauses.append(f"its {w.label} (pid {w.pid}) {what} {ended}")
    return "; " + "; ".join(clauses) if clauses else ""


def _failure(rank: RankView, first: bool = False) -> str:
    return (
        f"rank {rank.rank} failed{' first,' if first else ''} at step {rank.step} ({error_gist(rank.error)})"
        + _dead_worker_clause(rank)
    )


def _death(rank: RankView) -> str:
    last = f", last heard of at {_clock(rank.written_at)}" if rank.written_at else ""
    return (
        f"rank {rank.rank} died in {rank.phase} at step {rank.step} (process {rank.pid} is gone without a word{last}: "
        "killed from outside, by the OOM killer, or a crash in native code)"
    )


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _killed(rank: RankView) -> str:
    kill = rank.killed or {}
    who = f"rank {kill.get('by_rank')}'s watchdog" if kill.get("by_rank") is not None else "nestkit"
    return f"rank {rank.rank} was killed by {who} ({kill.get('reason') or 'taking the job down'})"


def _frozen(rank: RankView) -> str:
    stack = f"; its last stack: {rank.spy_frame}" if rank.spy_frame else ""
    return (
        f"rank {rank.rank} frozen (process {rank.pid} stopped, state {rank.process_state}) since step {rank.step}, "
        f"in {rank.phase}, for {rank.heartbeat_age_s:.0f} s{stack}"
    )


def _not_scheduling(rank: RankView) -> str:
    running = rank.process_state == "R" or rank.cpu_busy
    how = "runs in C code" if running else f"waits in C code (state {rank.process_state})"
    if rank.spy_frame:
        where = f": {rank.spy_frame}" + (" holding the GIL" if rank.spy_gil else "")
    else:
        where = " (install py-spy to see where)"
    return (
        f"rank {rank.rank} not scheduling Python (heartbeat stale for {rank.heartbeat_age_s:.0f} s while its "
        f"process {how}{where}) at step {rank.step}, in {rank.phase}"
    )


def _outside(rank: RankView) -> str:
    return _frozen(rank) if rank.condition == FROZEN else _not_scheduling(rank)


def _why_left(rank: RankView) -> str:
    if rank.status == MISSING:
        return f"rank {rank.rank} never wrote a heartbeat"
    if rank.status == FAILED:
        return _failure(rank)
    if rank.condition == KILLED:
        return _killed(rank)
    if rank.condition == DEAD:
        return _death(rank)
    if rank.data_end is not None:
        after = rank.data_end.get("after") or {}
        detail = f", {rank.data_end['detail']}" if rank.data_end.get("detail") else ""
        end = f"its data ended after batch {after.get('batch')} (epoch {after.get('epoch')}{detail})"
        state = (
            "finished"
            if rank.status == FINISHED
            else f"now in {rank.phase}" + (f", inside {rank.blocking_call}" if rank.blocking_call else "")
        )
        return f"rank {rank.rank} left the training loop after {rank.steps_done} steps: {end}; {state}"
    return f"rank {rank.rank} finished after {rank.steps_done} steps"


def _ended_at(rank: RankView) -> float:
    """When a rank left: its failure, or the last sign of life of a process that died."""
    if rank.condition == DEAD:
        return rank.gone_at or rank.written_at or 0.0
    return rank.ended_at or 0.0


# ------------------------------------------------------------------------------------------------
# The verdict


def classify(ranks: list[RankView], request_kind: str | None = None) -> Verdict:
    present = [r for r in ranks if r.status != MISSING]
    stall_declared = request_kind in ("stall", "data_timeout")
    seen_outside = [r for r in ranks if r.condition in (FROZEN, UNRESPONSIVE)]
    active = [
        r
        for r in ranks
        if r.status in (RUNNING, ABORTED) and not r.left_loop and r.condition not in (FROZEN, UNRESPONSIVE)
    ]
    waiting = [r for r in active if r.in_collective]
    # a process that runs no Python explains everything around it; its heartbeat is only where it stopped
    holding = [r for r in seen_outside if r.condition == FROZEN or stall_declared or r.stalled]
    if holding:
        kind = "frozen" if any(r.condition == FROZEN for r in holding) else "not_scheduling"
        return Verdict(
            kind,
            "; ".join(_outside(r) for r in holding) + _waiting_clause(waiting),
            [r.rank for r in holding],
        )
    if not stall_declared and not any(r.stalled for r in active):
        return _no_stall(ranks, present, active, seen_outside)

    left = [r for r in ranks if r.left_loop]
    others = [r for r in active if not r.in_collective]
    fetching = [r for r in others if r.phase == "fetch" or (r.phase == "startup" and r.waiting_for)]
    if fetching:
        return _data_stall(fetching, waiting)
    if left and waiting:
        return Verdict(
            "collective_mismatch",
            "collective mismatch: "
            + "; ".join(_why_left(r) for r in sorted(left, key=_ended_at))
            + f" -- while {_waiting(waiting, 'waits' if len(waiting) == 1 else 'wait')}",
            [r.rank for r in left],
        )
    if others:
        rank = max(others, key=lambda r: r.idle_seconds or 0.0)
        kind = "compute_stall" if rank.phase in COMPUTE_PHASES else "stuck"
        where = f" at {rank.frame}" if rank.frame else ""
        return Verdict(
            kind,
            f"{'compute stall' if kind == 'compute_stall' else 'stuck'}: rank {rank.rank} stuck in "
            f"{rank.phase} at step {rank.step} for {rank.phase_seconds:.0f} s{where}{_waiting_clause(waiting)}",
            [rank.rank],
        )
    if waiting:
        steps = sorted({r.step for r in waiting if r.step is not None})  # None only for a missing rank
        if len(steps) > 1:
            behind = [r for r in waiting if r.step == steps[0]]
            return Verdict(
                "collective_mismatch",
                "collective mismatch: ranks wait in collectives of different steps (" + _waiting(waiting) + ")",
                [r.rank for r in behind],
            )
        return Verdict(
            "collective_stall",
            f"collective stall: {_waiting(waiting)}, and no rank is missing: the backend "
            "or the network does not complete it (see each rank's dump.json, 'collective')",
            [r.rank for r in waiting],
        )
    if left:
        return Verdict(
            "collective_mismatch",
            "collective mismatch: " + "; ".join(_why_left(r) for r in sorted(left, key=_ended_at)),
            [r.rank for r in left],
        )
    return Verdict("slow", "slow but progressing: a stall was declared, but every rank has moved on since", [])


def _no_stall(
    ranks: list[RankView], present: list[RankView], active: list[RankView], seen_outside: list[RankView]
) -> Verdict:
    if present and all(r.status == FINISHED for r in present) and len(present) == len(ranks):
        return Verdict(
            "finished",
            f"finished: all {len(ranks)} ranks completed (last step {max(r.steps_done or 0 for r in ranks)})",
        )
    # the first rank to go is the cause; a peer failing after it usually only lost its connection
    ended = sorted((r for r in ranks if r.status == FAILED or r.condition == DEAD), key=_ended_at)
    if ended:
        first, *then = ended
        after = f"; then {'; '.join(_why_left(r) for r in then)}" if then else ""
        if first.condition == DEAD:
            return Verdict("died", f"died: {_death(first)}{after}", [first.rank])
        return Verdict("failed", f"failed: {_failure(first, first=bool(then))}{after}", [first.rank])
    lost = [r for r in ranks if r.condition == KILLED or r.status == MISSING]
    if lost:
        return Verdict(
            "stopped",
            "stopped: " + "; ".join(_why_left(r) for r in lost) + " (no stall was recorded)",
            [r.rank for r in lost],
        )
    slow = [
        f"rank {r.rank} has run no Python for {r.heartbeat_age_s:.0f} s (heartbeat stale; stall limit "
        f"{r.timeout or 0:.0f} s)"
        for r in seen_outside
    ]
    for r in active:
        if r.stale:
            slow.append(
                f"rank {r.rank}'s heartbeat is {r.heartbeat_age_s:.0f} s old (its process cannot be seen from here)"
            )
        elif r.timeout and r.idle_seconds is not None and r.idle_seconds >= 0.5 * r.timeout:
            slow.append(f"rank {r.rank} {r.doing()} for {r.idle_seconds:.0f} s (stall limit {r.timeout:.0f} s)")
        st = r.step_time or {}
        if st.get("median") and st.get("p95") and st["p95"] > 3 * st["median"]:
            slow.append(f"rank {r.rank} steps take up to {st['p95']:.2f} s (median {st['median']:.2f} s)")
    if slow:
        return Verdict("slow", "slow but progressing: " + "; ".join(slow), [])
    steps = sorted({r.step for r in active if r.step is not None})  # None only for a missing rank
    medians = [median for r in active if r.step_time and (median := r.step_time.get("median"))]
    pace = f", median step {max(medians):.2f} s" if medians else ""
    return Verdict(
        "healthy",
        f"healthy: {len(active)} of {len(ranks)} ranks progressing at step "
        f"{', '.join(map(str, steps)) or '?'}{pace}; no stall",
    )
