"""Stragglers: a rank persistently slower than its peers, and in which phase.

Synchronous DDP keeps every rank at the pace of the slowest: a rank that is late makes its peers
wait for it in the next collective. So each rank's step is split three ways (heartbeat.StepCost):
waiting for its own data, computing, and waiting for its peers. The rank that causes the waiting is
the one whose data wait, or whose compute, exceeds its peers'; waits for peers are left out of the
comparison (they are the symptom on the other ranks, not a cause).

`compare` applies the rule of `nestkit.straggler` to per-rank summaries: from the heartbeats while
training (`StragglerWatch`, on global rank zero's watchdog thread, never the training thread) and
from the batch logs afterwards (`nestkit report`), so both name the same ranks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from nestkit.config import StragglerConfig
from nestkit.runfolder.heartbeats import RUNNING, read_heartbeats
from nestkit.runfolder.stragglers import append_straggler

PHASES = {"data": "data_wait_s", "compute": "compute_s"}
FILES_NAMED = 3  # slowest files a warning names
HINTS = {
    "data": "Slow storage for this rank's files, or too few DataLoader workers (model.train_ds.num_workers)?",
    "compute": "A slower or throttled device on this rank, or longer batches? Compare its batches' durations",
}


@dataclass(frozen=True)
class RankTiming:
    """One rank's recent steps: median seconds per step in each part, and the shares of its time."""

    rank: int
    steps: int
    data_wait_s: float
    compute_s: float
    peer_wait_s: float
    data_wait_share: float
    compute_share: float
    slow_loads: list[dict] = field(default_factory=list)  # {"ms", "cut_id", "path", "manifest", "line"}

    @staticmethod
    def from_heartbeat(beat: dict) -> RankTiming | None:
        timing = beat.get("timing") or {}
        if not timing.get("window"):
            return None
        return RankTiming(
            rank=int(beat["rank"]),
            steps=int(timing.get("steps", 0)),
            data_wait_s=float(timing.get("data_wait_s", 0.0)),
            compute_s=float(timing.get("compute_s", 0.0)),
            peer_wait_s=float(timing.get("peer_wait_s", 0.0)),
            data_wait_share=float(timing.get("data_wait_share", 0.0)),
            compute_share=float(timing.get("compute_share", 0.0)),
            slow_loads=list(timing.get("slow_loads") or []),
        )

    def share(self, phase: str) -> float:
        return self.data_wait_share if phase == "data" else self.compute_share


@dataclass(frozen=True)
class Straggler:
    rank: int
    phase: str  # "data" or "compute"
    seconds: float  # the rank's median per step in that phase
    peers_seconds: float  # the median of its peers' medians
    share: float  # of the rank's step time spent in that phase
    steps: int
    slow_loads: list[dict] = field(default_factory=list)

    def sentence(self) -> str:
        if self.phase == "data":
            text = (
                f"rank {self.rank} waits {self.share:.0%} of its step time on data "
                f"({self.seconds:.3g} s per step; its peers {self.peers_seconds:.3g} s)"
            )
            if self.slow_loads:
                text += "; its slowest files: " + ", ".join(describe_load(load) for load in self.slow_loads)
            return text
        ratio = self.seconds / self.peers_seconds if self.peers_seconds > 0 else float("inf")
        return (
            f"rank {self.rank} computes {ratio:.1f}x as long as its peers "
            f"({self.seconds:.3g} s per step; its peers {self.peers_seconds:.3g} s; {self.share:.0%} of its step time)"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "sentence": self.sentence()}


def describe_load(load: dict) -> str:
    """`/data/a.wav (612 ms, utt7-L3, train.json:3)`."""
    where = [f"{load['ms']:.0f} ms"]
    if load.get("path") and load.get("cut_id") and load["cut_id"] != load["path"]:
        where.append(str(load["cut_id"]))
    if load.get("manifest"):
        where.append(f"{os.path.basename(str(load['manifest']))}:{load.get('line')}")
    return f"{load.get('path') or load.get('cut_id')} ({', '.join(where)})"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def compare(timings: list[RankTiming], cfg: StragglerConfig) -> list[Straggler]:
    """Ranks slower than their peers by cfg.factor and by cfg.min_excess_s per step, per phase."""
    eligible = [t for t in timings if t.steps >= cfg.min_steps]
    if len(eligible) < 2:
        return []
    found = []
    for phase, attr in PHASES.items():
        for timing in eligible:
            peers = _median([getattr(other, attr) for other in eligible if other.rank != timing.rank])
            mine = getattr(timing, attr)
            if mine > cfg.factor * peers and mine - peers >= cfg.min_excess_s:
                loads = timing.slow_loads[:FILES_NAMED] if phase == "data" else []
                found.append(Straggler(timing.rank, phase, mine, peers, timing.share(phase), timing.steps, loads))
    return found


class StragglerWatch:
    """Run by global rank zero's watchdog thread: every check_interval_s, compare the running ranks'
    heartbeats; warn once (printed and recorded) when a rank stays slower for cfg.checks checks in a
    row, and say so when it has caught up."""

    def __init__(self, cfg: StragglerConfig, run_dir: str | os.PathLike, notify: Callable[[str], None]):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.notify = notify
        self._streak: dict[tuple[int, str], int] = {}
        self._warned: set[tuple[int, str]] = set()
        self._next_check = time.monotonic() + cfg.check_interval_s

    def tick(self, step: int | None = None) -> list[Straggler]:
        """Check if it is time; returns the stragglers warned about now."""
        if not self.cfg.enabled or time.monotonic() < self._next_check:
            return []
        self._next_check = time.monotonic() + self.cfg.check_interval_s
        try:
            beats = [b for b in read_heartbeats(self.run_dir).values() if b.get("status") == RUNNING]
            timings = [t for t in (RankTiming.from_heartbeat(b) for b in beats) if t is not None]
            return self.observe(compare(timings, self.cfg), step)
        except Exception as exc:  # a bug here must cost the straggler check only, and be said once
            self.cfg = replace(self.cfg, enabled=False)
            self.notify(
                f"nestkit straggler check: internal error {type(exc).__name__}: {exc}; straggler checks are off"
            )
            return []

    def observe(self, found: list[Straggler], step: int | None = None) -> list[Straggler]:
        now_slow = {(s.rank, s.phase): s for s in found}
        for key in list(self._streak):
            if key not in now_slow:
                del self._streak[key]
                if key in self._warned:
                    self._warned.discard(key)
                    self.notify(f"\nnestkit straggler: rank {key[0]} keeps up with its peers again ({key[1]}).\n")
        warned = []
        for key, straggler in now_slow.items():
            self._streak[key] = self._streak.get(key, 0) + 1
            if self._streak[key] >= self.cfg.checks and key not in self._warned:
                self._warned.add(key)
                warned.append(straggler)
                sentence = straggler.sentence()
                self.notify(
                    f"\nnestkit straggler: {sentence} (medians of its recent steps, in {self._streak[key]} "
                    f"checks in a row). {HINTS[straggler.phase]}\n"
                )
                append_straggler(self.run_dir, {"time": round(time.time(), 3), "step": step, **straggler.as_dict()})
        return warned
