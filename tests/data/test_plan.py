"""The epoch planner: equal batch counts on every rank, every cut once, O(1) lookup, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nestkit.core.errors import PlanError
from nestkit.data.manifest import CutIndex
from nestkit.data.plan import BatchingConfig, plan_epoch
from nestkit.data.sampler import EpochSampler
from tests.helpers import manifest_of

MODES = [
    BatchingConfig(batch_size=4, shuffle=shuffle, drop_last=drop_last)
    for shuffle, drop_last in itertools.product((True, False), (True, False))
] + [
    BatchingConfig(batch_size=None, batch_duration=duration, num_buckets=buckets, shuffle=shuffle, drop_last=drop_last)
    for duration, buckets, shuffle, drop_last in itertools.product((6.0, 20.0), (1, 5), (True, False), (True, False))
]


@pytest.mark.parametrize("world_size", range(1, 9))
@pytest.mark.parametrize("num_cuts", [1, 7, 31, 100, 257])
def test_equal_batches_on_every_rank_and_every_cut_once(world_size, num_cuts):
    durations = np.random.default_rng(num_cuts).uniform(0.5, 8.0, num_cuts)
    for mode in MODES:
        try:
            plan = plan_epoch(durations, mode, seed=3, epoch=2, world_size=world_size)
        except PlanError:
            assert mode.drop_last, "only drop_last may leave too few cuts for one round"
            continue
        per_rank = [
            sum(1 for b in range(plan.num_batches) if len(plan.batch_rows(r, b)) > 0) for r in range(world_size)
        ]
        assert per_rank == [plan.num_batches] * world_size, mode
        counts = np.bincount(plan.rows, minlength=num_cuts)
        if mode.drop_last:
            assert counts.max() == 1
            assert np.sum(counts == 0) == plan.stats.dropped
            assert plan.stats.dropped < world_size * (mode.batch_size or num_cuts)
        else:
            assert counts.min() >= 1, "without drop_last every cut is used"
            assert int(np.sum(counts - 1)) == plan.stats.repeated
            # repeats only fill the last round: at most one per rank
            assert plan.stats.repeated < world_size
        if mode.batch_duration is not None:
            for g in range(len(plan.bounds) - 1):
                rows = plan.rows[plan.bounds[g] : plan.bounds[g + 1]]
                assert len(rows) == 1 or durations[rows].sum() <= mode.batch_duration + 1e-9


def test_duration_filters_are_counted():
    durations = np.array([0.5, 1.0, 2.0, 30.0, 61.0, 3.0])
    plan = plan_epoch(
        durations, BatchingConfig(batch_size=2, min_duration=1.0, max_duration=60.0, drop_last=False), 0, 0, 1
    )
    assert (plan.stats.too_short, plan.stats.too_long) == (1, 1)
    assert sorted(plan.rows.tolist()) == [1, 2, 3, 5]


def test_plan_is_a_pure_function_of_seed_and_epoch():
    durations = np.random.default_rng(0).uniform(1, 10, 500)
    mode = BatchingConfig(batch_size=None, batch_duration=30.0, num_buckets=6)
    a = plan_epoch(durations, mode, seed=11, epoch=4, world_size=3)
    b = plan_epoch(durations, mode, seed=11, epoch=4, world_size=3)
    c = plan_epoch(durations, mode, seed=11, epoch=5, world_size=3)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.bounds, b.bounds)
    assert not np.array_equal(a.rows, c.rows)


def test_bucketed_rounds_keep_ranks_on_similar_durations():
    durations = np.random.default_rng(1).uniform(1, 20, 2000)
    plan = plan_epoch(durations, BatchingConfig(batch_size=None, batch_duration=60.0, num_buckets=10), 0, 0, 4)
    spreads = []
    for b in range(plan.num_batches - 1):  # the last round may mix buckets
        longest = [durations[plan.batch_rows(r, b)].max() for r in range(4)]
        spreads.append(max(longest) - min(longest))
    assert np.median(spreads) < 2.0  # buckets are ~1.9 s wide


def test_locate_finds_where_a_cut_lands():
    durations = np.random.default_rng(2).uniform(1, 5, 50)
    plan = plan_epoch(durations, BatchingConfig(batch_size=3, drop_last=False), 0, 1, 4)
    assert plan.stats.repeated == 2  # 2 cuts left for 4 ranks: two of them are repeated
    for row in range(50):
        places = plan.locate(row)
        assert 1 <= len(places) <= 2
        for rank, batch, slot in places:
            assert plan.batch_rows(rank, batch)[slot] == row


def test_too_few_cuts_for_one_round_is_an_error_not_an_empty_epoch():
    with pytest.raises(PlanError, match="drop_last=false"):
        plan_epoch(np.ones(5), BatchingConfig(batch_size=4, drop_last=True), 0, 0, 2)
    with pytest.raises(PlanError, match="no cuts left"):
        plan_epoch(np.ones(5), BatchingConfig(batch_size=4, min_duration=2.0), 0, 0, 1)


def test_planning_a_million_cuts_is_fast_and_lookup_is_direct():
    import time

    durations = np.random.default_rng(0).uniform(1, 20, 1_000_000)
    started = time.perf_counter()
    plan = plan_epoch(durations, BatchingConfig(batch_size=None, batch_duration=120.0, num_buckets=30), 0, 0, 8)
    # generous bound for a shared CI machine; bench/ records the real figure
    assert time.perf_counter() - started < 10.0
    assert len(plan.batch_rows(7, plan.num_batches - 1)) > 0


@pytest.fixture
def index(tmp_path):
    durations = np.random.default_rng(5).uniform(1, 4, 37).round(2)
    return CutIndex.build(manifest_of(tmp_path / "m.json", [(f"{i}.wav", float(d)) for i, d in enumerate(durations)]))


def test_sampler_yields_the_planned_batches_with_positions(index):
    sampler = EpochSampler(index, BatchingConfig(batch_size=4, drop_last=False), seed=1, rank=1, world_size=3)
    sampler.set_epoch(2)
    batches = list(sampler)
    plan = sampler.plan()
    assert len(batches) == len(sampler) == plan.num_batches
    for n, cuts in enumerate(batches):
        assert [c.id for c in cuts] == [index.cut_id(int(r)) for r in sampler.batch_rows(n)]
        entry = plan.entry(1, n)
        assert [c.custom["plan"] for c in cuts] == [
            {
                "epoch": 2,
                "rank": 1,
                "batch": n,
                "index": entry.index,
                "world_size": 3,
                "consumed_after": entry.consumed_after,
                "repeat": bool(r),
            }
            for r in entry.repeats
        ]
    assert plan.stats.repeated == 2  # 37 cuts, steps of 12: the last cut plus 2 repeats


def test_resume_continues_at_the_exact_batch(index):
    full = EpochSampler(index, BatchingConfig(batch_size=2), seed=9, rank=0, world_size=2)
    full.set_epoch(3)
    expected = [[c.id for c in b] for b in full]
    resumed = EpochSampler(index, BatchingConfig(batch_size=2), seed=9, rank=0, world_size=2)
    resumed.resume(epoch=3, consumed=10)  # 5 steps of 2 ranks done
    assert len(resumed) == len(expected) - 5
    assert [[c.id for c in b] for b in resumed] == expected[5:]
    # the next epoch starts from its beginning again
    resumed.set_epoch(4)
    assert len(list(resumed)) == resumed.plan().num_batches


def test_validation_sampler_is_pinned_to_one_epoch(index):
    sampler = EpochSampler(index, BatchingConfig(batch_size=4, shuffle=False), seed=1, fixed_epoch=0)
    first = [[c.id for c in b] for b in sampler]
    sampler.set_epoch(7)
    assert [[c.id for c in b] for b in sampler] == first
