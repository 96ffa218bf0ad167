"""The batch log: `batches/rank<R>.jsonl`, one line per trained micro-batch of that rank.

Each record says where the micro-batch sits in the plan (epoch, batch), which optimizer step
trained it, its fingerprint, cut ids, loss, and how many samples were replaced. `lookup` and
`replay-batch` compare their rebuilt batches with it. Written through `records.JsonlWriter`
(whole lines, a full disk loses nothing that can be written later); read with every line that
does not parse reported instead of crashing the reader.
"""

from __future__ import annotations

import os

from nestkit.runfolder.layout import BATCHES_DIR, batch_log_path, rank_of_file
from nestkit.runfolder.records import JsonlWriter, SkippedLine, read_jsonl

__all__ = ["BatchLogWriter", "batch_log_path", "logged_ranks", "read_batch_log"]


class BatchLogWriter(JsonlWriter):
    """One rank's batch log (the rank's own process is its only writer)."""

    def __init__(self, run_dir: str | os.PathLike, rank: int):
        super().__init__(batch_log_path(run_dir, rank))


def read_batch_log(run_dir: str | os.PathLike, rank: int, skipped: list[SkippedLine] | None = None) -> list[dict]:
    """The rank's records in file order; lines that are not whole records go to `skipped`."""
    read = read_jsonl(batch_log_path(run_dir, rank))
    if skipped is not None:
        skipped.extend(read.skipped)
    return read.records


def logged_ranks(run_dir: str | os.PathLike) -> list[int]:
    """Ranks that have a batch log in the run folder."""
    folder = os.path.join(run_dir, BATCHES_DIR)
    if not os.path.isdir(folder):
        return []
    from pathlib import Path

    ranks = {rank_of_file(p) for p in Path(folder).glob("rank*.jsonl")}
    return sorted(r for r in ranks if r is not None)
