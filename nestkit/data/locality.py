"""How local a deal's reads are on a sharded corpus: the measures that compare the `global` and `shards` orders.

* `shards_per_step` -- distinct shards the micro-batches of one optimizer step read (all ranks together):
  the shards that must be open, and whose pages must be warm, at the same time.
* `forward_reads` -- of each rank's consecutive member reads (its micro-batches in training order, their
  members in batch order), the fraction that stay in the same shard and move forward in it: what
  read-ahead and sequential throughput on networked storage reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestkit.data.plan import Deal, ShardLayout


@dataclass(frozen=True)
class Locality:
    shards_per_step: float  # mean over the deal's steps
    forward_reads: float  # mean over ranks


def _row_positions(deal: Deal) -> tuple[np.ndarray, np.ndarray]:
    """Each used row of the deal (deal order) and the deal position of its micro-batch."""
    lengths = np.diff(deal.bounds)
    return deal.rows, np.repeat(np.arange(len(lengths)), lengths)


def shards_per_step(deal: Deal, layout: ShardLayout) -> float:
    rows, position = _row_positions(deal)
    if len(rows) == 0:
        return 0.0
    step = position // deal.step_size
    pairs = np.unique(np.stack((step, np.asarray(layout.shard)[rows].astype(np.int64))), axis=1)
    return pairs.shape[1] / (int(step[-1]) + 1)


def forward_reads(deal: Deal, layout: ShardLayout) -> float:
    rows, position = _row_positions(deal)
    owner = position % deal.world_size  # rank r takes deal positions r, r + W, ... in order
    fractions = []
    for rank in range(deal.world_size):
        mine = rows[owner == rank]
        if len(mine) < 2:
            continue
        shard, offset = np.asarray(layout.shard)[mine], np.asarray(layout.offset)[mine]
        fractions.append(float(np.mean((shard[1:] == shard[:-1]) & (offset[1:] > offset[:-1]))))
    return float(np.mean(fractions)) if fractions else 0.0


def locality(deal: Deal, layout: ShardLayout) -> Locality:
    return Locality(shards_per_step(deal, layout), forward_reads(deal, layout))
