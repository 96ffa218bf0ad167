"""`lookup`: what went into batch N of rank R, where a cut lands, which batches are in flight."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nestkit.data.batch import NestBatch
from nestkit.tools.positions import Position, following, in_flight_count, logged
from nestkit.tools.session import DebugSession, PlannedCut


@dataclass
class RankBatch:
    rank: int
    position: Position
    step: int  # the optimiser step that trains it, counted from the start of training
    planned: list[PlannedCut]
    batch: NestBatch | None  # built by the training dataset, or None with load=False
    logged: dict | None  # the run's batch-log record of this position, if any
    in_flight: list[Position] = field(default_factory=list)

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
            "epoch": self.position.epoch,
            "batch": self.position.batch,
            "step": self.step,
            "cuts": [asdict(c) for c in self.planned],
            "fingerprint": self.fingerprint,
            "logged": self.logged,
            "matches_log": self.matches_log,
            "in_flight": [asdict(p) for p in self.in_flight],
        }
        if self.batch is not None:
            out["records"] = self.batch.records
            out["failures"] = self.batch.failures
        return out


def lookup_batch(session: DebugSession, position: Position, ranks: list[int], load: bool = True) -> list[RankBatch]:
    ds = session.cfg.model.train_ds  # training's loader settings (the session itself loads in-process)
    ahead = in_flight_count(ds.num_workers, ds.prefetch_factor)
    step = session.step_of(position)
    out = []
    for rank in ranks:
        out.append(
            RankBatch(
                rank=rank,
                position=position,
                step=step,
                planned=session.planned(rank, position),
                batch=session.build(rank, position) if load else None,
                logged=logged(session.run_dir, rank, position),
                in_flight=following(session.sampler, position, ahead),
            )
        )
    return out
