"""Training segments: `segments.jsonl`, one line per start or resume of a run.

A run that was resumed on another number of ranks (or with another accumulation) is a sequence of
segments; each says from which optimizer step and data position it trained, on how many ranks,
with which accumulation and how many DataLoader workers. `lookup --step` and `replay-batch --step`
use them to find the micro-batches and rank of any step, on either side of a change. Written by
global rank zero only.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nestkit.runfolder.records import JsonlWriter, SkippedLine, read_jsonl

SEGMENTS_FILE = "segments.jsonl"


@dataclass(frozen=True)
class Segment:
    start_step: int  # the first optimizer step trained in this segment
    epoch: int  # data position at its start: epoch ...
    consumed: int  # ... and micro-batches of it already consumed
    world_size: int
    accumulate: int
    num_workers: int | None = None
    time: float | None = None
    resumed_from: str | None = None  # the checkpoint it continued from

    @property
    def step_size(self) -> int:
        """Micro-batches per optimizer step, over all ranks."""
        return self.world_size * self.accumulate


def segments_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SEGMENTS_FILE


def append_segment(run_dir: str | os.PathLike, segment: Segment) -> bool:
    writer = JsonlWriter(segments_path(run_dir))
    ok = writer.append(asdict(segment))
    writer.close()
    return ok


def read_segments(run_dir: str | os.PathLike, skipped: list[SkippedLine] | None = None) -> list[Segment]:
    """The run's segments in order of their start step. A segment that restarted from an earlier
    step (a resume from an older checkpoint) replaces the ones it went back over."""
    read = read_jsonl(segments_path(run_dir))
    if skipped is not None:
        skipped.extend(read.skipped)
    fields = set(Segment.__dataclass_fields__)
    segments: list[Segment] = []
    for record in read.records:
        segment = Segment(**{k: v for k, v in record.items() if k in fields})
        while segments and segments[-1].start_step >= segment.start_step:
            segments.pop()
        segments.append(segment)
    return segments
