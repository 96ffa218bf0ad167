"""The epoch planner: from cut durations, a seed and an epoch, the epoch's micro-batches.

Two steps, so that the data position survives a change of world size:

1. `plan_sequence` orders the epoch's cuts and groups them into micro-batches: the *sequence*, a
   pure function of (durations, batching settings, seed, epoch) that does not depend on the
   number of ranks. Micro-batch `g` of epoch `e` is the same cuts whichever rank trains it.
2. `deal` hands the sequence, from a position (`start`: micro-batches already consumed), to
   `world_size` ranks in steps of `world_size x accumulate` micro-batches: step s, accumulation
   slot a, rank r trains micro-batch `start + s*S + a*W + r` (S = W*A), so rank r's k-th
   micro-batch is `start + k*W + r`. The last, incomplete step of the epoch is dropped
   (`drop_last`) or completed by splitting micro-batches and, only if every one is down to a
   single cut, repeating a few cuts. Because the tail is cut by the step size S and not by the
   world size, two runs with the same global batch (2 ranks x 1, or 1 rank x accumulate 2) train
   exactly the same micro-batches in every optimizer step, epoch ends included.

Guarantees, for every mode, world size and start: every rank gets the same number of
micro-batches; every kept cut is used exactly once per epoch (except the counted drop of
`drop_last` and the counted repeats that complete the last step); cuts outside
[min_duration, max_duration] are left out (counted).

Bucketing (`batch_duration`): cuts are grouped by duration into buckets, packed into micro-batches
of at most `batch_duration` seconds, and the micro-batches of a bucket are kept together in runs
of `BUCKET_RUN` before the runs are shuffled: a step's micro-batches then come from one bucket
(ranks wait on each other as little as possible) for every world size that divides the run
length, without the order depending on the world size.

Two orders (`order`), both pure functions of (seed, epoch, settings) and of the corpus:

* `global` shuffles every kept cut of the corpus, then forms micro-batches: the most random order; on a
  sharded corpus a rank's consecutive reads land anywhere in any shard.
* `shards` (sharded corpora: each cut's shard and member offset, `ShardLayout`) shuffles the shards, lays
  their members out in reading order (shard after shard, each by offset), and forms micro-batches in that
  order -- a fixed-size batch is a run of neighbouring members, a duration batch holds the next members
  of its bucket -- so every batch reads forward through one shard or two. The shards are walked in
  windows of `shard_window`; a micro-batch belongs to the window of its first member, and the
  micro-batches (bucket runs) of a window are shuffled among themselves. The steps the ranks take in
  rounds then read a few shards at a time, forward. The price: batches hold neighbouring members (often
  one speaker or source per shard) and a window's data stays together in the epoch; bucket runs are
  shuffled inside a window only, so a step may straddle two buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nestkit.config import DatasetConfig
from nestkit.core.errors import PlanError
from nestkit.core.rng import generator

# Micro-batches of one bucket kept in a row. 24 is divisible by 1, 2, 3, 4, 6, 8, 12 and 24, so
# a step of that many micro-batches stays inside one bucket for all those world sizes.
BUCKET_RUN = 24
ORDER_GLOBAL = "global"
ORDER_SHARDS = "shards"


@dataclass(frozen=True)
class ShardLayout:
    """Where each index row's audio lies: its shard (a number) and the member's byte offset in it."""

    shard: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class BatchingConfig:
    """The planner's part of a dataset config."""

    batch_size: int | None = 8
    batch_duration: float | None = None  # seconds of audio per micro-batch (sum of cut durations)
    num_buckets: int = 30
    shuffle: bool = True
    drop_last: bool = True
    min_duration: float | None = None
    max_duration: float | None = None
    order: str = ORDER_GLOBAL  # ORDER_GLOBAL | ORDER_SHARDS
    shard_window: int = 4  # ORDER_SHARDS: shards whose micro-batches are shuffled together
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
            order=ds.order,
            shard_window=ds.shard_window,
        )

    def keep_mask(self, durations: np.ndarray) -> np.ndarray:
        keep = np.ones(len(durations), dtype=bool)
        if self.min_duration is not None:
            keep &= durations >= self.min_duration
        if self.max_duration is not None:
            keep &= durations <= self.max_duration
        return keep

    def settings(self) -> dict:
        """What decides the sequence (checkpoints compare it on resume)."""
        return {
            "batch_size": self.batch_size,
            "batch_duration": self.batch_duration,
            "num_buckets": self.num_buckets,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "min_duration": self.min_duration,
            "max_duration": self.max_duration,
            "order": self.order,
            "shard_window": self.shard_window,
        }


# ------------------------------------------------------------------------------------------------
# 1. The sequence (independent of the world size)


@dataclass
class EpochSequence:
    """An epoch's micro-batches in order: `rows[bounds[g]:bounds[g+1]]` is micro-batch g."""

    epoch: int
    rows: np.ndarray  # int64 index rows
    bounds: np.ndarray  # int64, one more than there are micro-batches
    total_cuts: int
    too_short: int
    too_long: int
    partial_dropped: int = 0  # cuts of a last, incomplete fixed-size micro-batch (drop_last)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def micro_batch(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise PlanError(
                f"micro-batch {index}: out of range for epoch {self.epoch} (expected 0..{len(self) - 1}, got {index})"
            )
        return self.rows[self.bounds[index] : self.bounds[index + 1]]


def plan_sequence(
    durations: np.ndarray, batching: BatchingConfig, seed: int, epoch: int, layout: ShardLayout | None = None
) -> EpochSequence:
    """The micro-batches of `epoch` over cuts with these durations (index rows); `layout`: where each
    row's audio lies, which the `shards` order needs."""
    durations = np.asarray(durations, dtype=np.float64)
    kept = np.flatnonzero(batching.keep_mask(durations))
    too_short = int(np.sum(durations < batching.min_duration)) if batching.min_duration is not None else 0
    too_long = int(np.sum(durations > batching.max_duration)) if batching.max_duration is not None else 0
    if len(kept) == 0:
        raise PlanError(
            f"{batching.source}: no cuts left (expected at least 1, got 0 of {len(durations)} after the duration "
            f"filter min_duration={batching.min_duration}, max_duration={batching.max_duration}). "
            "Check the manifests and the filter"
        )
    if batching.batch_size is None and batching.batch_duration is None:
        raise PlanError(f"{batching.source}: set batch_size or batch_duration")
    if batching.order == ORDER_SHARDS:
        rows, bounds = _by_shards(
            kept, durations, _checked_layout(layout, batching, len(durations)), batching, seed, epoch
        )
    elif batching.order != ORDER_GLOBAL:
        raise PlanError(
            f"{batching.source}: order {batching.order!r} is unknown (expected {ORDER_GLOBAL} or {ORDER_SHARDS})"
        )
    else:
        order = kept[generator(seed, "plan-order", epoch).permutation(len(kept))] if batching.shuffle else kept
        if batching.batch_size is not None:
            rows, bounds = _fixed_size(order, batching.batch_size)
        else:
            rows, bounds = _bucketed(order, durations, kept, batching, generator(seed, "plan-runs", epoch))
    partial_dropped = 0
    size = batching.batch_size
    # both orders keep the one incomplete fixed-size micro-batch last
    if size is not None and batching.drop_last and len(bounds) > 2 and bounds[-1] - bounds[-2] < size:
        partial_dropped = int(bounds[-1] - bounds[-2])
        rows, bounds = rows[: bounds[-2]], bounds[:-1]
    return EpochSequence(
        epoch, rows.astype(np.int64, copy=False), bounds, len(durations), too_short, too_long, partial_dropped
    )


def _fixed_size(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    bounds = np.arange(0, len(order) + batch_size, batch_size, dtype=np.int64)
    bounds[-1] = len(order)
    if len(bounds) > 1 and bounds[-1] == bounds[-2]:
        bounds = bounds[:-1]
    return order, bounds


def _pack_by_duration(durations: np.ndarray, cap: float) -> np.ndarray:
    """Greedy packing in the given order: bounds such that each micro-batch's sum <= cap.

    A single cut longer than the cap forms a micro-batch of its own. Where the micro-batch that
    starts at each cut would end is found for all cuts at once (one searchsorted); the greedy walk
    then only follows those pointers, which keeps 10M cuts at a fraction of a second.
    """
    n = len(durations)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    csum = np.concatenate(([0.0], np.cumsum(durations)))
    ends = np.searchsorted(csum, csum[:-1] + cap * (1 + 1e-12), side="right") - 1
    ends = np.maximum(ends, np.arange(1, n + 1)).tolist()
    bounds = [0]
    start = 0
    while start < n:
        start = ends[start]
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def _bucket_edges(durations: np.ndarray, num_buckets: int) -> np.ndarray:
    if num_buckets <= 1 or len(durations) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(durations, np.linspace(0, 1, num_buckets + 1)[1:-1]))


def _bucketed(order, durations, kept, batching: BatchingConfig, rng: np.random.Generator):
    """Micro-batches packed inside duration buckets, kept together in runs of BUCKET_RUN; full runs
    first (shuffled), then each bucket's shorter last run (shuffled), so that the order of whole
    runs -- and with it which steps stay inside one bucket -- is the same for every world size.
    A run is a contiguous slice of its bucket's rows, so runs, not micro-batches, are moved."""
    # Bucket edges depend on the data only (not the epoch), so a cut stays in its bucket.
    edges = _bucket_edges(durations[kept], batching.num_buckets)
    bucket_of = np.searchsorted(edges, durations[order], side="right")
    by_bucket = order[np.argsort(bucket_of, kind="stable")]  # each bucket keeps the (shuffled) epoch order
    splits = np.cumsum(np.bincount(bucket_of, minlength=len(edges) + 1))[:-1]
    full_runs: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, micro-batch lengths)
    short_runs: list[tuple[np.ndarray, np.ndarray]] = []
    for members in np.split(by_bucket, splits):
        if len(members) == 0:
            continue
        bounds = _pack_by_duration(durations[members], float(batching.batch_duration or 0.0))
        lengths = np.diff(bounds)
        count = len(lengths)
        for at in range(0, count, BUCKET_RUN):
            end = at + BUCKET_RUN if at + BUCKET_RUN < count else count
            run = (members[bounds[at] : bounds[end]], lengths[at:end])
            (full_runs if end - at == BUCKET_RUN else short_runs).append(run)
    if batching.shuffle:
        full_runs = [full_runs[i] for i in rng.permutation(len(full_runs))]
        short_runs = [short_runs[i] for i in rng.permutation(len(short_runs))]
    runs = full_runs + short_runs
    lengths = np.concatenate([r[1] for r in runs])
    return np.concatenate([r[0] for r in runs]), np.concatenate(([0], np.cumsum(lengths)))


def _checked_layout(layout: ShardLayout | None, batching: BatchingConfig, rows: int) -> ShardLayout:
    if layout is None:
        raise PlanError(
            f"{batching.source}.order: 'shards' needs each cut's shard (expected a Shar or NeMo tarred corpus, got "
            "per-file manifests). Use order: global, or write the corpus as shards with `nestkit shard`"
        )
    if len(layout.shard) != rows or len(layout.offset) != rows:
        raise PlanError(
            f"{batching.source}: shard layout of {len(layout.shard)}/{len(layout.offset)} rows does not match the "
            f"index (expected {rows} rows)"
        )
    return layout


def _by_shards(kept, durations, layout: ShardLayout, batching: BatchingConfig, seed: int, epoch: int):
    """The `shards` order (module docstring): micro-batches formed in reading order, shuffled per window."""
    shard_of = np.asarray(layout.shard)[kept]
    shards = np.unique(shard_of)
    if batching.shuffle:
        shards = shards[generator(seed, "plan-shards", epoch).permutation(len(shards))]
    place = np.zeros(int(shard_of.max()) + 1, dtype=np.int64)  # a shard's place in the epoch's walk
    place[shards] = np.arange(len(shards))
    walk = np.lexsort((np.asarray(layout.offset)[kept], place[shard_of]))
    reading = kept[walk]
    window_of = np.zeros(len(durations), dtype=np.int64)  # per index row
    window_of[reading] = place[shard_of[walk]] // batching.shard_window
    if batching.batch_size is not None:
        rows, bounds = _fixed_size(reading, batching.batch_size)
        runs = np.arange(len(bounds) - 1)  # every micro-batch moves alone
        last_partial = bounds[-1] - bounds[-2] < batching.batch_size
    else:
        rows, bounds, buckets = _packed_by_bucket(reading, durations, kept, batching)
        runs = _bucket_runs(buckets, window_of[rows[bounds[:-1]]])
        last_partial = False
    windows = window_of[rows[bounds[:-1]]]  # a micro-batch's window is its first member's
    count = int(runs[-1]) + 1
    keys = generator(seed, "plan-windows", epoch).random(count) if batching.shuffle else np.arange(count, dtype=float)
    run_keys = keys[runs]
    if last_partial:
        run_keys[-1] = np.inf  # the incomplete fixed-size micro-batch stays last (drop_last drops it)
    order = np.lexsort((np.arange(len(windows)), run_keys, windows))
    return _reordered(rows, bounds, order)


def _packed_by_bucket(reading, durations, kept, batching: BatchingConfig):
    """Micro-batches of at most batch_duration, each bucket packed in reading order (so a bucket's last,
    short micro-batch is the only one of the epoch, not one per window): rows, bounds, bucket of each."""
    edges = _bucket_edges(durations[kept], batching.num_buckets)  # as the global order: a cut keeps its bucket
    bucket_of = np.searchsorted(edges, durations[reading], side="right")
    by_bucket = reading[np.argsort(bucket_of, kind="stable")]
    splits = np.cumsum(np.bincount(bucket_of, minlength=len(edges) + 1))
    lengths, buckets = [], []
    for bucket, (lo, hi) in enumerate(zip(np.concatenate(([0], splits[:-1])), splits)):
        if hi > lo:
            pieces = np.diff(_pack_by_duration(durations[by_bucket[lo:hi]], float(batching.batch_duration or 0.0)))
            lengths.append(pieces)
            buckets.append(np.full(len(pieces), bucket))
    all_lengths = np.concatenate(lengths)
    return by_bucket, np.concatenate(([0], np.cumsum(all_lengths))), np.concatenate(buckets)


def _bucket_runs(buckets: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Run number of each micro-batch: runs of up to BUCKET_RUN micro-batches of one bucket and one window,
    numbered in the order given (bucket after bucket, reading order inside)."""
    starts = np.ones(len(buckets), dtype=bool)
    starts[1:] = (buckets[1:] != buckets[:-1]) | (windows[1:] != windows[:-1])
    group = np.cumsum(starts) - 1
    rank_in_group = np.arange(len(buckets)) - np.flatnonzero(starts)[group]
    return np.cumsum(rank_in_group % BUCKET_RUN == 0) - 1


def _reordered(rows: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The micro-batches `rows[bounds[i]:bounds[i+1]]` taken in `order`, as new rows and bounds."""
    lengths = np.diff(bounds)[order]
    new_bounds = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    moved = np.repeat(bounds[:-1][order] - new_bounds[:-1], lengths)
    return rows[np.arange(len(moved)) + moved], new_bounds


# ------------------------------------------------------------------------------------------------
# 2. The deal (one world size, from a position)


@dataclass(frozen=True)
class MicroBatch:
    """One rank's k-th micro-batch of a deal."""

    index: int  # in the epoch's sequence; a piece of the split last step: len(sequence) + piece
    rows: np.ndarray
    repeats: np.ndarray  # bool per row: a repeat that completes the last step
    consumed_after: int  # micro-batches of the epoch consumed once this step is done (the epoch's length at its end)
    split_from: tuple[int, ...] = ()  # for a piece of the last step: the micro-batches it was split from


@dataclass
class PlanStats:
    total_cuts: int
    too_short: int
    too_long: int
    dropped: int  # cuts dropped by drop_last (an incomplete last micro-batch or step)
    repeated: int  # cuts repeated to complete the last step
    batches_per_rank: int
    micro_batches: int  # in the epoch's sequence


@dataclass
class Deal:
    """`sequence` from micro-batch `start` on, dealt to `world_size` ranks in steps of
    `world_size x accumulate`. `batch_rows(rank, k)` etc. answer in O(1)."""

    sequence: EpochSequence
    world_size: int
    accumulate: int
    start: int
    full_steps: int
    pieces: list[np.ndarray] = field(default_factory=list)  # the completed last step, S pieces (or none)
    piece_repeats: list[np.ndarray] = field(default_factory=list)
    piece_sources: list[tuple[int, ...]] = field(default_factory=list)
    dropped_indexes: tuple[int, ...] = ()  # micro-batches dropped by drop_last

    @property
    def epoch(self) -> int:
        return self.sequence.epoch

    @property
    def step_size(self) -> int:
        return self.world_size * self.accumulate

    @property
    def num_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return (self.full_steps * self.step_size + len(self.pieces)) // self.world_size

    def _check(self, rank: int, k: int) -> None:
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank}: out of range (expected 0..{self.world_size - 1}, got {rank})")
        if not 0 <= k < self.num_batches:
            raise PlanError(
                f"batch {k}: out of range for epoch {self.epoch} (expected 0..{self.num_batches - 1}, got {k}). "
                f"Each rank has {self.num_batches} batches in this epoch; for a training step number, use --step"
            )

    def entry(self, rank: int, k: int) -> MicroBatch:
        self._check(rank, k)
        in_body = self.full_steps * self.step_size
        position = k * self.world_size + rank  # among this deal's micro-batches
        last_step = position >= in_body - self.step_size if not self.pieces else position >= in_body
        if position < in_body:
            index = self.start + position
            step_end = (position // self.step_size + 1) * self.step_size
            consumed = len(self.sequence) if last_step else self.start + step_end
            rows = self.sequence.micro_batch(index)
            return MicroBatch(index, rows, np.zeros(len(rows), dtype=bool), consumed)
        piece = position - in_body
        return MicroBatch(
            len(self.sequence) + piece,
            self.pieces[piece],
            self.piece_repeats[piece],
            len(self.sequence),
            self.piece_sources[piece],
        )

    def batch_rows(self, rank: int, k: int) -> np.ndarray:
        return self.entry(rank, k).rows

    def batch_repeats(self, rank: int, k: int) -> np.ndarray:
        return self.entry(rank, k).repeats

    def rank_batch_of(self, index: int) -> tuple[int, int] | None:
        """(rank, k) that trains micro-batch `index` of the sequence in this deal, or None."""
        position = index - self.start
        if 0 <= position < self.full_steps * self.step_size:
            return position % self.world_size, position // self.world_size
        return None

    @property
    def stats(self) -> PlanStats:
        seq = self.sequence
        dropped = seq.partial_dropped + sum(len(seq.micro_batch(i)) for i in self.dropped_indexes)
        return PlanStats(
            total_cuts=seq.total_cuts,
            too_short=seq.too_short,
            too_long=seq.too_long,
            dropped=dropped,
            repeated=int(sum(int(r.sum()) for r in self.piece_repeats)),
            batches_per_rank=self.num_batches,
            micro_batches=len(seq),
        )

    @property
    def rows(self) -> np.ndarray:
        """Every row this deal uses, in deal order (a copy: for tests and lookups, not hot paths)."""
        seq = self.sequence
        body = seq.rows[seq.bounds[self.start] : seq.bounds[self.start + self.full_steps * self.step_size]]
        return np.concatenate([body, *self.pieces]) if self.pieces else np.asarray(body)

    @property
    def bounds(self) -> np.ndarray:
        """Micro-batch bounds into `rows` (deal order)."""
        seq = self.sequence
        body = seq.bounds[self.start : self.start + self.full_steps * self.step_size + 1] - seq.bounds[self.start]
        if not self.pieces:
            return body
        lengths = np.fromiter((len(p) for p in self.pieces), dtype=np.int64, count=len(self.pieces))
        return np.concatenate((body, body[-1] + np.cumsum(lengths)))

    def locate(self, row: int) -> list[tuple[int, int, int]]:
        """Every (rank, k, slot) where index row `row` appears in this deal."""
        found = []
        seq = self.sequence
        lo, hi = seq.bounds[self.start], seq.bounds[self.start + self.full_steps * self.step_size]
        for pos in np.flatnonzero(seq.rows[lo:hi] == row) + lo:
            g = int(np.searchsorted(seq.bounds, pos, side="right") - 1)
            place = self.rank_batch_of(g)
            if place is not None:  # always: g lies in this deal's body
                found.append((place[0], place[1], int(pos - seq.bounds[g])))
        in_body = self.full_steps * self.step_size
        for piece, rows in enumerate(self.pieces):
            for slot in np.flatnonzero(rows == row):
                position = in_body + piece
                found.append((position % self.world_size, position // self.world_size, int(slot)))
        return found


def deal(
    sequence: EpochSequence,
    world_size: int,
    start: int = 0,
    accumulate: int = 1,
    drop_last: bool = True,
    source: str = "plan",
) -> Deal:
    """Hand `sequence[start:]` to `world_size` ranks in steps of `world_size x accumulate`."""
    if world_size < 1:
        raise PlanError(f"world size {world_size}: must be at least 1")
    if accumulate < 1:
        raise PlanError(f"accumulate {accumulate}: must be at least 1")
    total = len(sequence)
    if not 0 <= start <= total:
        raise PlanError(f"{source}: start {start} is outside epoch {sequence.epoch} (expected 0..{total})")
    step = world_size * accumulate
    full_steps, left = divmod(total - start, step)
    tail = list(range(start + full_steps * step, total))
    result = Deal(sequence, world_size, accumulate, start, full_steps)
    if tail and drop_last:
        result.dropped_indexes = tuple(tail)
    elif tail:
        pieces, repeats, sources = _complete_last_step(sequence, tail, step)
        result.pieces, result.piece_repeats, result.piece_sources = pieces, repeats, sources
    if start == 0 and result.num_batches == 0:
        raise PlanError(
            f"{source}: not a single full step of micro-batches (expected at least {step} micro-batch(es) for "
            f"{world_size} rank(s) x accumulate {accumulate}, got {total} from {total - sequence.partial_dropped} "
            "planned with drop_last=true). Lower batch_size/batch_duration or set drop_last=false"
        )
    return result


def _complete_last_step(sequence: EpochSequence, tail: list[int], step: int):
    """Turn the leftover micro-batches into exactly `step` pieces: split the largest in halves
    while any has more than one cut, then add single-cut repeats from the epoch's own rows."""
    pieces = [sequence.micro_batch(i) for i in tail]
    sources: list[tuple[int, ...]] = [(i,) for i in tail]
    while len(pieces) < step and any(len(p) > 1 for p in pieces):
        largest = max(range(len(pieces)), key=lambda i: len(pieces[i]))
        piece, source = pieces.pop(largest), sources.pop(largest)
        half = (len(piece) + 1) // 2
        pieces[largest:largest] = [piece[:half], piece[half:]]
        sources[largest:largest] = [source, source]
    repeats = [np.zeros(len(p), dtype=bool) for p in pieces]
    k = 0
    while len(pieces) < step:
        pieces.append(sequence.rows[k % len(sequence.rows)][None])
        repeats.append(np.ones(1, dtype=bool))
        sources.append(())
        k += 1
    return pieces, repeats, sources


def plan_epoch(
    durations: np.ndarray, batching: BatchingConfig, seed: int, epoch: int, world_size: int, accumulate: int = 1
) -> Deal:
    """The whole epoch for `world_size` ranks: the sequence dealt from its start."""
    sequence = plan_sequence(durations, batching, seed, epoch)
    return deal(sequence, world_size, 0, accumulate, batching.drop_last, batching.source)
