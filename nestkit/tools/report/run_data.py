"""The run folder read into tables, tolerant of a live run: a file not written yet is an empty
table, a torn last line is skipped and counted, a resumed run's repeated steps keep their last
record. Every read goes through nestkit/runfolder, except Lightning's own CSV logger files.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from nestkit.runfolder.batch_log import logged_ranks, read_batch_log
from nestkit.runfolder.heartbeats import read_heartbeats
from nestkit.runfolder.incidents import REPORT_JSON, Incident, incident_numbers
from nestkit.runfolder.quarantine import read_quarantine
from nestkit.runfolder.records import SkippedLine, read_json
from nestkit.runfolder.segments import Segment, read_segments
from nestkit.runfolder.stragglers import read_stragglers

CSV_DIR = "csv"  # Lightning's CSVLogger: csv/version_N/metrics.csv, one version per start of the run
METRICS_FILE = "metrics.csv"


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


def metrics_files(run_dir: Path) -> list[Path]:
    """csv/version_N/metrics.csv in the order the run's starts wrote them."""
    folder = run_dir / CSV_DIR
    if not folder.is_dir():
        return []
    versions = []
    for path in folder.glob(f"version_*/{METRICS_FILE}"):
        number = path.parent.name.removeprefix("version_")
        if number.isdigit():
            versions.append((int(number), path))
    return [path for _, path in sorted(versions)]


def read_metrics(files: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value)]. A later file (a resume) replaces the steps it trained again."""
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        rows = _csv_rows(path)
        steps = [int(float(r["step"])) for r in rows if _number(r.get("step")) is not None]
        if not steps:
            continue
        first = min(steps)
        for values in merged.values():
            for step in [s for s in values if s >= first]:
                del values[step]
        for row in rows:
            number = _number(row.get("step"))
            if number is None:
                continue
            step = int(number)
            for name, text in row.items():
                value = _number(text)
                if name in ("step", "epoch") or value is None:
                    continue
                merged.setdefault(name, {})[step] = value
    return {name: sorted(values.items()) for name, values in sorted(merged.items())}


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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


def read_anomalies(run_dir: Path) -> list[dict]:
    """Anomaly incidents (loss spikes, NaNs, ...) when this nestkit records them."""
    try:
        from nestkit.runfolder import anomalies  # type: ignore[attr-defined]
    except ImportError:
        return []
    reader = getattr(anomalies, "read_anomalies", None)
    return [dict(a) for a in reader(run_dir)] if reader is not None else []


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
