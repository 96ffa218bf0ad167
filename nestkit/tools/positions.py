"""Where a batch sits: (epoch, batch) <-> training step, world size, what is in flight, what was logged.

All answers come from the training code path (the planner and the PlanStream order) or from the
run folder's per-rank batch log, never from a second implementation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nestkit.config import NestConfig
from nestkit.core.errors import NestkitError
from nestkit.data.sampler import PlanSampler
from nestkit.runfolder.batch_log import logged_ranks, read_batch_log
from nestkit.training.devices import configured_world_size

LIGHTNING_PREFETCH = 1  # Lightning fetches the next batch before running the current step


@dataclass(frozen=True)
class Position:
    epoch: int
    batch: int

    def __str__(self) -> str:
        return f"epoch {self.epoch} batch {self.batch}"


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
    if devices in (-1, "-1", "auto") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        import torch

        if not torch.cuda.is_available():
            raise NestkitError(
                f"world size: not known (trainer.devices={devices!r} means 'all GPUs' and this machine has none, "
                "and no run folder with batch logs was found). Pass --world-size"
            )
    return configured_world_size(cfg)


def position_of_step(sampler: PlanSampler, step: int, accumulate: int = 1) -> Position:
    """The stream position of the first batch of optimiser step `step` (training from scratch)."""
    if step < 0:
        raise NestkitError(f"step {step}: must not be negative")
    remaining = step * accumulate
    if sampler.batching.batch_size is not None:  # fixed-size plans have the same length every epoch
        count = sampler.plan(0).num_batches
        return Position(remaining // count, remaining % count)
    epoch = 0
    while remaining >= sampler.plan(epoch).num_batches:
        remaining -= sampler.plan(epoch).num_batches
        epoch += 1
    return Position(epoch, remaining)


def step_of_position(sampler: PlanSampler, position: Position, accumulate: int = 1) -> int:
    """The optimiser step that trains `position` (training from scratch)."""
    before = sum(sampler.plan(e).num_batches for e in range(position.epoch)) + position.batch
    return before // accumulate


def following(sampler: PlanSampler, position: Position, count: int) -> list[Position]:
    """The `count` stream positions after `position` (crossing into the next epochs)."""
    out = []
    epoch, batch = position.epoch, position.batch + 1
    while len(out) < count:
        if batch >= sampler.plan(epoch).num_batches:
            epoch, batch = epoch + 1, 0
            continue
        out.append(Position(epoch, batch))
        batch += 1
    return out


def in_flight_count(num_workers: int, prefetch_factor: int) -> int:
    """Batches requested ahead of the one being trained: Lightning's prefetch plus the
    DataLoader's num_workers x prefetch_factor outstanding indices."""
    return LIGHTNING_PREFETCH + (num_workers * prefetch_factor if num_workers > 0 else 0)


def logged(run_dir: Path | None, rank: int, position: Position) -> dict | None:
    """The training log's record of this batch on this rank (the last one, after resumes)."""
    if run_dir is None:
        return None
    found = None
    for record in read_batch_log(run_dir, rank):
        if record["epoch"] == position.epoch and record["batch"] == position.batch:
            found = record
    return found
