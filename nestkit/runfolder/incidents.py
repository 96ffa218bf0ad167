"""Stall incidents: how the ranks of a job agree that "now" is the moment to dump their stacks.

A rank that declares a stall (its watchdog, or its DataLoader timeout) -- or `nestkit stacks
--dump` -- opens an incident: `<run_dir>/stall/<N>/request.json`. Every rank's watchdog polls for
new incidents and answers with a dump in `stall/<N>/rank<R>/` (`dump.json` last: it marks the dump
complete). The reporting rank then merges everything into `stall/<N>/report.json` and
`report.txt`. The run folder is the only channel, so this works across nodes on a shared file
system, and without any collective (the process group is what may be stuck).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from nestkit.runfolder.layout import stall_dir
from nestkit.runfolder.records import write_json_atomic

REQUEST = "request.json"
DUMP = "dump.json"
REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"


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
            try:
                return orjson.loads((self.path / REQUEST).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)

    def dumped_ranks(self) -> list[int]:
        return sorted(int(p.parent.name[4:]) for p in self.path.glob(f"rank*/{DUMP}") if p.parent.name[4:].isdigit())

    def wait_for_dumps(self, world_size: int, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while len(self.dumped_ranks()) < world_size and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.dumped_ranks()

    def has_report(self) -> bool:
        return (self.path / REPORT_JSON).exists()

    def wait_for_report(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.has_report() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.has_report()


def open_incident(run_dir: str | os.PathLike, request: dict, number: int | None = None) -> tuple[Incident, bool]:
    """Incident `number` (default: the next free one) with `request`, or -- when another rank
    opened that number first -- that one. Returns (incident, opened_by_us). mkdir is the atomic
    "first one wins": ranks that declare the same stall ask for the same number (the one after the
    last incident each has answered), so exactly one of them opens it and the others join it."""
    root = stall_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    if number is None:
        numbers = incident_numbers(run_dir)
        number = (numbers[-1] + 1) if numbers else 1
    incident = Incident(Path(run_dir), number)
    try:
        incident.path.mkdir()
    except FileExistsError:
        return incident, False
    write_json_atomic(incident.path / REQUEST, {**request, "incident": number})
    return incident, True


def history(run_dir: str | os.PathLike, before: float) -> int:
    """The last incident opened before time `before` (an earlier run's, for a resumed run), or 0."""
    last = 0
    for number in incident_numbers(run_dir):
        request = Incident(Path(run_dir), number).request(wait_s=0) or {}
        if request.get("time", before) < before:
            last = number
    return last


def latest_incident(run_dir: str | os.PathLike) -> Incident | None:
    numbers = incident_numbers(run_dir)
    return Incident(Path(run_dir), numbers[-1]) if numbers else None
