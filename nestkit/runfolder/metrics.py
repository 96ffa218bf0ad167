"""The metrics Lightning's CSV logger writes: csv/version_<N>/metrics.csv, one version per start.

A resumed run starts a new version, so a run's curve is every version in order. Values are floats,
None where a row does not carry that metric (train and validation rows alternate); a torn last row
(a run killed mid-write) is left out.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

METRICS_DIR = "csv"  # nestkit.training.trainer's CSVLogger(name=...)
METRICS_FILE = "metrics.csv"
LEARNING_CURVE = "learning_curve.png"  # tools/plot_demo_curve.py's figure of these metrics
_VERSION = re.compile(r"version_(\d+)$")


def metrics_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every version's metrics.csv, oldest first."""
    versions = []
    for folder in (Path(run_dir) / METRICS_DIR).glob("version_*"):
        match = _VERSION.search(folder.name)
        if match and (folder / METRICS_FILE).is_file():
            versions.append((int(match.group(1)), folder / METRICS_FILE))
    return [path for _, path in sorted(versions)]


def learning_curve_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LEARNING_CURVE


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """The rows of every version, in order: {column: float or None}."""
    rows: list[dict[str, float | None]] = []
    for path in metrics_files(run_dir):
        text = path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines = lines[:-1]  # torn tail
        for row in csv.DictReader(lines):
            if None in row or any(value is None for value in row.values()):
                continue  # a row shorter or longer than the header
            rows.append({key: float(value) if value != "" else None for key, value in row.items()})
    return rows


def series(rows: list[dict[str, float | None]], column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; `step` is Lightning's 0-based step of the row."""
    points = [(int(r["step"]), r[column]) for r in rows if r.get(column) is not None and r.get("step") is not None]
    return [s for s, _ in points], [v for _, v in points]
