"""Stall incidents: how the ranks of a job agree that "now" is the moment to dump their stacks.

A rank that declares a stall (its watchdog, or its DataLoader timeout) -- or `nestkit stacks
--dump` -- opens an incident: `<run_dir>/stall/<N>/request.json`. Every rank's watchdog polls for
new incidents and answers with a dump in `stall/<N>/rank<R>/` (`dump.json` last: it marks the dump
complete). The reporting rank then merges everything into `stall/<N>/report.json` and
`report.txt`. The run folder is the only channel, so this works across nodes on a shared file
system, and without any collective (the process group is what may be stuck).

A full disk must not stop a job from ending: the two facts every rank needs to act on -- "this
incident ends the job" and "the report is done" -- are also written as empty marker files
(`abort`, `reported`), which need no data block. A rank that cannot read a request still dumps,
and aborts when the `abort` marker is there.

Processes that nestkit kills itself (a peer that did not exit after the report, a rank's own
DataLoader workers on abort) are recorded in `stall/<N>/kills-rank<R>.json` (one file per killing
rank), so that a later report says "killed by rank 0's watchdog", not "died".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nestkit.runfolder.layout import stall_dir
from nestkit.runfolder.records import read_json, touch, warn_once, write_json_atomic

REQUEST = "request.json"
DUMP = "dump.json"
REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
ABORT_MARKER = "abort"  # empty: the incident ends the job (readable when request.json is not)
REPORTED_MARKER = "reported"  # empty: the reporter is done, with or without a report file
DUMP_REFUSED_MARKER = "dump-refused"  # empty, in rank<R>/: it dumped, but the disk refused the files
KILLS = "kills-rank{rank}.json"


def incident_numbers(run_dir: str | os.PathLike) -> list[int]:
    try:
        return sorted(int(p.name) for p in stall_dir(run_dir).iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


@dataclass
class Incident:
    run_dir: Path
    number: int

    @property
    def path(self) -> Path:
        return stall_dir(self.run_dir) / str(self.number)

    def rank_dir(self, rank: int) -> Path:
        return self.path / f"rank{rank}"

    def request(self, wait_s: float = 2.0) -> dict | None:
        """The request, waiting briefly for a creator that made the folder but has not written it yet."""
        deadline = time.monotonic() + wait_s
        while True:
            record = read_json(self.path / REQUEST)
            if record is not None:
                return record
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def request_or_markers(self, wait_s: float = 2.0) -> dict:
        """The request, or what the folder itself says when request.json cannot be read (a full
        disk): opened when the folder was made, and whether it ends the job."""
        request = self.request(wait_s)
        if request is not None:
            return request
        try:
            opened = self.path.stat().st_mtime
        except OSError:
            opened = 0.0
        aborts = (self.path / ABORT_MARKER).exists()
        return {
            "kind": "stall" if aborts else "unknown",
            "rank": None,
            "reason": f"request of incident {self.number} unreadable ({self.path / REQUEST})",
            "time": opened,
            "action": "abort" if aborts else "wait",
            "unreadable": True,
        }

    def dumped_ranks(self) -> list[int]:
        """Ranks that answered: their dump.json, or the empty marker of a dump the disk refused."""
        answered = [*self.path.glob(f"rank*/{DUMP}"), *self.path.glob(f"rank*/{DUMP_REFUSED_MARKER}")]
        return sorted({int(p.parent.name[4:]) for p in answered if p.parent.name[4:].isdigit()})

    def mark_dump_refused(self, rank: int) -> bool:
        return touch(self.rank_dir(rank) / DUMP_REFUSED_MARKER)

    def wait_for_dumps(self, world_size: int, timeout_s: float, needless=lambda: set()) -> list[int]:
        """Wait until every rank dumped, or `timeout_s`; `needless()` names ranks not worth waiting
        for (their process is stopped or gone: they will never dump)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(set(self.dumped_ranks()) | set(needless())) >= world_size:
                break
            time.sleep(0.2)
        return self.dumped_ranks()

    def has_report(self) -> bool:
        return (self.path / REPORT_JSON).exists()

    def is_reported(self) -> bool:
        """The reporter is done: its report is written, or it said so with the marker."""
        return self.has_report() or (self.path / REPORTED_MARKER).exists()

    def mark_reported(self) -> bool:
        return touch(self.path / REPORTED_MARKER)

    def wait_for_report(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.is_reported() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.is_reported()

    def record_kills(self, rank: int, kills: list[dict]) -> bool:
        """Rank `rank`'s record of the processes it killed (rewritten whole: one writer per file)."""
        return write_json_atomic(self.path / KILLS.format(rank=rank), {"by_rank": rank, "kills": kills})


def open_incident(run_dir: str | os.PathLike, request: dict, number: int | None = None) -> tuple[Incident, bool]:
    """Incident `number` (default: the next free one) with `request`, or -- when another rank
    opened that number first -- that one. Returns (incident, opened_by_us). mkdir is the atomic
    "first one wins": ranks that declare the same stall ask for the same number (the one after the
    last incident each has answered), so exactly one of them opens it and the others join it.

    Never raises: when the folder cannot be made at all (no space for a directory, a read-only
    file system) the caller is the reporter of an incident that lives in its memory only."""
    root = stall_dir(run_dir)
    if number is None:
        numbers = incident_numbers(run_dir)
        number = (numbers[-1] + 1) if numbers else 1
    incident = Incident(Path(run_dir), number)
    try:
        root.mkdir(parents=True, exist_ok=True)
        incident.path.mkdir()
    except FileExistsError:
        return incident, False
    except OSError as exc:
        warn_once(incident.path, f"cannot create the incident folder ({exc.strerror or exc}); reporting without it")
        return incident, True
    if request.get("action") == "abort" and request.get("kind") in ("stall", "data_timeout"):
        touch(incident.path / ABORT_MARKER)  # first: it needs no space, request.json does
    write_json_atomic(incident.path / REQUEST, {**request, "incident": number})
    return incident, True


def history(run_dir: str | os.PathLike, before: float) -> int:
    """The last incident opened before time `before` (an earlier run's, for a resumed run), or 0."""
    last = 0
    for number in incident_numbers(run_dir):
        request = Incident(Path(run_dir), number).request_or_markers(wait_s=0)
        if request.get("time", before) < before:
            last = number
    return last


def latest_incident(run_dir: str | os.PathLike) -> Incident | None:
    numbers = incident_numbers(run_dir)
    return Incident(Path(run_dir), numbers[-1]) if numbers else None


def read_kills(run_dir: str | os.PathLike) -> dict[int, dict]:
    """pid -> the record of its killing by nestkit (who, why, when), over every incident."""
    kills: dict[int, dict] = {}
    for number in incident_numbers(run_dir):
        for path in (stall_dir(run_dir) / str(number)).glob("kills-rank*.json"):
            record = read_json(path) or {}
            for kill in record.get("kills") or []:
                if isinstance(kill, dict) and isinstance(kill.get("pid"), int):
                    kills[kill["pid"]] = {**kill, "by_rank": record.get("by_rank"), "incident": number}
    return kills
