"""One report from every rank's heartbeat, worker status and stall dump, ending with a verdict.

`build_report(run_dir)` reads the run folder only (heartbeat/, stall/<N>/), so it works on a live
run, on a job the watchdog took down, and on a copy of the folder on a laptop. It is what the
reporting rank writes to stall/<N>/report.{json,txt} and what `nestkit stacks` shows.

Verdicts (`Verdict.kind`), in the order they are tried when a rank is stuck:
* data_stall          -- a rank waits for its DataLoader; names the worker, file, cut, manifest:line
* collective_mismatch -- a rank left the training loop (finished, data ended, failed, died) or sits
                         in another step's collective while its peers wait in all-reduce
* compute_stall       -- a rank is stuck in forward/backward/optimizer/callbacks, its peers wait
* stuck               -- a rank is stuck in start-up, validation or checkpointing
* collective_stall    -- every rank waits in the same all-reduce (backend or network)
and when none is: slow (progressing, but a phase or the step times are near the limit), healthy,
finished, failed, stopped (heartbeats stopped without a recorded stall).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from nestkit.core.errors import NestkitError
from nestkit.core.procs import process_alive
from nestkit.monitor.stack_dump import Frame, ThreadStack, key_frame
from nestkit.runfolder.heartbeats import FAILED, FINISHED, RUNNING, heartbeat_dir, read_heartbeats
from nestkit.runfolder.incidents import DUMP, Incident, incident_numbers
from nestkit.runfolder.worker_status import read_slots

LOOP_PHASES = ("fetch", "forward", "backward", "collective", "optimizer", "step_end")
COMPUTE_PHASES = ("forward", "backward", "optimizer", "step_end")


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

    @property
    def where(self) -> str:
        manifest = os.path.basename(self.manifest) if self.manifest else "?"
        return f"{self.path} (cut {self.cut_id}, {manifest}:{self.line})"


@dataclass
class RankView:
    rank: int
    status: str  # running, finished, failed, aborted, missing
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
    frame: str | None = None  # where its main thread is (from a stall dump)
    blocking_call: str | None = None  # a torch.distributed call its main thread is in (from a stall dump)
    error: str | None = None
    ended_at: float | None = None  # wall time of its last heartbeat, once it stopped
    dumped: bool = False
    loaders: list[LoaderView] = field(default_factory=list)

    @property
    def stalled(self) -> bool:
        return self.timeout is not None and self.idle_seconds is not None and self.idle_seconds >= self.timeout

    @property
    def died(self) -> bool:
        """Its process is gone without a word. A rank that dumped for the incident is described as
        it was then, whatever happened to it afterwards (the launcher may have killed it)."""
        return self.alive is False and self.status == RUNNING and not self.dumped

    @property
    def left_loop(self) -> bool:
        """Out of the training loop: its peers' next collective will never be matched by it."""
        if self.status in (FINISHED, FAILED, "missing") or self.died:
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
        return named.get(op) or op or self.blocking_call or "a collective"

    def doing(self) -> str:
        """`waiting in all-reduce at step 4`, `in forward at step 4`, ..."""
        if self.in_collective:
            return f"waiting in {self.collective_op} at step {self.step}"
        if self.phase == "fetch":
            return f"waiting for its DataLoader at step {self.step}"
        return f"in {self.phase} at step {self.step}"


@dataclass
class Verdict:
    kind: str
    sentence: str
    culprits: list[int] = field(default_factory=list)


@dataclass
class StallReport:
    run_dir: str
    incident: int | None
    requested_by: int | None
    reason: str
    time: float
    world_size: int
    ranks: list[RankView]
    verdict: Verdict

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# Reading the run folder


def _read_json(path: Path) -> dict | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _stacks(records: list[dict] | None) -> list[ThreadStack]:
    return [
        ThreadStack(r["name"], r["ident"], [Frame(**f) for f in r["frames"]], r.get("current", False))
        for r in records or []
    ]


def _blocking_call(stacks: list[ThreadStack]) -> str | None:
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


def _loader_views(slots: list[dict], workers: list[dict], ref_time: float) -> list[LoaderView]:
    by_pid = {w["pid"]: w for w in workers}
    views = []
    for slot in slots:
        worker = by_pid.get(slot.get("pid"), {})
        since = slot.get("since")
        views.append(
            LoaderView(
                name=slot.get("slot", "?"),
                pid=slot.get("pid"),
                state=slot.get("state"),
                seconds=round(max(0.0, ref_time - since), 1) if since else None,
                cut_id=slot.get("cut_id"),
                path=slot.get("path"),
                manifest=slot.get("manifest"),
                line=slot.get("line"),
                batch=slot.get("batch"),
                frame=key_frame(_stacks(worker.get("frames"))),
                stack_file=worker.get("stack_file"),
            )
        )
    return views


def _rank_view(rank: int, latest: dict | None, dump: dict | None, run_dir: Path, now: float) -> RankView:
    beat = (dump or {}).get("heartbeat") or latest
    if beat is None:
        return RankView(rank, "missing")
    status = (latest or beat).get("status", RUNNING)
    same_host = beat.get("host") == socket.gethostname()
    alive = process_alive(beat["pid"], beat.get("pid_start")) if same_host else None
    fresh = now - (latest or beat).get("written_at", 0) < 3 * beat.get("interval_s", 1.0) + 2
    # the moment this view describes: the dump, or now for a live rank, or its last heartbeat
    if dump is not None:
        ref = beat["written_at"]
    elif fresh and status == RUNNING:
        ref = now
    else:
        ref = beat["written_at"]
    lag = ref - beat["written_at"]
    slots = (dump or {}).get("slots") if dump else read_slots(heartbeat_dir(run_dir), rank)
    return RankView(
        rank=rank,
        host=beat.get("host"),
        pid=beat.get("pid"),
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
        frame=key_frame(_stacks((dump or {}).get("threads"))),
        blocking_call=_blocking_call(_stacks((dump or {}).get("threads"))),
        error=(latest or beat).get("error"),
        dumped=dump is not None,
        ended_at=(latest or beat).get("written_at") if status != RUNNING else None,
        loaders=_loader_views(slots or [], (dump or {}).get("workers") or [], ref),
    )


def build_report(run_dir: str | os.PathLike, incident: int | None = None) -> StallReport:
    """The report of incident `incident` (default: the latest one, if any) or of the run as it is."""
    run_dir = Path(run_dir)
    beats = read_heartbeats(run_dir)
    numbers = incident_numbers(run_dir)
    note = ""
    if incident is None and numbers:
        if beats and all(b.get("status") == FINISHED for b in beats.values()):
            # the run went on after its stall(s) (watchdog.action=wait) and finished: show the end
            note = f"; earlier incident(s) {', '.join(map(str, numbers))}: see --incident N"
        else:
            incident = numbers[-1]
    elif incident is not None and incident not in numbers:
        raise NestkitError(f"incident {incident}: not in {run_dir / 'stall'} (expected one of {numbers or 'none'})")
    if not beats and incident is None:
        raise NestkitError(
            f"run {run_dir}: no heartbeats (expected {heartbeat_dir(run_dir)}/rank<R>.json). "
            "Is this a nestkit run folder (exp_manager.exp_dir/name), and did training start?"
        )
    request, dumps = {}, {}
    if incident is not None:
        inc = Incident(run_dir, incident)
        request = inc.request(wait_s=0) or {}
        for rank in inc.dumped_ranks():
            dump = _read_json(inc.rank_dir(rank) / DUMP)
            if dump is not None:
                dumps[rank] = dump
    world = max(
        [b.get("world_size", 1) for b in beats.values()]
        + [d["heartbeat"].get("world_size", 1) for d in dumps.values()]
        + [1]
    )
    now = time.time()
    ranks = [_rank_view(r, beats.get(r), dumps.get(r), run_dir, now) for r in range(world)]
    return StallReport(
        run_dir=str(run_dir),
        incident=incident,
        requested_by=request.get("rank"),
        reason=(request.get("reason") or "no stall recorded") + note,
        time=request.get("time", now),
        world_size=world,
        ranks=ranks,
        verdict=classify(ranks, request.get("kind")),
    )


# ------------------------------------------------------------------------------------------------
# Verdicts


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


def _culprit_loader(rank: RankView) -> LoaderView | None:
    """The loading process that holds up the batch the rank waits for."""
    wanted = rank.waiting_for
    busy = [
        w for w in rank.loaders if w.state in ("loading", "building", "augmenting") and not w.name.startswith("val-")
    ]
    if wanted is not None:
        for w in busy:
            if w.batch and (w.batch.get("epoch"), w.batch.get("batch")) == (wanted["epoch"], wanted["batch"]):
                return w
    return max(busy, key=lambda w: w.seconds or 0.0, default=None)


def data_in_motion(run_dir: str | os.PathLike, within_s: float) -> str | None:
    """Why the run is slow rather than stalled, or None.

    A rank that waits for a batch whose loader started or finished a read less than `within_s` ago
    is on slow storage, not stuck, and its peers waiting for it in a collective are not stuck
    either. Read from the run folder, so every rank's watchdog sees its peers' data too.
    """
    now = time.time()
    for rank, beat in read_heartbeats(run_dir).items():
        if beat.get("status") != RUNNING or beat.get("phase") != "fetch":
            continue
        view = _rank_view(rank, beat, None, Path(run_dir), now)
        loader = _culprit_loader(view)
        if loader is None or loader.seconds is None or loader.seconds >= within_s:
            continue
        batch = f"batch {view.waiting_for['batch']}" if view.waiting_for else "its next batch"
        doing = f"started reading {loader.where}" if loader.state == "loading" else f"has been {loader.state}"
        who = "it" if loader.name == "main" else loader.name.replace("worker", "worker ")
        return f"rank {rank} waits {view.phase_seconds:.0f} s for {batch}, and {who} {doing} {loader.seconds:.1f} s ago"
    return None


def _data_stall(fetching: list[RankView], waiting: list[RankView]) -> Verdict:
    """Every rank that waits for its DataLoader, longest wait first (workers of several ranks can
    hang on the same shared cause: a mount, a lock, a library)."""
    ranks = sorted(fetching, key=lambda r: -(r.idle_seconds or 0.0))
    what = "; ".join(_data_wait(rank) for rank in ranks)
    return Verdict("data_stall", f"data stall: {what}{_waiting_clause(waiting)}", [r.rank for r in ranks])


def _data_wait(rank: RankView) -> str:
    wanted = rank.waiting_for
    batch = f"batch {wanted['batch']}" if wanted else "its next batch"
    loader = _culprit_loader(rank)
    who = f"rank {rank.rank}" + (
        "" if loader is None or loader.name == "main" else f", {loader.name.replace('worker', 'worker ')}"
    )
    held = f" for {loader.seconds:.0f} s" if loader is not None and loader.seconds is not None else ""
    if loader is not None and loader.state == "loading":
        return f"{who} blocked reading {loader.where} in {batch}{held}"
    if loader is not None:
        return f"{who} stuck {loader.state} {batch}{held}" + (f" at {loader.frame}" if loader.frame else "")
    return (
        f"rank {rank.rank} waiting {rank.phase_seconds:.0f} s for {batch} from its DataLoader, and no worker "
        "is reading a file (dead or deadlocked workers? see their stacks)"
    )


def _first_line(error: str | None, limit: int = 300) -> str:
    """The gist of an error for a one-line verdict (gloo errors carry a stack of their own)."""
    line = next((part.strip() for part in (error or "").splitlines() if part.strip()), "no error recorded")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure(rank: RankView, first: bool = False) -> str:
    return f"rank {rank.rank} failed{' first,' if first else ''} at step {rank.step} ({_first_line(rank.error)})"


def _why_left(rank: RankView) -> str:
    if rank.status == "missing":
        return f"rank {rank.rank} never wrote a heartbeat"
    if rank.status == FAILED:
        return _failure(rank)
    if rank.died:
        return f"rank {rank.rank} died in {rank.phase} at step {rank.step} (process {rank.pid} is gone)"
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


def classify(ranks: list[RankView], request_kind: str | None = None) -> Verdict:
    present = [r for r in ranks if r.status != "missing"]
    active = [r for r in ranks if r.status in (RUNNING, "aborted") and not r.left_loop]
    stall_declared = request_kind in ("stall", "data_timeout")
    if not stall_declared and not any(r.stalled for r in active):
        return _no_stall(ranks, present, active)

    waiting = [r for r in active if r.in_collective]
    left = [r for r in ranks if r.left_loop]
    others = [r for r in active if not r.in_collective]
    fetching = [r for r in others if r.phase == "fetch" or (r.phase == "startup" and r.waiting_for)]
    if fetching:
        return _data_stall(fetching, waiting)
    if left and waiting:
        return Verdict(
            "collective_mismatch",
            "collective mismatch: "
            + "; ".join(_why_left(r) for r in left)
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
        steps = sorted({r.step for r in waiting})
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
            "collective mismatch: " + "; ".join(_why_left(r) for r in left),
            [r.rank for r in left],
        )
    return Verdict("slow", "slow but progressing: a stall was declared, but every rank has moved on since", [])


def _no_stall(ranks: list[RankView], present: list[RankView], active: list[RankView]) -> Verdict:
    if present and all(r.status == FINISHED for r in present) and len(present) == len(ranks):
        return Verdict(
            "finished",
            f"finished: all {len(ranks)} ranks completed (last step {max(r.steps_done or 0 for r in ranks)})",
        )
    # the first failure is the cause; a peer failing after it usually only lost its connection
    failed = sorted((r for r in ranks if r.status == FAILED), key=lambda r: r.ended_at or 0.0)
    if failed:
        first, *then = failed
        after = f"; then {'; '.join(_why_left(r) for r in then)}" if then else ""
        return Verdict("failed", f"failed: {_failure(first, first=bool(then))}{after}", [first.rank])
    gone = [r for r in ranks if r.died]
    if gone or any(r.status == "missing" for r in ranks):
        lost = gone + [r for r in ranks if r.status == "missing"]
        return Verdict(
            "stopped",
            "stopped: " + "; ".join(_why_left(r) for r in lost) + " (no stall was recorded: killed from outside?)",
            [r.rank for r in lost],
        )
    slow = []
    for r in active:
        if r.timeout and r.idle_seconds is not None and r.idle_seconds >= 0.5 * r.timeout:
            slow.append(f"rank {r.rank} {r.doing()} for {r.idle_seconds:.0f} s (stall limit {r.timeout:.0f} s)")
        st = r.step_time or {}
        if st.get("median") and st.get("p95") and st["p95"] > 3 * st["median"]:
            slow.append(f"rank {r.rank} steps take up to {st['p95']:.2f} s (median {st['median']:.2f} s)")
    if slow:
        return Verdict("slow", "slow but progressing: " + "; ".join(slow), [])
    steps = sorted({r.step for r in active})
    medians = [r.step_time.get("median") for r in active if r.step_time and r.step_time.get("median")]
    pace = f", median step {max(medians):.2f} s" if medians else ""
    return Verdict(
        "healthy",
        f"healthy: {len(active)} of {len(ranks)} ranks progressing at step "
        f"{', '.join(map(str, steps)) or '?'}{pace}; no stall",
    )


# ------------------------------------------------------------------------------------------------
# Plain text (report.txt; `nestkit stacks --format text`)


def _batch_name(batch: dict, position: dict | None) -> str:
    """`8` in the epoch of the rank's position, `1/0` (epoch/batch) in another."""
    same = position is not None and batch["epoch"] == position["epoch"]
    return str(batch["batch"]) if same else f"{batch['epoch']}/{batch['batch']}"


def render_text(report: StallReport) -> str:
    lines = [f"nestkit stall report: {report.run_dir}"]
    if report.incident is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.time))
        who = f" by rank {report.requested_by}" if report.requested_by is not None else ""
        lines.append(f"incident {report.incident}, declared{who} at {when}: {report.reason}")
    lines.append("")
    for r in report.ranks:
        if r.status == "missing":
            lines.append(f"rank {r.rank}: no heartbeat")
            continue
        pos = f"epoch {r.position['epoch']} batch {r.position['batch']}" if r.position else "no batch yet"
        lines.append(
            f"rank {r.rank} [{r.status}] pid {r.pid} on {r.host}: {r.phase} for {r.phase_seconds} s, step {r.step} ({pos}); "
            f"no progress for {r.idle_seconds} s (limit {r.timeout}: {r.timeout_rule})"
        )
        if r.waiting_for:
            cuts = ", ".join(
                f"{c['cut_id']} ({c['path']}, {c.get('manifest')}:{c.get('line')})" for c in r.waiting_for["cuts"]
            )
            lines.append(f"  waiting for epoch {r.waiting_for['epoch']} batch {r.waiting_for['batch']}: {cuts}")
        if r.in_flight:
            lines.append(
                "  in flight: " + ", ".join(f"batch {_batch_name(b, r.position)} ({b['state']})" for b in r.in_flight)
            )
        if r.data_end:
            after = r.data_end.get("after") or {}
            lines.append(
                f"  data ended after epoch {after.get('epoch')} batch {after.get('batch')} ({r.data_end.get('detail')})"
            )
        if r.collective and r.collective.get("round"):
            c = r.collective
            lines.append(f"  all-reduce round {c['round']}: {c['buckets_done']}/{c['buckets_launched']} buckets done")
        if r.frame:
            lines.append(f"  main thread at {r.frame}")
        if r.error and r.status == FAILED:
            lines.append(f"  error: {r.error}")
        for w in r.loaders:
            held = f" for {w.seconds} s" if w.seconds is not None else ""
            what = f"reading {w.where}" if w.state == "loading" else (w.state or "?")
            batch = f" batch {w.batch['batch']}" if w.batch else ""
            lines.append(f"  {w.name} pid {w.pid}: {what}{batch}{held}" + (f" at {w.frame}" if w.frame else ""))
    lines += ["", f"verdict: {report.verdict.sentence}"]
    return "\n".join(lines) + "\n"
