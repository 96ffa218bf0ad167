"""`lookup`: what went into batch N of rank R, where a cut lands, which batches are in flight."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nestkit.data.batch import NestBatch
from nestkit.data.pipeline import dataset_config
from nestkit.tools.positions import Place, in_flight_count, logged
from nestkit.tools.session import DebugSession, PlannedCut


@dataclass
class RankBatch:
    place: Place  # epoch, rank, the rank's batch number, the micro-batch's index in the epoch, step
    world_size: int  # of the segment that trained it
    planned: list[PlannedCut]
    batch: NestBatch | None  # built by the training dataset, or None with load=False
    logged: dict | None  # the run's batch-log record of this micro-batch, if any
    in_flight: list[Place] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def step(self) -> int:
        return self.place.step

    @property
    def fingerprint(self) -> str | None:
        return self.batch.fingerprint if self.batch is not None else None

    @property
    def matches_log(self) -> bool | None:
        if self.batch is None or self.logged is None:
            return None
        return self.batch.fingerprint == self.logged["fingerprint"]

    def as_dict(self) -> dict:
        out = {
            "rank": self.rank,
            "epoch": self.place.epoch,
            "batch": self.place.batch,
            "micro_batch": self.place.index,
            "step": self.step,
            "world_size": self.world_size,
            "segment": self.place.segment,
            "cuts": [asdict(c) for c in self.planned],
            "fingerprint": self.fingerprint,
            "logged": self.logged,
            "matches_log": self.matches_log,
            "in_flight": [
                {"epoch": p.epoch, "batch": p.batch, "micro_batch": p.index, "step": p.step} for p in self.in_flight
            ],
        }
        if self.batch is not None:
            out["records"] = self.batch.records
            out["failures"] = self.batch.failures
        return out


def lookup_batch(session: DebugSession, places: list[Place], load: bool = True) -> list[RankBatch]:
    """Each place's cuts, files and (with `load`) the batch as training built it, beside the log."""
    ds = dataset_config(session.cfg, "train")  # training's loader settings (the session itself loads in-process)
    ahead = in_flight_count(ds.num_workers, ds.prefetch_factor)
    return [
        RankBatch(
            place=place,
            world_size=session.layout.world_size_at(place),
            planned=session.planned(place),
            batch=session.build(place) if load else None,
            logged=logged(session.run_dir, place),
            in_flight=session.following(place, ahead),
        )
        for place in places
    ]
