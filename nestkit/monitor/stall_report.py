"""One report from every rank's heartbeat, worker status, node observations and stall dump, ending
with a verdict.

`build_report(run_dir)` reads the run folder only (heartbeat/, monitor/, stall/<N>/), so it works
on a live run, on a job the watchdog took down, and on a copy of the folder on a laptop. It is what
the reporting rank writes to stall/<N>/report.{json,txt} and what `nestkit stacks` shows. An
incident whose report was written is shown as the job saw it then (processes were alive to be
looked at), followed by what nestkit did afterwards (the processes it killed).

Three parts: `views` (each rank and loading process as the run folder describes it), `verdicts`
(the rules) and `report_text` (plain text).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nestkit.core.errors import NestkitError
from nestkit.monitor.report_text import render_text
from nestkit.monitor.verdicts import Verdict, classify, slow_data
from nestkit.monitor.views import LoaderView, RankView, rank_view
from nestkit.runfolder.heartbeats import FINISHED, RUNNING, heartbeat_dir, read_heartbeats
from nestkit.runfolder.incidents import DUMP, REPORT_JSON, Incident, incident_numbers, read_kills
from nestkit.runfolder.nodes import read_observations
from nestkit.runfolder.records import read_json
from nestkit.runfolder.worker_status import read_slots

__all__ = ["StallReport", "build_report", "data_in_motion", "render_text"]


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
    afterwards: list[str] = field(default_factory=list)  # what nestkit did after the report (kills)

    def as_dict(self) -> dict:
        return asdict(self)


def _from_dict(data: dict) -> StallReport | None:
    """A saved report.json as a StallReport (None when it was written by another version)."""
    try:
        ranks = []
        for r in data["ranks"]:
            loaders = [LoaderView(**w) for w in r.get("loaders") or []]
            known = {f.name for f in dataclasses.fields(RankView)}
            ranks.append(RankView(**{k: v for k, v in r.items() if k in known and k != "loaders"}, loaders=loaders))
        fields = {k: data[k] for k in ("run_dir", "incident", "requested_by", "reason", "time", "world_size")}
        return StallReport(**fields, ranks=ranks, verdict=Verdict(**data["verdict"]))
    except (KeyError, TypeError):
        return None


def _kills_after(run_dir: Path, incident: int) -> list[str]:
    """What nestkit killed after the report: each rank by name and reason, the workers in one line."""
    lines: list[str] = []
    workers: dict[int | None, list[str]] = {}  # by the rank whose watchdog killed them
    for pid, kill in sorted(read_kills(run_dir).items()):
        if kill.get("incident") != incident:
            continue
        if kill.get("worker") is None:
            lines.append(
                f"rank {kill.get('by_rank')}'s watchdog killed rank {kill['rank']} (pid {pid}): {kill.get('reason')}"
            )
        else:
            workers.setdefault(kill.get("by_rank"), []).append(f"{kill['rank']}/{kill['worker']} (pid {pid})")
    for by_rank, killed in sorted(workers.items(), key=lambda item: str(item[0])):
        lines.append(
            f"rank {by_rank}'s watchdog killed DataLoader workers (rank/worker) {', '.join(killed)} as the job ended"
        )
    return lines


def _saved_dumps(run_dir: Path, incident: Incident) -> dict[int, dict]:
    dumps = {}
    for rank in incident.dumped_ranks():
        dump = read_json(incident.rank_dir(rank) / DUMP)
        if dump is not None:
            dumps[rank] = dump
    return dumps


def build_report(
    run_dir: str | os.PathLike,
    incident: int | None = None,
    own_dumps: dict[int, dict] | None = None,
    live: bool = False,
) -> StallReport:
    """The report of incident `incident` (default: the latest one, if any) or of the run as it is
    (`live`: whatever incidents there were). `own_dumps` are dumps held in memory (the reporting
    rank's own, when the disk refused it)."""
    run_dir = Path(run_dir)
    beats = read_heartbeats(run_dir)
    numbers = incident_numbers(run_dir)
    note = ""
    if incident is None and numbers and not live:
        if beats and all(b.get("status") == FINISHED for b in beats.values()):
            # the run went on after its stall(s) (watchdog.action=wait) and finished: show the end
            note = f"; earlier incident(s) {', '.join(map(str, numbers))}: see --incident N"
        else:
            incident = numbers[-1]
    elif incident is not None and incident not in numbers and not own_dumps:
        raise NestkitError(f"incident {incident}: not in {run_dir / 'stall'} (expected one of {numbers or 'none'})")
    if incident is not None and own_dumps is None:
        saved = read_json(Incident(run_dir, incident).path / REPORT_JSON)
        report = _from_dict(saved) if saved is not None else None
        if report is not None:
            report.afterwards = _kills_after(run_dir, incident)
            return report
    if not beats and incident is None:
        raise NestkitError(
            f"run {run_dir}: no heartbeats (expected {heartbeat_dir(run_dir)}/rank<R>.json). "
            "Is this a nestkit run folder (exp_manager.exp_dir/name), and did training start?"
        )
    request, dumps = {}, {}
    if incident is not None:
        inc = Incident(run_dir, incident)
        request = inc.request_or_markers(wait_s=0) if inc.path.is_dir() else {}
        dumps = _saved_dumps(run_dir, inc)
    dumps.update(own_dumps or {})
    world = max(
        [b.get("world_size", 1) for b in beats.values()]
        + [d["heartbeat"].get("world_size", 1) for d in dumps.values()]
        + [1]
    )
    now = time.time()
    nodes = read_observations(run_dir)
    kills = read_kills(run_dir)
    ranks = []
    for r in range(world):
        dump, beat = dumps.get(r), beats.get(r)
        host = ((dump or {}).get("heartbeat") or beat or {}).get("host")
        slots = dump.get("slots") if dump else read_slots(heartbeat_dir(run_dir), r)
        ranks.append(rank_view(r, beat, dump, slots or [], now, nodes.get(host) if host is not None else None, kills))
    return StallReport(
        run_dir=str(run_dir),
        incident=incident,
        requested_by=request.get("rank"),
        reason=(request.get("reason") or "no stall recorded") + note,
        time=request.get("time", now),
        world_size=world,
        ranks=ranks,
        verdict=classify(ranks, request.get("kind")),
        afterwards=_kills_after(run_dir, incident) if incident is not None else [],
    )


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
        view = rank_view(rank, beat, None, read_slots(heartbeat_dir(run_dir), rank), now)
        if view.condition is not None:  # stopped, dead or running no Python: not slow storage
            continue
        moving = slow_data(view, within_s)
        if moving is not None:
            return moving
    return None
