"""Straggler warnings: `stragglers.jsonl`, one line each time a rank was found persistently slower
than its peers while training (written by global rank zero's watchdog thread; see
nestkit.monitor.stragglers). Each line: time, step, rank, phase ("data" or "compute"), its median
seconds per step and its peers', the share of its step time, its slowest recent files, and the
sentence that was printed.
"""

from __future__ import annotations

import os

from nestkit.runfolder.layout import stragglers_path
from nestkit.runfolder.records import JsonlWriter, SkippedLine, read_jsonl


def append_straggler(run_dir: str | os.PathLike, record: dict) -> bool:
    writer = JsonlWriter(stragglers_path(run_dir))
    ok = writer.append(record)
    writer.close()
    return ok


def read_stragglers(run_dir: str | os.PathLike, skipped: list[SkippedLine] | None = None) -> list[dict]:
    read = read_jsonl(stragglers_path(run_dir))
    if skipped is not None:
        skipped.extend(read.skipped)
    return read.records
