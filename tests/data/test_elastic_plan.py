"""The planner across world-size changes: one sequence of micro-batches per epoch, dealt to any
number of ranks from any position, every cut used once, equal steps on every rank."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from nestkit.core.errors import PlanError
from nestkit.data.plan import BatchingConfig, deal, plan_sequence

MODES = [
    BatchingConfig(batch_size=3, shuffle=shuffle, drop_last=drop_last, min_duration=min_duration)
    for shuffle, drop_last, min_duration in itertools.product((True, False), (True, False), (None, 1.0))
] + [
    BatchingConfig(
        batch_size=None,
        batch_duration=12.0,
        num_buckets=buckets,
        shuffle=shuffle,
        drop_last=drop_last,
        max_duration=max_duration,
    )
    for buckets, shuffle, drop_last, max_duration in itertools.product(
        (1, 4), (True, False), (True, False), (None, 7.0)
    )
]


def durations(n: int = 157, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 8.0, n)


def train(sequence, segments, drop_last):
    """Simulate an epoch trained in segments [(world_size, accumulate, steps or None=to the end)]:
    returns every cut consumed, each step's micro-batch indexes (rank-major per step), and the
    batches each rank took per segment."""
    start, used, steps, per_rank = 0, [], [], []
    for world, accumulate, count in segments:
        plan = deal(sequence, world, start, accumulate, drop_last)
        total_steps = plan.num_batches // accumulate
        count = total_steps if count is None else min(count, total_steps)
        per_rank.append(plan.num_batches)
        for s in range(count):
            step = []
            for a in range(accumulate):
                for rank in range(world):
                    entry = plan.entry(rank, s * accumulate + a)
                    used.extend(entry.rows.tolist())
                    step.append(entry.index)
            steps.append(step)
            start = entry.consumed_after
    return used, steps, per_rank, start


@pytest.mark.parametrize(
    "mode", MODES, ids=lambda m: f"{m.batch_size or m.batch_duration}-{m.num_buckets}-{m.shuffle}-{m.drop_last}"
)
def test_the_sequence_does_not_depend_on_the_world_size(mode):
    sequence = plan_sequence(durations(), mode, seed=5, epoch=3)
    for world, accumulate in itertools.product(range(1, 9), (1, 2, 3)):
        try:
            plan = deal(sequence, world, 0, accumulate, mode.drop_last)
        except PlanError:
            assert mode.drop_last
            continue
        body = plan.full_steps * world * accumulate
        for k in range(body // world):
            for rank in range(world):
                entry = plan.entry(rank, k)
                assert entry.index == k * world + rank
                assert np.array_equal(entry.rows, sequence.micro_batch(entry.index))


@pytest.mark.parametrize(
    "mode", MODES, ids=lambda m: f"{m.batch_size or m.batch_duration}-{m.num_buckets}-{m.shuffle}-{m.drop_last}"
)
@pytest.mark.parametrize(
    "layout",
    [
        [(2, 1, 7), (1, 2, 5), (2, 1, None)],
        [(3, 1, 4), (2, 1, None)],
        [(8, 1, 2), (5, 1, 3), (1, 1, 9), (7, 2, None)],
        [(1, 3, 6), (4, 1, None)],
    ],
)
def test_every_cut_once_across_world_size_changes(mode, layout):
    dur = durations()
    sequence = plan_sequence(dur, mode, seed=1, epoch=0)
    kept = np.flatnonzero(mode.keep_mask(dur))
    try:
        used, _, per_rank, end = train(sequence, layout, mode.drop_last)
    except PlanError:
        assert mode.drop_last  # a first deal with too few micro-batches for one step
        return
    # the epoch ends at its end, or (drop_last) where too little is left for one step of the last layout
    assert end == len(sequence) or (mode.drop_last and per_rank[-1] == 0)
    counts = Counter(used)
    assert set(counts) <= set(kept.tolist())
    if mode.drop_last:
        assert max(counts.values()) == 1, "drop_last never repeats"
    else:
        missing = set(kept.tolist()) - set(counts)
        assert not missing, f"{len(missing)} cuts never used"
        repeats = sum(c - 1 for c in counts.values())
        last_world, last_acc = layout[-1][0], layout[-1][1]
        assert repeats < last_world * last_acc, "repeats only complete the last step"


@pytest.mark.parametrize(
    "mode", MODES, ids=lambda m: f"{m.batch_size or m.batch_duration}-{m.num_buckets}-{m.shuffle}-{m.drop_last}"
)
def test_the_same_global_batch_trains_the_same_micro_batches_in_every_step(mode):
    sequence = plan_sequence(durations(203, seed=3), mode, seed=2, epoch=1)
    try:
        _, uninterrupted, _, _ = train(sequence, [(2, 1, None)], mode.drop_last)
    except PlanError:
        assert mode.drop_last
        return
    _, elastic, _, _ = train(sequence, [(2, 1, 9), (1, 2, 6), (2, 1, None)], mode.drop_last)
    assert [sorted(s) for s in elastic] == [sorted(s) for s in uninterrupted]  # epoch end included


def test_equal_batches_on_every_rank_from_any_position():
    sequence = plan_sequence(durations(), BatchingConfig(batch_size=2, drop_last=False), seed=0, epoch=0)
    for start in range(len(sequence) + 1):
        for world in range(1, 9):
            plan = deal(sequence, world, start, 1, drop_last=False)
            sizes = [sum(len(plan.batch_rows(r, k)) > 0 for k in range(plan.num_batches)) for r in range(world)]
            assert sizes == [plan.num_batches] * world


def test_a_first_step_that_cannot_be_filled_is_an_error_naming_the_settings():
    sequence = plan_sequence(np.ones(10), BatchingConfig(batch_size=4, drop_last=True, source="model.train_ds"), 0, 0)
    with pytest.raises(PlanError, match=r"model.train_ds: not a single full step .* 4 rank\(s\) x accumulate 2"):
        deal(sequence, 4, 0, 2, drop_last=True, source="model.train_ds")
    # resumed near the end of an epoch, a larger world size just ends the epoch (counted as dropped)
    assert deal(sequence, 4, 1, 2, drop_last=True).num_batches == 0
