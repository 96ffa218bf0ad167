"""Per-rank quarantine files: every sample or noise that could not be used, and what replaced it.

One JSON object per line in `<run_dir>/quarantine/rank<R>.jsonl`. DataLoader workers of the rank
append to the same file: each record is written with one `write` on an O_APPEND descriptor, which
keeps lines whole for records of this size.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

log = logging.getLogger("nestkit.data")

QUARANTINE_DIR = "quarantine"


def quarantine_path(run_dir: str | os.PathLike, rank: int) -> Path:
    return Path(run_dir) / QUARANTINE_DIR / f"rank{rank}.jsonl"


class Quarantine:
    """Writes records for one rank; `folder=None` keeps them in the batch only (replay, tests)."""

    def __init__(self, run_dir: str | os.PathLike | None, rank: int):
        self.path = quarantine_path(run_dir, rank) if run_dir is not None else None
        self.rank = rank

    def write(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), "rank": self.rank, **record}
        log.warning(
            "rank %s epoch %s batch %s: %s %s (%s:%s) unusable [%s]: %s%s",
            self.rank, record.get("epoch"), record.get("batch"), record.get("kind"), record.get("cut_id"),
            record.get("manifest"), record.get("line"), record.get("category"), record.get("reason"),
            f"; replaced by {record['substitute']}" if record.get("substitute") else "",
        )
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, orjson.dumps(record) + b"\n")
        finally:
            os.close(fd)


def read_quarantine(run_dir: str | os.PathLike) -> list[dict]:
    """All ranks' records, in file order."""
    records = []
    for path in sorted((Path(run_dir) / QUARANTINE_DIR).glob("rank*.jsonl")):
        with open(path, "rb") as f:
            records.extend(orjson.loads(line) for line in f if line.strip())
    return records
