"""The training data path of one config, opened once for `lookup` and `replay-batch`.

One manifest index and one planner serve every rank (a rank only selects its share of the plan),
and batches are built by the training dataset itself in this process, without workers and
without touching the run's quarantine files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet

from nestkit.config import NestConfig
from nestkit.core.errors import NestkitError, PlanError
from nestkit.data.batch import NestBatch
from nestkit.data.loading import cut_path, file_segment
from nestkit.data.pipeline import DataPipeline, build_pipeline
from nestkit.tools.positions import Position, position_of_step, step_of_position, world_size_of


@dataclass(frozen=True)
class PlannedCut:
    slot: int
    cut_id: str
    manifest: str | None
    line: int | None
    path: str
    offset: float
    duration: float
    repeat: bool

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}" if self.manifest else "-"


class DebugSession:
    def __init__(
        self, cfg: NestConfig, world_size: int, run_dir: Path | None = None, sample_timeout_s: float | None = None
    ):
        cfg = copy.deepcopy(cfg)
        if sample_timeout_s is not None:
            cfg.model.train_ds.sample_timeout_s = sample_timeout_s
        self.cfg = cfg
        self.world_size = world_size
        self.run_dir = run_dir
        self.pipeline: DataPipeline = build_pipeline(cfg, "train", 0, world_size, run_dir=None, num_workers=0)
        self.accumulate = cfg.trainer.accumulate_grad_batches

    @staticmethod
    def open(
        cfg: NestConfig, world_size: int | None, run_dir: Path | None = None, sample_timeout_s: float | None = None
    ) -> DebugSession:
        run_dir = run_dir if run_dir is not None else (cfg.run_dir if cfg.run_dir.is_dir() else None)
        return DebugSession(cfg, world_size_of(cfg, run_dir, world_size), run_dir, sample_timeout_s)

    @property
    def sampler(self):
        return self.pipeline.sampler

    def batches_per_rank(self, epoch: int) -> int:
        return self.sampler.plan(epoch).num_batches

    def check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise PlanError(
                f"rank {rank}: out of range (expected 0..{self.world_size - 1} for world size {self.world_size})"
            )

    def cuts(self, rank: int, position: Position) -> CutSet:
        self.check_rank(rank)
        return self.sampler.batch_cuts(position.batch, position.epoch, rank)

    def planned(self, rank: int, position: Position) -> list[PlannedCut]:
        out = []
        for slot, cut in enumerate(self.cuts(rank, position)):
            custom = cut.custom or {}
            segment = file_segment(cut)
            out.append(
                PlannedCut(
                    slot,
                    cut.id,
                    custom.get("manifest"),
                    custom.get("line"),
                    cut_path(cut),
                    segment.offset if segment else cut.start,
                    cut.duration,
                    bool(custom.get("plan", {}).get("repeat")),
                )
            )
        return out

    def build(self, rank: int, position: Position) -> NestBatch:
        """The batch exactly as the training dataset builds it (same draws, same substitutes)."""
        return self.pipeline.dataset[self.cuts(rank, position)]

    def position_of_step(self, step: int) -> Position:
        return position_of_step(self.sampler, step, self.accumulate)

    def step_of(self, position: Position) -> int:
        return step_of_position(self.sampler, position, self.accumulate)

    def locate_cut(self, cut_id: str, epoch: int) -> list[tuple[int, list[tuple[int, Position, int]]]]:
        """[(index row, [(rank, position, slot), ...]), ...] for every cut with this id in `epoch`."""
        rows = self.pipeline.index.find_all(cut_id)
        if not rows:
            raise NestkitError(
                f"cut {cut_id}: not in the manifests of this config. Cut ids look like <audio stem>-L<line> for NeMo manifests"
            )
        plan = self.sampler.plan(epoch)
        return [(row, [(rank, Position(epoch, batch), slot) for rank, batch, slot in plan.locate(row)]) for row in rows]

    def sample_at(self, rank: int, index: int) -> tuple[Position, int]:
        """The position and slot of the `index`-th sample (0-based) of a rank's training stream."""
        self.check_rank(rank)
        if index < 0:
            raise NestkitError(f"index {index}: must not be negative")
        epoch, remaining = 0, index
        while True:
            plan = self.sampler.plan(epoch)
            sizes = np.diff(plan.bounds)[rank :: self.world_size]
            ends = np.cumsum(sizes)
            if remaining < ends[-1]:
                batch = int(np.searchsorted(ends, remaining, side="right"))
                start = int(ends[batch - 1]) if batch else 0
                return Position(epoch, batch), remaining - start
            remaining -= int(ends[-1])
            epoch += 1
