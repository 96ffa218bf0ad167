"""The epoch planner: from cut durations, a seed and an epoch, every rank's batches.

The plan for an epoch is computed once with numpy (1M cuts in about a second) and then answers
"which cuts are in batch N of rank R" in O(1), so lookup, replay and resume never replay batches.

Guarantees, for every mode and world size:
* every rank has exactly the same number of batches (an uneven plan cannot exist);
* every kept cut appears exactly once per epoch, except that with `drop_last` the incomplete last
  round is dropped (counted) and without it a few cuts may be repeated to fill the last round
  (counted, and marked in the plan);
* cuts outside [min_duration, max_duration] are left out (counted).

Batches are dealt to ranks in rounds: global batch g goes to rank g % world_size as that rank's
batch g // world_size. In bucketing mode a round's batches come from the same duration bucket
(like lhotse's synced buckets), so ranks wait on each other as little as possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nestkit.config import DatasetConfig
from nestkit.core.errors import PlanError
from nestkit.core.rng import generator


@dataclass(frozen=True)
class BatchingConfig:
    """The planner's part of a dataset config."""

    batch_size: int | None = 8
    batch_duration: float | None = None  # seconds of audio per batch (sum of cut durations)
    num_buckets: int = 30
    shuffle: bool = True
    drop_last: bool = True
    min_duration: float | None = None
    max_duration: float | None = None
    source: str = "plan"  # what errors name: the config section, e.g. model.validation_ds

    @staticmethod
    def from_dataset(ds: DatasetConfig, source: str = "plan") -> BatchingConfig:
        return BatchingConfig(
            source=source,
            batch_size=ds.batch_size,
            batch_duration=ds.batch_duration,
            num_buckets=ds.num_buckets,
            shuffle=ds.shuffle,
            drop_last=ds.drop_last,
            min_duration=ds.min_duration,
            max_duration=ds.max_duration,
        )

    def keep_mask(self, durations: np.ndarray) -> np.ndarray:
        keep = np.ones(len(durations), dtype=bool)
        if self.min_duration is not None:
            keep &= durations >= self.min_duration
        if self.max_duration is not None:
            keep &= durations <= self.max_duration
        return keep


@dataclass
class PlanStats:
    total_cuts: int
    too_short: int
    too_long: int
    dropped: int  # by drop_last
    repeated: int  # padding to fill the last round
    batches_per_rank: int


@dataclass
class EpochPlan:
    """All ranks' batches for one epoch: `rows[bounds[g]:bounds[g+1]]` is global batch g."""

    epoch: int
    world_size: int
    rows: np.ndarray  # int64 rows of the CutIndex, global batches concatenated
    bounds: np.ndarray  # int64, len = num global batches + 1
    repeated: np.ndarray  # bool per entry of `rows`: a repeat that fills the last round
    stats: PlanStats
    dropped_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_batches(self) -> int:
        """Batches per rank (the same on every rank)."""
        return (len(self.bounds) - 1) // self.world_size

    def _global(self, rank: int, batch: int) -> int:
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank}: out of range (expected 0..{self.world_size - 1}, got {rank})")
        if not 0 <= batch < self.num_batches:
            raise PlanError(
                f"batch {batch}: out of range for epoch {self.epoch} (expected 0..{self.num_batches - 1}, got {batch}). "
                f"Each rank has {self.num_batches} batches per epoch; for a training step number, use --step"
            )
        return batch * self.world_size + rank

    def batch_rows(self, rank: int, batch: int) -> np.ndarray:
        g = self._global(rank, batch)
        return self.rows[self.bounds[g] : self.bounds[g + 1]]

    def batch_repeats(self, rank: int, batch: int) -> np.ndarray:
        g = self._global(rank, batch)
        return self.repeated[self.bounds[g] : self.bounds[g + 1]]

    def locate(self, row: int) -> list[tuple[int, int, int]]:
        """Every (rank, batch, slot) where index row `row` appears in this epoch."""
        positions = np.flatnonzero(self.rows == row)
        found = []
        for pos in positions:
            g = int(np.searchsorted(self.bounds, pos, side="right") - 1)
            found.append((g % self.world_size, g // self.world_size, int(pos - self.bounds[g])))
        return found


def _pack_by_duration(durations: np.ndarray, cap: float) -> np.ndarray:
    """Greedy packing in the given order: batch bounds such that each batch's sum <= cap.

    A single cut longer than the cap forms a batch of its own.
    """
    csum = np.concatenate(([0.0], np.cumsum(durations)))
    n = len(durations)
    bounds = [0]
    start = 0
    while start < n:
        end = int(np.searchsorted(csum, csum[start] + cap * (1 + 1e-12), side="right")) - 1
        end = max(end, start + 1)
        bounds.append(end)
        start = end
    return np.asarray(bounds, dtype=np.int64)


def _split(batches: list[np.ndarray]) -> list[np.ndarray]:
    """Split the batch with the most cuts into two halves (to even out a round)."""
    largest = max(range(len(batches)), key=lambda i: len(batches[i]))
    b = batches.pop(largest)
    half = (len(b) + 1) // 2
    return batches[:largest] + [b[:half], b[half:]] + batches[largest:]


def _complete_last_round(
    tail: list[np.ndarray], world_size: int, fill_from: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Turn leftover batches into whole rounds: split batches, and only if every batch is down to
    one cut, add single-cut batches that repeat cuts from `fill_from`.

    Returns (batches, repeat flags per batch).
    """
    batches = [b for b in tail if len(b)]
    repeats = []
    if not batches:
        return [], []
    while len(batches) % world_size and any(len(b) > 1 for b in batches):
        batches = _split(batches)
    flags = [np.zeros(len(b), dtype=bool) for b in batches]
    k = 0
    while len(batches) % world_size:
        batches.append(fill_from[k % len(fill_from)][None])
        flags.append(np.ones(1, dtype=bool))
        k += 1
    repeats.extend(flags)
    return batches, repeats


def plan_epoch(
    durations: np.ndarray,
    batching: BatchingConfig,
    seed: int,
    epoch: int,
    world_size: int,
) -> EpochPlan:
    """Plan one epoch for `world_size` ranks over cuts with these durations (index rows)."""
    if world_size < 1:
        raise PlanError(f"world size {world_size}: must be at least 1")
    durations = np.asarray(durations, dtype=np.float64)
    keep = batching.keep_mask(durations)
    kept = np.flatnonzero(keep)
    too_short = int(np.sum(durations < batching.min_duration)) if batching.min_duration is not None else 0
    too_long = int(np.sum(durations > batching.max_duration)) if batching.max_duration is not None else 0
    if len(kept) == 0:
        raise PlanError(
            f"plan: no cuts left (expected at least 1, got 0 of {len(durations)} after the duration filter "
            f"min_duration={batching.min_duration}, max_duration={batching.max_duration}). "
            "Check the manifests and the filter"
        )
    order = kept[generator(seed, "plan-order", epoch).permutation(len(kept))] if batching.shuffle else kept

    if batching.batch_size is not None:
        rounds, tail = _fixed_size_rounds(order, batching.batch_size, world_size)
    else:
        if batching.batch_duration is None:
            raise PlanError("plan: set batch_size or batch_duration")
        rounds, tail = _bucketed_rounds(order, durations, kept, batching, world_size)
        if batching.shuffle and rounds:
            rounds = [rounds[i] for i in generator(seed, "plan-rounds", epoch).permutation(len(rounds))]

    dropped = np.zeros(0, np.int64)
    tail_flags: list[np.ndarray] = []
    if batching.drop_last:
        dropped = np.concatenate(tail) if tail else dropped
        tail = []
    else:
        if batching.batch_duration is not None and tail:
            # leftovers of several buckets: regroup by duration before evening out the round
            leftover = np.concatenate(tail)
            leftover = leftover[np.argsort(durations[leftover], kind="stable")]
            bounds = _pack_by_duration(durations[leftover], batching.batch_duration)
            tail = [leftover[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        tail, tail_flags = _complete_last_round(tail, world_size, order)

    batches = [b for r in rounds for b in r] + tail
    flags = [np.zeros(len(b), dtype=bool) for r in rounds for b in r] + tail_flags
    if not batches:
        raise PlanError(
            f"{batching.source}: not a single full round of batches (expected at least {world_size} batch(es), "
            f"got {len(kept)} cut(s) for {world_size} rank(s) with drop_last=true). "
            "Lower batch_size/batch_duration or set drop_last=false"
        )
    lengths = np.fromiter((len(b) for b in batches), dtype=np.int64, count=len(batches))
    rows = np.concatenate(batches).astype(np.int64)
    repeated = np.concatenate(flags)
    stats = PlanStats(
        total_cuts=len(durations),
        too_short=too_short,
        too_long=too_long,
        dropped=len(dropped),
        repeated=int(repeated.sum()),
        batches_per_rank=len(batches) // world_size,
    )
    return EpochPlan(
        epoch=epoch,
        world_size=world_size,
        rows=rows,
        bounds=np.concatenate(([0], np.cumsum(lengths))),
        repeated=repeated,
        stats=stats,
        dropped_rows=dropped,
    )


def _fixed_size_rounds(order: np.ndarray, batch_size: int, world_size: int):
    per_round = batch_size * world_size
    full = (len(order) // per_round) * per_round
    body = order[:full].reshape(-1, world_size, batch_size)
    rounds = [[body[r, k] for k in range(world_size)] for r in range(body.shape[0])]
    rest = order[full:]
    tail = [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
    return rounds, tail


def _bucket_edges(durations: np.ndarray, num_buckets: int) -> np.ndarray:
    if num_buckets <= 1 or len(durations) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(durations, np.linspace(0, 1, num_buckets + 1)[1:-1]))


def _bucketed_rounds(order, durations, kept, batching: BatchingConfig, world_size: int):
    # Bucket edges depend on the data only (not the epoch), so a cut stays in its bucket.
    edges = _bucket_edges(durations[kept], batching.num_buckets)
    bucket_of = np.searchsorted(edges, durations[order], side="right")
    rounds, tail = [], []
    for bucket in range(len(edges) + 1):
        members = order[bucket_of == bucket]  # keeps the (shuffled) epoch order
        if len(members) == 0:
            continue
        bounds = _pack_by_duration(durations[members], batching.batch_duration)
        batches = [members[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        full = (len(batches) // world_size) * world_size
        rounds.extend(batches[i : i + world_size] for i in range(0, full, world_size))
        tail.extend(batches[full:])
    return rounds, tail
