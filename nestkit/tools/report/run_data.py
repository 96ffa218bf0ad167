"""The run folder read into tables, tolerant of a live run: a file not written yet is an empty
table, a torn last line is skipped and counted, a resumed run's repeated steps keep their last
record. Every read goes through nestkit/runfolder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nestkit.runfolder.anomalies import read_anomalies
from nestkit.runfolder.batch_log import logged_ranks, read_batch_log
from nestkit.runfolder.heartbeats import read_heartbeats
from nestkit.runfolder.incidents import REPORT_JSON, Incident, incident_numbers
from nestkit.runfolder.metrics import metrics_files, read_metrics
from nestkit.runfolder.quarantine import read_quarantine
from nestkit.runfolder.records import SkippedLine, read_json
from nestkit.runfolder.segments import Segment, read_segments
from nestkit.runfolder.stragglers import read_stragglers


@dataclass
class RunData:
    run_dir: Path
    metrics: dict[str, list[tuple[int, float]]]  # name -> [(step, value)], by step
    metrics_files: list[Path]
    batches: dict[int, list[dict]]  # rank -> its batch-log records, by step
    quarantine: list[dict]
    stalls: list[dict]  # per incident: its report, or its request while no report exists
    anomalies: list[dict]
    segments: list[Segment]
    stragglers: list[dict]  # warnings raised while training
    heartbeats: dict[int, dict]
    skipped: list[SkippedLine] = field(default_factory=list)

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for records in self.batches.values() for r in records if "step" in r]
        steps += [s for series in self.metrics.values() for s, _ in series]
        return max(steps) if steps else None

    @property
    def running_ranks(self) -> list[int]:
        return [rank for rank, beat in self.heartbeats.items() if beat.get("status") == "running"]

    def series(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])


def read_batches(run_dir: Path, skipped: list[SkippedLine]) -> dict[int, list[dict]]:
    """rank -> records by step; a step trained again after a resume keeps its last record."""
    out = {}
    for rank in logged_ranks(run_dir):
        kept: dict[tuple, dict] = {}
        for record in read_batch_log(run_dir, rank, skipped):
            if isinstance(record.get("step"), int):
                kept[(record["step"], record.get("epoch"), record.get("batch"))] = record
        out[rank] = sorted(kept.values(), key=lambda r: (r["step"], r.get("epoch", 0), r.get("batch", 0)))
    return out


def read_stalls(run_dir: Path) -> list[dict]:
    """Every stall incident: its merged report, else (still being written, or the reporter died)
    its request; `incident` is its number."""
    stalls = []
    for number in incident_numbers(run_dir):
        incident = Incident(run_dir, number)
        report = read_json(incident.path / REPORT_JSON)
        if isinstance(report, dict):
            stalls.append({**report, "incident": number, "complete": True})
            continue
        request = incident.request(wait_s=0)
        if request is not None:
            stalls.append({**request, "incident": number, "complete": False})
    return stalls


def read_run(run_dir: str | os.PathLike) -> RunData:
    run_dir = Path(run_dir)
    skipped: list[SkippedLine] = []
    files = metrics_files(run_dir)
    return RunData(
        run_dir=run_dir,
        metrics=read_metrics(files),
        metrics_files=files,
        batches=read_batches(run_dir, skipped),
        quarantine=read_quarantine(run_dir, skipped),
        stalls=read_stalls(run_dir),
        anomalies=read_anomalies(run_dir),
        segments=read_segments(run_dir, skipped),
        stragglers=read_stragglers(run_dir, skipped),
        heartbeats=read_heartbeats(run_dir),
        skipped=skipped,
    )
