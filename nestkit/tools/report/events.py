"""Every incident of a run on one step axis: stalls, anomalies, resumes, world-size changes,
straggler warnings and replaced samples. An incident known only by its wall time is placed at the
step its rank was training then (from the batch logs)."""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from dataclasses import dataclass

from nestkit.tools.report.run_data import RunData

KINDS = ("stall", "anomaly", "straggler", "resume", "world size", "bad data")


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    step: float | None
    rank: int | None
    title: str  # a few words, for the figure
    text: str  # the whole sentence, for the page
    time: float | None = None
    batch: tuple[int, int, int] | None = None  # (epoch, index in the epoch's sequence, rank) to look at
    number: int | None = None  # the incident's number (stalls)


class StepClock:
    """Wall time -> the optimizer step in progress, from the batch logs' times."""

    def __init__(self, data: RunData):
        pairs = sorted((r["time"], r["step"]) for records in data.batches.values() for r in records if "time" in r)
        self.times = [t for t, _ in pairs]
        self.steps = [s for _, s in pairs]
        self.by_batch = {
            (rank, r.get("epoch"), r.get("batch")): r["step"] for rank, records in data.batches.items() for r in records
        }

    def step_at(self, time: float | None) -> float | None:
        if time is None or not self.times:
            return None
        i = bisect.bisect_right(self.times, time)
        return self.steps[i - 1] + 1 if i else self.steps[0]


def stall_events(data: RunData, clock: StepClock) -> list[Event]:
    out = []
    for stall in data.stalls:
        verdict = stall.get("verdict") or {}
        culprits = verdict.get("culprits") or []
        ranks = {r.get("rank"): r for r in stall.get("ranks") or []}
        rank = culprits[0] if culprits else stall.get("requested_by", stall.get("rank"))
        view = ranks.get(rank) or {}
        step = view.get("step", stall.get("step"))
        batch = None
        position = view.get("waiting_for") if view.get("phase") in ("fetch", "startup") else None
        position = position or view.get("position")
        if position and rank is not None:
            batch = (position.get("epoch"), position.get("batch"), rank)
        sentence = verdict.get("sentence") or stall.get("reason") or "stall"
        if not stall.get("complete"):
            sentence += " (no merged report: it was still being written, or its reporter ended first)"
        kind = verdict.get("kind") or "stall"
        out.append(
            Event(
                "stall",
                step if step is not None else clock.step_at(stall.get("time")),
                rank,
                f"stall {stall['incident']}: {kind.replace('_', ' ')}",
                f"incident {stall['incident']}: {sentence}",
                stall.get("time"),
                batch,
                stall["incident"],
            )
        )
    return out


def anomaly_events(data: RunData, clock: StepClock) -> list[Event]:
    out = []
    for anomaly in data.anomalies:
        rank = anomaly.get("rank")
        step = anomaly.get("step")
        kind = str(anomaly.get("kind") or anomaly.get("category") or "anomaly")
        text = anomaly.get("sentence") or anomaly.get("message") or anomaly.get("reason") or kind
        batch = None
        if anomaly.get("epoch") is not None and anomaly.get("batch") is not None and rank is not None:
            batch = (anomaly["epoch"], anomaly["batch"], rank)
        out.append(
            Event(
                "anomaly",
                step if step is not None else clock.step_at(anomaly.get("time")),
                rank,
                kind.replace("_", " "),
                f"rank {rank} step {step}: {text}" if step is not None else str(text),
                anomaly.get("time"),
                batch,
                anomaly.get("incident") or anomaly.get("number"),
            )
        )
    return out


def segment_events(data: RunData) -> list[Event]:
    out = []
    for before, segment in zip(data.segments, data.segments[1:]):
        source = os.path.basename(segment.resumed_from) if segment.resumed_from else "the start"
        text = (
            f"resumed at step {segment.start_step} from {source} (epoch {segment.epoch}, "
            f"{segment.consumed} micro-batches of it consumed) on {segment.world_size} rank(s)"
        )
        out.append(Event("resume", segment.start_step, None, f"resume @{segment.start_step}", text, segment.time))
        if segment.world_size != before.world_size or segment.accumulate != before.accumulate:
            out.append(
                Event(
                    "world size",
                    segment.start_step,
                    None,
                    f"{before.world_size} -> {segment.world_size} ranks",
                    f"from step {segment.start_step}: {before.world_size} -> {segment.world_size} rank(s), "
                    f"accumulate_grad_batches {before.accumulate} -> {segment.accumulate}",
                    segment.time,
                )
            )
    return out


def straggler_events(data: RunData) -> list[Event]:
    return [
        Event(
            "straggler",
            record.get("step"),
            record.get("rank"),
            f"rank {record.get('rank')} slow ({record.get('phase')})",
            f"step {record.get('step')}: {record.get('sentence')}",
            record.get("time"),
        )
        for record in data.stragglers
    ]


def bad_data_events(data: RunData, clock: StepClock) -> list[Event]:
    """One event per batch that had samples or noises replaced."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in data.quarantine:
        if record.get("split", "train") != "train":
            continue
        groups[(record.get("rank"), record.get("epoch"), record.get("batch"))].append(record)
    out = []
    for (rank, epoch, batch), records in groups.items():
        step = clock.by_batch.get((rank, epoch, batch))
        if step is None:
            step = clock.step_at(min(r.get("time") or 0 for r in records))
        categories = sorted({str(r.get("category")) for r in records})
        out.append(
            Event(
                "bad data",
                step,
                rank,
                f"{len(records)} replaced",
                f"rank {rank} epoch {epoch} batch {batch}: {len(records)} unusable ({', '.join(categories)})",
                min(r.get("time") or 0 for r in records),
            )
        )
    return out


def all_events(data: RunData) -> list[Event]:
    clock = StepClock(data)
    events = (
        stall_events(data, clock)
        + anomaly_events(data, clock)
        + straggler_events(data)
        + segment_events(data)
        + bad_data_events(data, clock)
    )
    return sorted(events, key=lambda e: (e.step if e.step is not None else float("inf"), KINDS.index(e.kind)))
