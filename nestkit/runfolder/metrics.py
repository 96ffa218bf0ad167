"""The metrics Lightning's CSV logger writes: csv/version_<N>/metrics.csv, one version per start.

Read while a run may still be writing: a torn last row (a run killed mid-write), a row longer or
shorter than the header and a non-number are left out. A resumed run starts a new version at the
step of its checkpoint, so a later version replaces the steps an earlier one logged from there on.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

from nestkit.runfolder.layout import CSV_DIR

METRICS_FILE = "metrics.csv"
NOT_METRICS = ("step", "epoch")
_VERSION = re.compile(r"version_(\d+)$")

Series = list[tuple[int, float]]  # (Lightning's 0-based step, value), by step


def metrics_files(run_dir: str | os.PathLike) -> list[Path]:
    """Every version's metrics.csv, in the order the run's starts wrote them."""
    versions = []
    for folder in (Path(run_dir) / CSV_DIR).glob("version_*"):
        match = _VERSION.search(folder.name)
        if match and (folder / METRICS_FILE).is_file():
            versions.append((int(match.group(1)), folder / METRICS_FILE))
    return [path for _, path in sorted(versions)]


def read_metrics(files: list[Path]) -> dict[str, Series]:
    """metric name -> its series over every file; a later file replaces the steps it logged again."""
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        rows = [(int(step), row) for row in _rows(path) if (step := _number(row.get("step"))) is not None]
        if not rows:
            continue
        first = min(step for step, _ in rows)
        for values in merged.values():
            for step in [s for s in values if s >= first]:
                del values[step]
        for step, row in rows:
            for name, text in row.items():
                value = _number(text)
                if name not in NOT_METRICS and value is not None:
                    merged.setdefault(name, {})[step] = value
    return {name: sorted(values.items()) for name, values in sorted(merged.items())}


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]  # torn tail
    try:
        rows = list(csv.DictReader(lines))
    except csv.Error:
        return []
    return [row for row in rows if None not in row and None not in row.values()]


def _number(text: str | None) -> float | None:
    if text is None:  # a column this row lacks
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
