"""The training data path of one config, opened once for `lookup` and `replay-batch`.

One manifest index and one planner serve every rank (a rank only selects its share of the plan),
the run's segments say which world size trained which steps (nestkit.tools.positions), and
batches are built by the training dataset itself in this process, without workers and without
touching the run's quarantine files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse import CutSet

from nestkit.config import NestConfig
from nestkit.core.errors import NestkitError
from nestkit.data.batch import NestBatch
from nestkit.data.loading import cut_path, file_segment, member_segment
from nestkit.data.pipeline import DataPipeline, build_pipeline, dataset_config
from nestkit.data.sampler import cuts_of
from nestkit.tools.positions import Place, RunLayout, segments_of, world_size_of


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
    # a cut whose audio is a shard member (Shar, NeMo tarred): the tar, the member, its bytes in the tar
    shard: str | None = None
    member: str | None = None
    member_offset: int | None = None
    member_size: int | None = None

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}" if self.manifest else "-"


class DebugSession:
    def __init__(
        self, cfg: NestConfig, world_size: int, run_dir: Path | None = None, sample_timeout_s: float | None = None
    ):
        cfg = copy.deepcopy(cfg)
        if sample_timeout_s is not None:
            dataset_config(cfg, "train").sample_timeout_s = sample_timeout_s
        self.cfg = cfg
        self.run_dir = run_dir
        self.accumulate = cfg.trainer.accumulate_grad_batches
        self.pipeline: DataPipeline = build_pipeline(cfg, "train", 0, world_size, run_dir=None, num_workers=0)
        self.layout = RunLayout(
            self.pipeline.planner, segments_of(run_dir, world_size, self.accumulate), cfg.trainer.max_epochs
        )

    @staticmethod
    def open(
        cfg: NestConfig, world_size: int | None, run_dir: Path | None = None, sample_timeout_s: float | None = None
    ) -> DebugSession:
        run_dir = run_dir if run_dir is not None else (cfg.run_dir if cfg.run_dir.is_dir() else None)
        return DebugSession(cfg, world_size_of(cfg, run_dir, world_size), run_dir, sample_timeout_s)

    @property
    def segments(self):
        return self.layout.segments

    @property
    def world_size(self) -> int:
        """The largest world size of the run (every rank that ever trained)."""
        return max(s.world_size for s in self.segments)

    def ranks_at(self, place: Place) -> list[int]:
        """The ranks that trained alongside `place` (its segment's world size)."""
        return list(range(self.layout.world_size_at(place)))

    def check_step(self, step: int) -> None:
        max_steps = self.cfg.trainer.max_steps
        if step < 0:
            raise NestkitError(f"step {step}: must not be negative")
        if max_steps and max_steps > 0 and step >= max_steps:
            raise NestkitError(
                f"step {step}: beyond the run (expected 0..{max_steps - 1}: trainer.max_steps={max_steps})"
            )

    # -- places -------------------------------------------------------------------------------

    def places_of_step(self, step: int, rank: int) -> list[Place]:
        """Rank `rank`'s micro-batches of optimizer step `step` (trainer.accumulate_grad_batches of them)."""
        self.check_step(step)
        return self.layout.places_of_step(step, rank)

    def place_of_step(self, step: int, rank: int) -> Place:
        return self.places_of_step(step, rank)[0]

    def place_of_batch(self, epoch: int, batch: int, rank: int) -> Place:
        place = self.layout.place_of_batch(epoch, batch, rank)
        if self._beyond_run(place.step):
            raise NestkitError(
                f"epoch {epoch} batch {batch}: beyond the run (it would be trained at step {place.step}, expected "
                f"0..{self.cfg.trainer.max_steps - 1}: trainer.max_steps={self.cfg.trainer.max_steps})"
            )
        return place

    def _beyond_run(self, step: int) -> bool:
        max_steps = self.cfg.trainer.max_steps
        return bool(max_steps and max_steps > 0 and step >= max_steps)

    def following(self, place: Place, count: int) -> list[Place]:
        return self.layout.following(place, count)

    def batches_in_epoch(self, epoch: int) -> dict[int, int]:
        """rank -> batches it takes in `epoch` over all segments (equal on every rank of a segment)."""
        return {rank: self.layout.batches_in_epoch(epoch, rank) for rank in range(self.world_size)}

    # -- cuts and batches ---------------------------------------------------------------------

    def cuts(self, place: Place) -> CutSet:
        plan = self.layout.deal_at(place)
        entry = plan.entry(place.rank, place.k)
        return cuts_of(self.pipeline.index, entry, place.epoch, place.rank, plan.world_size, place.k)

    def planned(self, place: Place) -> list[PlannedCut]:
        out = []
        for slot, cut in enumerate(self.cuts(place)):
            custom = cut.custom or {}
            segment = file_segment(cut)
            member = member_segment(cut)
            address = member.address if member is not None else None
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
                    address.shard if address else None,
                    address.name if address else None,
                    address.offset if address else None,
                    address.size if address else None,
                )
            )
        return out

    def build(self, place: Place) -> NestBatch:
        """The batch exactly as the training dataset builds it (same draws, same substitutes)."""
        return self.pipeline.dataset[self.cuts(place)]

    def locate_cut(self, cut_id: str, epoch: int) -> list[tuple[int, list[tuple[Place, int]]]]:
        """[(index row, [(place, slot), ...]), ...] for every cut with this id in `epoch`."""
        rows = self.pipeline.index.find_all(cut_id)
        if not rows:
            raise NestkitError(
                f"cut {cut_id}: not in the manifests of this config. Cut ids look like <audio stem>-L<line> for NeMo manifests"
            )
        found = []
        for row in rows:
            places = []
            for number in range(len(self.segments)):
                span = self.layout._span_of_epoch(number, epoch)
                if span is None:
                    continue
                plan = self.layout._deal(number, span)
                for rank, k, slot in plan.locate(row):
                    places.append((self.layout._place(number, span, plan, rank, k), slot))
            found.append((row, places))
        return found

    def sample_at(self, rank: int, index: int) -> tuple[Place, int]:
        """The place and slot of the `index`-th sample (0-based) of a rank's training stream."""
        if index < 0:
            raise NestkitError(f"index {index}: must not be negative")
        remaining, epoch = index, 0
        while True:
            deals = self.layout.rank_deals(epoch, rank)
            if deals and self._beyond_run(deals[0][1].first):
                raise NestkitError(
                    f"index {index}: beyond the run (rank {rank} takes fewer samples before "
                    f"trainer.max_steps={self.cfg.trainer.max_steps})"
                )
            for number, span, plan in deals:
                sizes = np.array([len(plan.batch_rows(rank, k)) for k in range(plan.num_batches)], dtype=np.int64)
                ends = np.cumsum(sizes)
                if len(ends) and remaining < ends[-1]:
                    k = int(np.searchsorted(ends, remaining, side="right"))
                    start = int(ends[k - 1]) if k else 0
                    return self.layout._place(number, span, plan, rank, k), remaining - start
                remaining -= int(ends[-1]) if len(ends) else 0
            epoch += 1
