"""Per-rank step time from the batch logs: waiting for data, computing, waiting for peers.

Ranks are compared only with the peers they trained alongside: within one segment of the run
(a start or a resume, runfolder/segments.py), since a resume on another number of ranks, or on
another machine, changes every rank's pace. The rule is the one the watchdog applies while
training (nestkit.monitor.stragglers.compare), so the report names the ranks the run warned about.
A rank's first step in each segment (start-up: workers, first fetches, compilation) is left out.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from nestkit.config import StragglerConfig
from nestkit.monitor.heartbeat import slowest_loads
from nestkit.monitor.stragglers import RankTiming, Straggler, compare

PARTS = ("data_wait_s", "compute_s", "peer_wait_s")
FILES_KEPT = 5


@dataclass
class RankSteps:
    """One rank's timed micro-batches in one segment of the run."""

    rank: int
    segment: int
    records: list[dict] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.records]

    def values(self, part: str) -> list[float]:
        return [r[part] for r in self.records]

    def total(self, part: str) -> float:
        return sum(self.values(part))

    @property
    def wall_s(self) -> float:
        return sum(self.total(p) for p in PARTS)

    def share(self, part: str) -> float:
        wall = self.wall_s
        return self.total(part) / wall if wall > 0 else 0.0

    def median(self, part: str) -> float:
        values = sorted(self.values(part))
        return values[len(values) // 2] if values else 0.0

    @property
    def span(self) -> str:
        steps = self.steps
        return f"steps {steps[0]}-{steps[-1]}" if steps else "no steps"


def rank_steps(batches: dict[int, list[dict]], segment_starts: list[int]) -> list[RankSteps]:
    """Timed records by (segment, rank), in that order; `segment_starts` are the segments' first steps."""
    starts = sorted(set(segment_starts)) or [0]
    groups: dict[tuple[int, int], RankSteps] = {}
    for rank, records in batches.items():
        for record in records:
            if not all(isinstance(record.get(p), (int, float)) for p in PARTS):
                continue
            segment = max(0, bisect.bisect_right(starts, record["step"]) - 1)
            group = groups.setdefault((segment, rank), RankSteps(rank, segment))
            group.records.append(record)
    for group in groups.values():
        group.records = group.records[1:]  # the segment's first step on this rank: start-up
    return [groups[key] for key in sorted(groups) if groups[key].records]


def slow_loads(records: list[dict], resolve: Callable[[str], dict] | None) -> list[dict]:
    """The slowest sample loads in these batches, one per cut, with its file and manifest line
    when `resolve` (cut id -> {"path", "manifest", "line"}) can tell them."""
    loads = [
        (ms, cut_id, None, None, None)
        for record in records
        for cut_id, ms in zip(record.get("cut_ids") or [], record.get("load_ms") or [])
    ]
    out = []
    for load in slowest_loads(loads, count=FILES_KEPT):
        where = resolve(load["cut_id"]) if resolve is not None else {}
        out.append({**load, **{k: v for k, v in (where or {}).items() if v is not None}})
    return out


def timing(group: RankSteps, resolve: Callable[[str], dict] | None = None) -> RankTiming:
    return RankTiming(
        rank=group.rank,
        steps=len(group.records),
        data_wait_s=group.median("data_wait_s"),
        compute_s=group.median("compute_s"),
        peer_wait_s=group.median("peer_wait_s"),
        data_wait_share=group.share("data_wait_s"),
        compute_share=group.share("compute_s"),
        slow_loads=slow_loads(group.records, resolve),
    )


def find_stragglers(timed: list[tuple[RankSteps, RankTiming]], cfg: StragglerConfig) -> list[tuple[int, Straggler]]:
    """(segment, straggler) for every rank slower than the peers of its own segment."""
    found = []
    for segment in sorted({group.segment for group, _ in timed}):
        peers = [t for group, t in timed if group.segment == segment]
        found += [(segment, straggler) for straggler in compare(peers, cfg)]
    return found
