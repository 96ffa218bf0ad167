"""Where a micro-batch sits, for the offline tools: world size of a run, what is in flight, what
was logged. The step <-> micro-batch arithmetic is the training code path's own
(nestkit.data.layout, re-exported here).
"""

from __future__ import annotations

from pathlib import Path

from nestkit.config import NestConfig
from nestkit.core.errors import NestkitError
from nestkit.data.layout import Place, RunLayout, segments_of
from nestkit.runfolder.batch_log import logged_ranks, read_batch_log
from nestkit.runfolder.records import report_skipped
from nestkit.training.devices import ALL_DEVICES, configured_world_size

LIGHTNING_PREFETCH = 1  # Lightning fetches the next batch before running the current step

__all__ = ["LIGHTNING_PREFETCH", "Place", "RunLayout", "in_flight_count", "logged", "segments_of", "world_size_of"]


def world_size_of(cfg: NestConfig, run_dir: Path | None, explicit: int | None) -> int:
    """--world-size, else the ranks that logged batches in the run folder, else the config."""
    if explicit is not None:
        if explicit < 1:
            raise NestkitError(f"world size {explicit}: must be at least 1")
        return explicit
    ranks = logged_ranks(run_dir) if run_dir is not None else []
    if ranks:
        return max(ranks) + 1
    devices = cfg.trainer.devices
    if devices in ALL_DEVICES:
        import torch

        if not torch.cuda.is_available():
            raise NestkitError(
                f"world size: not known (trainer.devices={devices!r} means 'all GPUs' and this machine has none, "
                "and no run folder with batch logs was found). Pass --world-size"
            )
    return configured_world_size(cfg)


def in_flight_count(num_workers: int, prefetch_factor: int) -> int:
    """Batches requested ahead of the one being trained: Lightning's prefetch plus the
    DataLoader's num_workers x prefetch_factor outstanding indices."""
    return LIGHTNING_PREFETCH + (num_workers * prefetch_factor if num_workers > 0 else 0)


def logged(run_dir: Path | None, place: Place) -> dict | None:
    """The training log's record of this micro-batch on this rank (the last one, after resumes)."""
    if run_dir is None:
        return None
    found = None
    skipped: list = []
    records = read_batch_log(run_dir, place.rank, skipped)
    report_skipped(skipped)  # a torn last line (a crash, a full disk): one line on stderr, not a traceback
    for record in records:
        if (
            record.get("epoch") == place.epoch
            and record.get("index") == place.index
            and record.get("step") == place.step
        ):
            found = record
    if found is None:  # a log written before segments existed: match by position only
        for record in records:
            if record.get("epoch") == place.epoch and record.get("batch") == place.batch:
                found = record
    return found
