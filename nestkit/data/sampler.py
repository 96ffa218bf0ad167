"""A lhotse-style sampler over an epoch plan: yields one rank's batches as CutSets.

Use it with `DataLoader(dataset, sampler=sampler, batch_size=None)`, as lhotse samplers are used.
Each yielded cut carries its plan position in `cut.custom["plan"]` so that the dataset's random
draws depend on the position only. `resume(epoch, batch)` starts the next iteration at that batch
in O(1) (the length stays the epoch's); Lightning calls `set_epoch` before each epoch.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from lhotse import CutSet

from nestkit.core import faults
from nestkit.data.dataset import PLAN_KEY
from nestkit.data.manifest import CutIndex
from nestkit.data.plan import BatchingConfig, EpochPlan, plan_epoch


class PlanSampler(torch.utils.data.Sampler):
    def __init__(
        self,
        index: CutIndex,
        batching: BatchingConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        fixed_epoch: int | None = None,
    ):
        """`fixed_epoch` pins the plan (validation uses epoch 0 every time, so its batches and
        their noise stay the same and val_loss values are comparable)."""
        self.index = index
        self.batching = batching
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.fixed_epoch = fixed_epoch
        self.epoch = 0 if fixed_epoch is None else fixed_epoch
        self._start_batch = 0
        self._plans: dict[int, EpochPlan] = {}

    def set_epoch(self, epoch: int) -> None:
        if self.fixed_epoch is None:
            if epoch != self.epoch:
                self._start_batch = 0
            self.epoch = epoch

    def resume(self, epoch: int, batch: int) -> None:
        """The next iteration starts at `batch` of `epoch` (exact data position of a checkpoint)."""
        self.epoch = epoch if self.fixed_epoch is None else self.fixed_epoch
        self._start_batch = batch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            self._plans = {epoch: plan_epoch(self.index.duration, self.batching, self.seed, epoch, self.world_size)}
        return self._plans[epoch]

    def batch_cuts(self, batch: int, epoch: int | None = None, rank: int | None = None) -> CutSet:
        """Batch `batch` of `rank` (default: this sampler's rank) as a CutSet, with plan positions."""
        epoch = self.epoch if epoch is None else epoch
        rank = self.rank if rank is None else rank
        plan = self.plan(epoch)
        rows = plan.batch_rows(rank, batch)
        repeats = plan.batch_repeats(rank, batch)
        cuts = []
        for row, repeat in zip(rows, repeats):
            cut = self.index.cut(int(row))
            cut.custom = {
                **(cut.custom or {}),
                PLAN_KEY: {"epoch": epoch, "rank": rank, "batch": batch, "repeat": bool(repeat)},
            }
            cuts.append(cut)
        return CutSet(cuts)

    def batch_rows(self, batch: int, epoch: int | None = None, rank: int | None = None) -> np.ndarray:
        return self.plan(epoch).batch_rows(self.rank if rank is None else rank, batch)

    def __len__(self) -> int:
        """Batches in the epoch, also when resuming in its middle: Lightning counts the batches
        already trained in its restored progress and stops the epoch at this length."""
        return self.plan().num_batches

    def __iter__(self):
        start, self._start_batch = self._start_batch, 0
        epoch = self.epoch
        for batch in range(start, self.plan(epoch).num_batches):
            yield self.batch_cuts(batch, epoch)


class PlanStream(torch.utils.data.Sampler):
    """Training's stream: one rank's planned batches, epoch after epoch, from a start position.

    Lightning sees a single endless epoch (no `__len__`, so it counts steps, as NeMo's step-based
    recipe does) and nestkit alone owns the data position: a resume restores (epoch, batch) and
    nothing depends on how Lightning's own epoch counter treats a restart. With `max_epochs`, the
    stream ends after that many data epochs.

    The DataLoader iterates the stream in the training process, so the stream knows what it handed
    out: `handed_out` keeps the last positions (with their cuts) for heartbeats and stall reports
    (the batches in flight are those handed out and not trained yet), and `data_end` records where
    and why the stream ended.
    """

    HANDED_OUT_KEPT = 64  # far more than num_workers x prefetch_factor + Lightning's one

    def __init__(self, sampler: PlanSampler, max_epochs: int | None = None):
        self.sampler = sampler
        self.max_epochs = max_epochs if max_epochs and max_epochs > 0 else None
        self.start = (0, 0)
        self.handed_out: deque[tuple[int, int, CutSet]] = deque(maxlen=self.HANDED_OUT_KEPT)
        self.data_end: dict | None = None
        self.stop_after = faults.stop_after(sampler.rank)  # None unless NESTKIT_DEBUG_STOP_RANK

    def resume(self, epoch: int, batch: int) -> None:
        self.start = (epoch, batch)

    def positions(self):
        """(epoch, batch) of every batch the stream yields, in order."""
        epoch, batch = self.start
        while self.max_epochs is None or epoch < self.max_epochs:
            count = self.sampler.plan(epoch).num_batches
            for b in range(batch, count):
                yield epoch, b
            epoch, batch = epoch + 1, 0

    def handed_out_snapshot(self) -> list[tuple[int, int, CutSet]]:
        """A copy that other threads can walk while the DataLoader appends."""
        for _ in range(10):
            try:
                return list(self.handed_out)
            except RuntimeError:  # mutated during the copy
                continue
        return []

    def __iter__(self):
        if self.data_end is not None and self.data_end["reason"] == "debug":
            return  # the debug hook ended this rank's data for good
        last = None
        for yielded, (epoch, batch) in enumerate(self.positions()):
            if self.stop_after is not None and yielded >= self.stop_after:
                self.data_end = {
                    "after": _position(last),
                    "reason": "debug",
                    "detail": f"{faults.STOP_RANK_ENV}: data ends after {self.stop_after} batches",
                }
                return
            cuts = self.sampler.batch_cuts(batch, epoch)
            self.handed_out.append((epoch, batch, cuts))
            last = (epoch, batch)
            yield cuts
        self.data_end = {
            "after": _position(last),
            "reason": "max_epochs",
            "detail": f"{self.max_epochs} data epochs done",
        }


def _position(position: tuple[int, int] | None) -> dict | None:
    return None if position is None else {"epoch": position[0], "batch": position[1]}
