"""A run's steps over its plan: training step <-> (epoch, rank, batch) <-> micro-batch, across
world-size changes.

A run is a sequence of segments (runfolder/segments.py): each trained from an optimizer step and a
data position on some number of ranks with some accumulation. Within a segment an epoch is dealt as
`nestkit.data.plan.deal` deals it, which is what training's stream iterates; so every answer here
is the training code path's own arithmetic. A run with no segments file is one segment from step 0.

A `Place` names one rank's micro-batch: its epoch; its per-rank batch number in that epoch
(counted over every segment the rank took part in: what the rank's batch log and Lightning's
progress show, and what `lookup --batch N --rank R` takes); its index in the epoch's sequence
(the same on any world size); and the optimizer step that trains it. Training uses the same
layout to number a resumed rank's batches, so logs, stall reports and lookups agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from nestkit.core.errors import NestkitError, PlanError
from nestkit.data.plan import Deal
from nestkit.data.sampler import Planner
from nestkit.runfolder.segments import Segment, read_segments

MAX_EPOCHS_WALKED = 100_000  # a step further away than this many epochs is not a question about a run


@dataclass(frozen=True)
class Place:
    """One rank's micro-batch in a run."""

    epoch: int
    rank: int
    batch: int  # the rank's batch number in the epoch (over all segments)
    index: int  # the micro-batch's index in the epoch's sequence (past its end: a piece of the split last step)
    step: int  # the optimizer step that trains it
    segment: int  # which segment of the run
    k: int  # the rank's batch number within the segment's deal of this epoch

    def __str__(self) -> str:
        return f"epoch {self.epoch} batch {self.batch}"


def continued_by(segments: list[Segment], segment: Segment) -> list[Segment]:
    """The run's segments once `segment` starts (it replaces those at or after its start step)."""
    return [s for s in segments if s.start_step < segment.start_step] + [segment]


def segments_of(run_dir: Path | None, world_size: int, accumulate: int) -> list[Segment]:
    """The run's segments, or one segment from step 0 when the run folder has none."""
    segments = read_segments(run_dir) if run_dir is not None else []
    if segments and segments[0].start_step != 0:  # the folder kept only a later part: the start is the config's
        segments.insert(0, Segment(0, 0, 0, world_size, accumulate))
    return segments or [Segment(0, 0, 0, world_size, accumulate)]


@dataclass(frozen=True)
class _Span:
    """The part of one epoch a segment trained: from micro-batch `start`, steps [first, first + steps)."""

    epoch: int
    start: int
    first: int
    steps: int


class RunLayout:
    """The steps of a run over its plan: which micro-batches each step trained on which rank."""

    def __init__(self, planner: Planner, segments: list[Segment], max_epochs: int | None = None):
        self.planner = planner
        self.segments = segments
        self.max_epochs = max_epochs if max_epochs and max_epochs > 0 else None

    # -- walking (arithmetic on epoch lengths; epochs are planned only when their length needs it) --

    def _epoch_steps(self, segment: Segment, epoch: int, start: int) -> int:
        full, left = divmod(self.planner.sequence_length(epoch) - start, segment.step_size)
        return full + (1 if left and not self.planner.batching.drop_last else 0)

    def _spans(self, number: int, until_step: int | None = None, until_epoch: int | None = None) -> Iterator[_Span]:
        """Segment `number`'s epochs in order, each with the steps it trained there. With fixed-size
        batches (every epoch as long) whole epochs are skipped by arithmetic up to `until_step` /
        `until_epoch`, so a position far into a run is found at once."""
        segment = self.segments[number]
        end = self.segments[number + 1].start_step if number + 1 < len(self.segments) else None
        epoch, start, step = segment.epoch, segment.consumed, segment.start_step
        fixed = self.planner.batching.batch_size is not None
        walked = 0
        while self.max_epochs is None or epoch < self.max_epochs:
            if fixed and start == 0:
                per_epoch = self._epoch_steps(segment, epoch, 0)
                skip = _skippable(per_epoch, step, epoch, until_step, until_epoch, end, self.max_epochs)
                epoch, step = epoch + skip, step + skip * per_epoch
                if self.max_epochs is not None and epoch >= self.max_epochs:
                    return
            steps = self._epoch_steps(segment, epoch, start)
            if end is not None:
                steps = min(steps, end - step)
                if steps <= 0:
                    return
            yield _Span(epoch, start, step, steps)
            epoch, start, step = epoch + 1, 0, step + steps
            walked += 1
            if walked > MAX_EPOCHS_WALKED:
                raise NestkitError(
                    f"step {until_step}: more than {MAX_EPOCHS_WALKED} epochs into the run; not a step this run can reach"
                )

    def _deal(self, number: int, span: _Span) -> Deal:
        segment = self.segments[number]
        plan = self.planner.deal(span.epoch, segment.world_size, span.start, segment.accumulate)
        full = plan.full_steps + (1 if plan.pieces else 0)
        if span.steps >= full:
            return plan
        return replace(plan, full_steps=span.steps, pieces=[], piece_repeats=[], piece_sources=[])

    def _span_of_epoch(self, number: int, epoch: int) -> _Span | None:
        if epoch < self.segments[number].epoch:
            return None
        for span in self._spans(number, until_epoch=epoch):
            if span.epoch == epoch:
                return span
            if span.epoch > epoch:
                return None
        return None

    def _segment_of_step(self, step: int) -> int:
        if step < 0:
            raise NestkitError(f"step {step}: must not be negative")
        return max(i for i, s in enumerate(self.segments) if s.start_step <= step or i == 0)

    def _place(self, number: int, span: _Span, plan: Deal, rank: int, k: int) -> Place:
        entry = plan.entry(rank, k)
        batch = self._earlier_batches(number, span.epoch, rank) + k
        return Place(span.epoch, rank, batch, entry.index, span.first + k // plan.accumulate, number, k)

    def rank_batches_before(self, number: int, epoch: int, rank: int) -> int:
        """Batches `rank` took in `epoch` in the segments before segment `number` (training numbers
        a resumed rank's batches from here, so its log and a lookup say the same batch number)."""
        return self._earlier_batches(number, epoch, rank)

    def _earlier_batches(self, number: int, epoch: int, rank: int) -> int:
        """Batches `rank` took in `epoch` in the segments before segment `number`."""
        total = 0
        for earlier in range(number):
            if rank < self.segments[earlier].world_size:
                span = self._span_of_epoch(earlier, epoch)
                if span is not None:
                    total += self._deal(earlier, span).num_batches
        return total

    def _check_rank(self, rank: int, number: int) -> None:
        size = self.segments[number].world_size
        if not 0 <= rank < size:
            raise PlanError(
                f"rank {rank}: out of range (expected 0..{size - 1}: from step {self.segments[number].start_step} this "
                f"run trained on {size} rank(s))"
            )

    # -- questions ----------------------------------------------------------------------------

    def places_of_step(self, step: int, rank: int) -> list[Place]:
        """The micro-batches rank `rank` trains in optimizer `step` (trainer.accumulate_grad_batches of them)."""
        number = self._segment_of_step(step)
        self._check_rank(rank, number)
        for span in self._spans(number, until_step=step):
            if span.first <= step < span.first + span.steps:
                plan = self._deal(number, span)
                first = (step - span.first) * plan.accumulate
                return [self._place(number, span, plan, rank, k) for k in range(first, first + plan.accumulate)]
        raise NestkitError(
            f"step {step}: beyond the end of training (trainer.max_epochs={self.max_epochs} data epochs end earlier)"
        )

    def rank_deals(self, epoch: int, rank: int) -> list[tuple[int, _Span, Deal]]:
        """(segment, span, deal) of every segment in which `rank` trained part of `epoch`, in order."""
        if epoch < 0:
            raise NestkitError(f"epoch {epoch}: must not be negative")
        if self.max_epochs is not None and epoch >= self.max_epochs:
            raise NestkitError(f"epoch {epoch}: beyond the run (expected 0..{self.max_epochs - 1}: trainer.max_epochs)")
        if not any(rank < s.world_size for s in self.segments) or rank < 0:
            sizes = sorted({s.world_size for s in self.segments})
            raise PlanError(
                f"rank {rank}: out of range (expected 0..{max(sizes) - 1}: this run trained on {sizes} rank(s))"
            )
        found = []
        for number, segment in enumerate(self.segments):
            if rank < segment.world_size:
                span = self._span_of_epoch(number, epoch)
                if span is not None:
                    found.append((number, span, self._deal(number, span)))
        return found

    def batches_in_epoch(self, epoch: int, rank: int) -> int:
        return sum(plan.num_batches for _, _, plan in self.rank_deals(epoch, rank))

    def place_of_batch(self, epoch: int, batch: int, rank: int) -> Place:
        """Rank `rank`'s batch number `batch` of `epoch` (counted over every segment it took part in)."""
        if batch < 0:
            raise NestkitError(f"batch {batch}: must not be negative")
        left = batch
        for number, span, plan in self.rank_deals(epoch, rank):
            if left < plan.num_batches:
                return self._place(number, span, plan, rank, left)
            left -= plan.num_batches
        taken = batch - left
        raise PlanError(
            f"batch {batch}: out of range for epoch {epoch} (expected 0..{taken - 1}: rank {rank} takes {taken} "
            "batches in that epoch). For a training step number, use --step"
        )

    def place_of_index(self, epoch: int, index: int) -> Place | None:
        """Who trains micro-batch `index` of `epoch`'s sequence, and at which step (None: nobody:
        dropped by drop_last, or beyond the run's segments)."""
        for number in range(len(self.segments)):
            span = self._span_of_epoch(number, epoch)
            if span is None:
                continue
            plan = self._deal(number, span)
            found = plan.rank_batch_of(index)
            if found is not None and found[1] < plan.num_batches:
                return self._place(number, span, plan, *found)
        return None

    def deal_at(self, place: Place) -> Deal:
        span = self._span_of_epoch(place.segment, place.epoch)
        if span is None:
            raise PlanError(f"{place}: not trained in segment {place.segment}")
        return self._deal(place.segment, span)

    def following(self, place: Place, count: int) -> list[Place]:
        """The `count` micro-batches the rank's stream hands out after `place` (into later epochs)."""
        out: list[Place] = []
        number = place.segment
        for span in self._spans(number, until_epoch=place.epoch):
            if span.epoch < place.epoch:
                continue
            plan = self._deal(number, span)
            first = place.k + 1 if span.epoch == place.epoch else 0
            for k in range(first, plan.num_batches):
                if len(out) >= count:
                    return out
                out.append(self._place(number, span, plan, place.rank, k))
            if len(out) >= count:
                break
        return out

    def world_size_at(self, place: Place) -> int:
        return self.segments[place.segment].world_size


def _skippable(
    per_epoch: int,
    step: int,
    epoch: int,
    until_step: int | None,
    until_epoch: int | None,
    end: int | None,
    max_epochs: int | None,
) -> int:
    """Whole epochs of `per_epoch` steps that lie before the target (0 when there is no target)."""
    if per_epoch <= 0:
        return 0
    limits = []
    if until_step is not None:
        limits.append((until_step - step) // per_epoch)
    if until_epoch is not None:
        limits.append(until_epoch - epoch)
    if not limits:
        return 0
    skip = max(0, min(limits))
    if end is not None:
        skip = min(skip, max(0, (end - step) // per_epoch))
    if max_epochs is not None:
        skip = min(skip, max(0, max_epochs - epoch))
    return skip
