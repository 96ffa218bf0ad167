"""Per-rank step time from the batch logs: waiting for data, computing, waiting for peers.

The same rule the watchdog applies while training (nestkit.monitor.stragglers.compare) is applied
here to the whole run, so the report names the ranks the run warned about. A rank's first step
after each start (start-up: workers, first fetches, compilation) is left out of its statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nestkit.monitor.heartbeat import slowest_loads
from nestkit.monitor.stragglers import RankTiming

PARTS = ("data_wait_s", "compute_s", "peer_wait_s")


@dataclass
class RankSteps:
    """One rank's timed micro-batches (start-up steps left out)."""

    rank: int
    steps: list[int]
    data_wait_s: list[float]
    compute_s: list[float]
    peer_wait_s: list[float]

    def total(self, part: str) -> float:
        return sum(getattr(self, part))

    @property
    def wall_s(self) -> float:
        return sum(self.total(p) for p in PARTS)

    def share(self, part: str) -> float:
        wall = self.wall_s
        return self.total(part) / wall if wall > 0 else 0.0

    def median(self, part: str) -> float:
        values = sorted(getattr(self, part))
        return values[len(values) // 2] if values else 0.0


def rank_steps(batches: dict[int, list[dict]], start_steps: set[int]) -> dict[int, RankSteps]:
    """rank -> its timed steps; `start_steps` are the first steps of each start of the run."""
    out = {}
    for rank, records in batches.items():
        timed = [r for r in records if all(isinstance(r.get(p), (int, float)) for p in PARTS)]
        if timed:
            first = timed[0]["step"]
            timed = [r for r in timed if r["step"] != first and r["step"] not in start_steps]
        out[rank] = RankSteps(rank, *([r[k] for r in timed] for k in ("step", *PARTS)))
    return out


def slow_loads(records: list[dict], resolve: Callable[[str], dict] | None) -> list[dict]:
    """The slowest sample loads of a rank's batches, one per file, with file and manifest line
    when `resolve` (cut id -> {"path", "manifest", "line"}) can tell them."""
    loads = []
    for record in records:
        for cut_id, ms in zip(record.get("cut_ids") or [], record.get("load_ms") or []):
            loads.append((ms, cut_id, None, None, None))
    top = slowest_loads(loads, count=len(loads))  # one per cut id, slowest first
    out = []
    for load in top:
        where = resolve(load["cut_id"]) if resolve is not None else {}
        out.append({**load, **{k: v for k, v in (where or {}).items() if v is not None}})
        if len({o.get("path") or o["cut_id"] for o in out}) >= 5:
            break
    return out


def timings(steps: dict[int, RankSteps], batches: dict[int, list[dict]], resolve=None) -> list[RankTiming]:
    return [
        RankTiming(
            rank=rank,
            steps=len(s.steps),
            data_wait_s=s.median("data_wait_s"),
            compute_s=s.median("compute_s"),
            peer_wait_s=s.median("peer_wait_s"),
            data_wait_share=s.share("data_wait_s"),
            compute_share=s.share("compute_s"),
            slow_loads=slow_loads(batches.get(rank, []), resolve),
        )
        for rank, s in sorted(steps.items())
        if s.steps
    ]
