"""Samplers over the plan: which cuts each rank loads, as lhotse-style CutSets.

* `Planner` -- the epoch sequences of one dataset (index + batching + seed), cached, and their
  deals to a world size (nestkit.data.plan).
* `EpochSampler` -- one rank's micro-batches of one epoch (validation, `nestkit pipeline`, tests),
  a torch Sampler used as lhotse samplers are: `DataLoader(dataset, sampler=..., batch_size=None)`.
* `TrainingStream` -- training's stream: one rank's micro-batches epoch after epoch from a data
  position (epoch, micro-batches consumed), which Lightning sees as one endless epoch.

Each yielded cut carries its plan position in `cut.custom["plan"]` (see nestkit.data.batch.BatchPosition),
so the dataset's random draws depend on the position only.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from lhotse import CutSet

from nestkit.core import faults
from nestkit.data.batch import PLAN_KEY
from nestkit.data.plan import (
    ORDER_SHARDS,
    BatchingConfig,
    Deal,
    EpochSequence,
    MicroBatch,
    ShardLayout,
    deal,
    plan_sequence,
)
from nestkit.data.plan_cache import cached_sequence

if TYPE_CHECKING:
    from nestkit.data.manifest import CutIndex

PLAN_FORMAT = "nestkit-plan/2"  # the sequence rule; a checkpoint from another rule cannot resume exactly


class Planner:
    """Epoch sequences and deals of one dataset, computed once per epoch and kept for reuse."""

    KEPT_EPOCHS = 2  # the epoch being read and the next one the stream may already hand out

    def __init__(
        self, index: CutIndex, batching: BatchingConfig, seed: int, cache_dir: str | os.PathLike | None = None
    ):
        """`cache_dir`: where epoch sequences are shared between processes (default: the index's own
        cache folder, when it has one; None keeps them in memory)."""
        self.index = index
        self.batching = batching
        self.seed = seed
        cache = cache_dir if cache_dir is not None else getattr(index, "cache_dir", None)
        self.cache_dir = Path(cache) if cache is not None else None
        self._sequences: dict[int, EpochSequence] = {}
        self._deals: dict[tuple, Deal] = {}
        self._digest: str | None = None
        self._layout_digest: str | None = None
        self._lengths: dict[int, int] = {}
        self._kept: int | None = None

    def sequence(self, epoch: int) -> EpochSequence:
        if epoch not in self._sequences:
            if len(self._sequences) >= self.KEPT_EPOCHS:
                oldest = max(self._sequences, key=lambda e: abs(e - epoch))
                self._sequences.pop(oldest)
                self._deals = {k: v for k, v in self._deals.items() if k[0] != oldest}
            self._sequences[epoch] = self._plan(epoch)
        return self._sequences[epoch]

    def _plan(self, epoch: int) -> EpochSequence:
        def plan() -> EpochSequence:
            return plan_sequence(self.index.duration, self.batching, self.seed, epoch, self.layout())

        if self.cache_dir is None:
            return plan()
        return cached_sequence(self.cache_dir, self.signature(), epoch, plan)

    def sequence_length(self, epoch: int) -> int:
        """Micro-batches in `epoch`'s sequence; without planning it for fixed-size batches (the same
        every epoch), so that positions far into a run are found by arithmetic."""
        b = self.batching
        if b.batch_size is not None:
            if self._kept is None:
                self._kept = int(b.keep_mask(np.asarray(self.index.duration)).sum())
            full, partial = divmod(self._kept, b.batch_size)
            return full + (1 if partial and not (b.drop_last and full) else 0)
        if epoch not in self._lengths:
            self._lengths[epoch] = len(self.sequence(epoch))
        return self._lengths[epoch]

    def deal(self, epoch: int, world_size: int, start: int = 0, accumulate: int = 1) -> Deal:
        key = (epoch, world_size, start, accumulate)
        if key not in self._deals:
            self._deals[key] = deal(
                self.sequence(epoch), world_size, start, accumulate, self.batching.drop_last, self.batching.source
            )
        return self._deals[key]

    def layout(self) -> ShardLayout | None:
        """Each row's shard and member offset, which the `shards` order walks (None: per-file, or not needed)."""
        shard = getattr(self.index, "shard", None)
        if self.batching.order != ORDER_SHARDS or shard is None:
            return None
        return ShardLayout(shard, self.index.member_offset)

    def signature(self) -> dict:
        """What the sequences depend on; a resume compares it with the checkpoint's (and the plan cache keys
        on it, so sequences of different orders or shard layouts never mix)."""
        if self._digest is None:
            digest = hashlib.blake2b(digest_size=8)
            digest.update(np.ascontiguousarray(self.index.duration, dtype=np.float64).view(np.uint8).data)
            self._digest = digest.hexdigest()
            layout = self.layout()
            if layout is not None:  # the shards order also depends on where every member lies
                for column in (layout.shard, layout.offset):
                    digest.update(np.ascontiguousarray(column, dtype=np.int64).view(np.uint8).data)
                self._layout_digest = digest.hexdigest()
        signature = {
            "format": PLAN_FORMAT,
            "seed": self.seed,
            "cuts": len(self.index),
            "durations": self._digest,
            **self.batching.settings(),
        }
        if self.batching.order == ORDER_SHARDS:
            # another sequence rule: the format says so, so that a resume that changes the order is refused
            signature["format"] = f"{PLAN_FORMAT}+shards/{self.batching.shard_window}"
            signature["layout"] = self._layout_digest
        return signature


def cuts_of(index: CutIndex, entry: MicroBatch, epoch: int, rank: int, world_size: int, batch: int) -> CutSet:
    """A micro-batch's cuts, each carrying its plan position (`batch`: the rank's batch number)."""
    cuts = []
    for row, repeat in zip(entry.rows, entry.repeats):
        cut = index.cut(int(row))
        plan = {
            "epoch": epoch,
            "rank": rank,
            "batch": batch,
            "index": entry.index,
            "world_size": world_size,
            "consumed_after": entry.consumed_after,
            "repeat": bool(repeat),
        }
        cut.custom = {**(cut.custom or {}), PLAN_KEY: plan}
        cuts.append(cut)
    return CutSet(cuts)


class EpochSampler(torch.utils.data.Sampler):
    """One rank's micro-batches of one epoch, from the epoch's start or a resumed position."""

    def __init__(
        self,
        index: CutIndex,
        batching: BatchingConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        fixed_epoch: int | None = None,
        accumulate: int = 1,
        planner: Planner | None = None,
    ):
        """`fixed_epoch` pins the plan (validation uses epoch 0 every time, so its batches and
        their noise stay the same and val_loss values are comparable)."""
        self.planner = planner or Planner(index, batching, seed)
        self.index = index
        self.batching = batching
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self.fixed_epoch = fixed_epoch
        self.epoch = 0 if fixed_epoch is None else fixed_epoch
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        if self.fixed_epoch is None:
            if epoch != self.epoch:
                self._start = 0
            self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """The next iteration starts after `consumed` micro-batches of `epoch`."""
        self.epoch = epoch if self.fixed_epoch is None else self.fixed_epoch
        self._start = consumed

    def plan(self, epoch: int | None = None, start: int | None = None) -> Deal:
        epoch = self.epoch if epoch is None else epoch
        start = (self._start if epoch == self.epoch else 0) if start is None else start
        return self.planner.deal(epoch, self.world_size, start, self.accumulate)

    def batch_cuts(self, k: int, epoch: int | None = None, rank: int | None = None) -> CutSet:
        """Micro-batch `k` of `rank` (default: this sampler's rank) as a CutSet, with plan positions."""
        epoch = self.epoch if epoch is None else epoch
        rank = self.rank if rank is None else rank
        plan = self.plan(epoch)
        return cuts_of(self.index, plan.entry(rank, k), epoch, rank, self.world_size, plan.start // self.world_size + k)

    def batch_rows(self, k: int, epoch: int | None = None, rank: int | None = None) -> np.ndarray:
        return self.plan(epoch).batch_rows(self.rank if rank is None else rank, k)

    def __len__(self) -> int:
        return self.plan().num_batches

    def __iter__(self) -> Iterator[CutSet]:
        epoch, plan = self.epoch, self.plan()
        self._start = 0
        for k in range(plan.num_batches):
            batch = plan.start // self.world_size + k  # a resumed epoch goes on numbering where it was
            yield cuts_of(self.index, plan.entry(self.rank, k), epoch, self.rank, self.world_size, batch)


@dataclass(frozen=True)
class DataPosition:
    """Training's place in the data: micro-batches of `epoch` already consumed (by all ranks)."""

    epoch: int = 0
    consumed: int = 0


class TrainingStream(torch.utils.data.Sampler):
    """One rank's training micro-batches, epoch after epoch, from a data position.

    Lightning sees a single endless epoch (no `__len__`, so it counts steps, as NeMo's step-based
    recipe does) and nestkit alone owns the data position. With `max_epochs`, the stream ends
    after that many data epochs.

    The DataLoader iterates the stream in the training process, so the stream knows what it handed
    out: `handed_out` keeps the last positions (with their cuts) for heartbeats and stall reports
    (the batches in flight are those handed out and not trained yet), and `data_end` records where
    and why the stream ended.
    """

    HANDED_OUT_KEPT = 64  # far more than num_workers x prefetch_factor + Lightning's one

    def __init__(
        self,
        planner: Planner,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
        max_epochs: int | None = None,
        start: DataPosition = DataPosition(),
        batches_before: int | None = None,
    ):
        """`batches_before`: batches this rank already took in the start epoch (in earlier segments of
        the run: nestkit.data.layout), so that its batch numbers go on; default start.consumed // W."""
        self.planner = planner
        self.rank = rank
        self.world_size = world_size
        self.accumulate = accumulate
        self.max_epochs = max_epochs if max_epochs and max_epochs > 0 else None
        self.start = start
        self.batches_before = start.consumed // world_size if batches_before is None else batches_before
        self.handed_out: deque[tuple[int, int, CutSet]] = deque(maxlen=self.HANDED_OUT_KEPT)
        self.data_end: dict | None = None
        self.stop_after = faults.stop_after(rank)  # None unless NESTKIT_DEBUG_STOP_RANK

    def resume(self, position: DataPosition) -> None:
        self.start = position

    def deals(self) -> Iterator[Deal]:
        """This stream's deal of every epoch, from the start position on."""
        epoch, start = self.start.epoch, self.start.consumed
        while self.max_epochs is None or epoch < self.max_epochs:
            yield self.planner.deal(epoch, self.world_size, start, self.accumulate)
            epoch, start = epoch + 1, 0

    def handed_out_snapshot(self) -> list[tuple[int, int, CutSet]]:
        """A copy that other threads can walk while the DataLoader appends."""
        for _ in range(10):
            try:
                return list(self.handed_out)
            except RuntimeError:  # mutated during the copy
                continue
        return []

    def __iter__(self) -> Iterator[CutSet]:
        if self.data_end is not None and self.data_end["reason"] == "debug":
            return  # the debug hook ended this rank's data for good
        last = None
        yielded = 0
        for plan in self.deals():
            for k in range(plan.num_batches):
                if self.stop_after is not None and yielded >= self.stop_after:
                    self.data_end = {
                        "after": last,
                        "reason": "debug",
                        "detail": f"{faults.STOP_RANK_ENV}: data ends after {self.stop_after} batches",
                    }
                    return
                entry = plan.entry(self.rank, k)
                batch = (self.batches_before if plan.epoch == self.start.epoch else 0) + k
                cuts = cuts_of(self.planner.index, entry, plan.epoch, self.rank, self.world_size, batch)
                self.handed_out.append((plan.epoch, batch, cuts))
                yielded += 1
                last = {"epoch": plan.epoch, "batch": batch}
                yield cuts
        self.data_end = {"after": last, "reason": "max_epochs", "detail": f"{self.max_epochs} data epochs done"}
