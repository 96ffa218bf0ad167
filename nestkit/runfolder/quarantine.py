"""Quarantine files: every sample or noise that could not be used, and what replaced it.

One JSON object per line, one file per writing process: `quarantine/rank<R>.jsonl` for the rank's
own process and `quarantine/rank<R>-worker<W>.jsonl` for each DataLoader worker (`-val-worker<W>`
for validation). One writer per file lets a write cut short by a full disk be rolled back, and a
record that cannot be written yet is kept and written later (see `records.JsonlWriter`). A record
that a worker could not write is marked `unwritten` in its batch, and the rank's own process
writes it when the batch arrives (`Quarantine.adopt`), so a full disk in a worker loses nothing
that reaches training.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from nestkit.runfolder.layout import quarantine_dir, quarantine_path, rank_of_file
from nestkit.runfolder.records import JsonlWriter, SkippedLine, read_jsonl

log = logging.getLogger("nestkit.data")

UNWRITTEN = "unwritten"  # set on a batch's copy of a record its worker could not write
HANDED_TO_THE_RANK = "the record travels with its batch, and the rank's own process writes it"


class Quarantine:
    """Writes one rank's records; `run_dir=None` keeps them in the batch only (replay, tests)."""

    def __init__(self, run_dir: str | os.PathLike | None, rank: int, split: str = "train"):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rank = rank
        self.split = split
        self._owner_pid = os.getpid()
        self._worker: int | None = None
        self._writer: JsonlWriter | None = None

    def bind_worker(self, worker: int) -> None:
        """Called in a DataLoader worker at start: its records go to its own file."""
        self._worker = worker
        self._owner_pid = os.getpid()
        self._writer = None

    @property
    def path(self) -> Path | None:
        if self.run_dir is None:
            return None
        if os.getpid() != self._owner_pid and self._worker is None:  # a worker nobody bound: by pid
            return quarantine_dir(self.run_dir) / f"rank{self.rank}-pid{os.getpid()}.jsonl"
        return quarantine_path(self.run_dir, self.rank, self._worker, "val" if self.split == "validation" else "")

    def _writer_for(self, path: Path) -> JsonlWriter:
        if self._writer is None or self._writer.path != path:
            self._writer = JsonlWriter(path) if self._worker is None else JsonlWriter(path, held=HANDED_TO_THE_RANK)
        return self._writer

    def write(self, record: dict, announce: bool = True) -> dict:
        """Log and persist one record; returns it as stored (with time and rank), marked
        `unwritten` when the file could not take it yet. `announce=False` skips the log line (for
        records the caller summarises itself, e.g. manifest lines skipped at start)."""
        record = {"time": round(time.time(), 3), "rank": self.rank, **record}
        if announce:
            self._announce(record)
        path = self.path
        # The rank's own process keeps a record it cannot write yet and writes it later. A DataLoader
        # worker does not: its batch carries the record to the rank's process (`adopt`), which keeps
        # it until its file can take it -- one owner each, so nothing is written twice.
        keep = self._worker is None and os.getpid() == self._owner_pid
        if path is not None and not self._writer_for(path).append(record, keep=keep):
            return record if keep else {**record, UNWRITTEN: True}
        return record

    def _announce(self, record: dict) -> None:
        log.warning(
            "rank %s epoch %s batch %s: %s %s (%s:%s) unusable [%s]: %s%s",
            self.rank,
            record.get("epoch"),
            record.get("batch"),
            record.get("kind"),
            record.get("cut_id"),
            record.get("manifest"),
            record.get("line"),
            record.get("category"),
            record.get("reason"),
            f"; replaced by {record['substitute']}" if record.get("substitute") else "",
        )

    def adopt(self, records: list[dict]) -> None:
        """Write, from the rank's own process, the records a worker (or this process) could not
        write; they are kept in memory until the rank's file can take them."""
        if self.run_dir is None:
            return
        writer = self._writer_for(quarantine_path(self.run_dir, self.rank))
        for record in records:
            if record.get(UNWRITTEN):
                writer.append({k: v for k, v in record.items() if k != UNWRITTEN})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_quarantine(run_dir: str | os.PathLike, skipped: list[SkippedLine] | None = None) -> list[dict]:
    """Every process's records, ordered by time; unreadable lines go to `skipped` when given."""
    records = []
    for path in sorted(quarantine_dir(run_dir).glob("rank*.jsonl")):
        if rank_of_file(path) is None:
            continue
        read = read_jsonl(path)
        records.extend(read.records)
        if skipped is not None:
            skipped.extend(read.skipped)
    records.sort(key=lambda r: r.get("time") or 0.0)
    return records
