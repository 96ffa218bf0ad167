"""The shard-aware order (`order: shards`) keeps every guarantee of the planner -- every kept cut once,
equal steps, the same sequence for every world size, a pure function of (seed, epoch) -- and reads
shards far more locally than the global shuffle. Layouts here are synthetic (shards of uneven sizes,
index rows not in shard order); tests/data/shards/test_shard_order_corpus.py runs it on real shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nestkit.core.errors import PlanError
from nestkit.data.locality import locality
from nestkit.data.plan import BatchingConfig, ShardLayout, deal, plan_sequence

REPO = Path(__file__).parents[2]

MODES = {
    "fixed": dict(batch_size=5, drop_last=False),
    "fixed-drop": dict(batch_size=5, drop_last=True),
    "fixed-sorted": dict(batch_size=5, drop_last=False, shuffle=False),
    "bucketed": dict(batch_size=None, batch_duration=40.0, num_buckets=6, drop_last=False),
    "bucketed-drop": dict(batch_size=None, batch_duration=40.0, num_buckets=6, drop_last=True),
    "bucketed-sorted": dict(batch_size=None, batch_duration=40.0, num_buckets=6, shuffle=False),
}
FILTER = dict(min_duration=1.5, max_duration=13.0)


def corpus(cuts: int = 613, shards: int = 37, seed: int = 0) -> tuple[np.ndarray, ShardLayout]:
    """Durations and a layout: shards of uneven sizes, members at increasing offsets, rows scrambled (an
    index lists sources in config order, which need not be shard order)."""
    rng = np.random.default_rng(seed)
    shard = np.sort(rng.integers(0, shards, cuts)).astype(np.int32)
    sizes = rng.integers(20_000, 400_000, cuts)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(shard)) + 1))
    offset = np.cumsum(sizes) - sizes
    offset -= np.repeat(offset[starts], np.diff(np.concatenate((starts, [cuts]))))  # restart in every shard
    offset += 512  # past the first tar header
    scramble = rng.permutation(cuts)
    return rng.uniform(0.5, 15.0, cuts), ShardLayout(shard[scramble], offset[scramble].astype(np.int64))


def shards(mode: str, **more) -> BatchingConfig:
    return BatchingConfig(**{**MODES[mode], **FILTER, "order": "shards", "shard_window": 3, **more})


def kept_rows(durations: np.ndarray) -> set[int]:
    return set(np.flatnonzero((durations >= FILTER["min_duration"]) & (durations <= FILTER["max_duration"])).tolist())


@pytest.mark.parametrize("mode", MODES)
def test_every_kept_cut_once_per_epoch_and_the_filters_hold(mode):
    durations, layout = corpus()
    for epoch in (0, 1):
        sequence = plan_sequence(durations, shards(mode), seed=4, epoch=epoch, layout=layout)
        rows = sequence.rows.tolist()
        assert len(rows) == len(set(rows)) and set(rows) <= kept_rows(durations)
        assert len(rows) + sequence.partial_dropped == len(kept_rows(durations))
        assert sequence.too_short == int(np.sum(durations < 1.5)) and sequence.too_long == int(np.sum(durations > 13))
        if MODES[mode]["batch_size"]:
            lengths = np.diff(sequence.bounds)
            assert (lengths[:-1] == 5).all() and 1 <= lengths[-1] <= 5  # only the last may be short
            assert sequence.partial_dropped == (len(kept_rows(durations)) % 5 if MODES[mode]["drop_last"] else 0)
        else:
            for g in range(len(sequence)):
                batch = sequence.micro_batch(g)
                assert len(batch) == 1 or durations[batch].sum() <= 40.0


@pytest.mark.parametrize("mode", MODES)
def test_equal_steps_and_the_same_sequence_for_every_world_size(mode):
    durations, layout = corpus()
    batching = shards(mode)
    sequence = plan_sequence(durations, batching, seed=4, epoch=2, layout=layout)
    for world in range(1, 9):
        for accumulate in (1, 2):
            dealt = deal(sequence, world, accumulate=accumulate, drop_last=batching.drop_last)
            steps = dealt.num_batches
            assert steps >= 1
            used = []
            for k in range(steps):
                for rank in range(world):
                    entry = dealt.entry(rank, k)
                    if entry.index < len(sequence):  # a body micro-batch: rank r takes k*W + r of the sequence
                        assert entry.index == k * world + rank
                        assert entry.rows.tolist() == sequence.micro_batch(entry.index).tolist()
                    used.extend(entry.rows[~entry.repeats].tolist())
            # every cut of the sequence once, except what drop_last drops (counted), for any world size
            assert len(used) == len(set(used))
            assert len(used) + dealt.stats.dropped == len(kept_rows(durations))


@pytest.mark.parametrize("mode", MODES)
def test_a_micro_batch_reads_forward_through_its_shards(mode):
    durations, layout = corpus()
    sequence = plan_sequence(durations, shards(mode), seed=1, epoch=0, layout=layout)
    for g in range(len(sequence)):
        batch = sequence.micro_batch(g)
        shard, offset = layout.shard[batch], layout.offset[batch]
        same = shard[1:] == shard[:-1]
        assert (offset[1:][same] > offset[:-1][same]).all()  # forward inside a shard
        assert len(np.unique(shard)) == 1 + int(np.sum(~same))  # each shard once: no going back to it


def test_shards_and_their_micro_batches_are_shuffled_by_seed_and_epoch_only():
    durations, layout = corpus()
    plan = lambda seed, epoch, mode="fixed": plan_sequence(durations, shards(mode), seed, epoch, layout)  # noqa: E731
    first_shards = lambda s: [int(layout.shard[s.micro_batch(g)[0]]) for g in range(len(s))]  # noqa: E731
    for mode in ("fixed", "bucketed"):
        a, again = plan(3, 1, mode), plan(3, 1, mode)
        assert a.rows.tolist() == again.rows.tolist() and a.bounds.tolist() == again.bounds.tolist()
        assert plan(3, 2, mode).rows.tolist() != a.rows.tolist() and plan(4, 1, mode).rows.tolist() != a.rows.tolist()
    walk = first_shards(plan(3, 1))
    # shards are walked in a shuffled order (not 0, 1, 2, ...), a window's micro-batches are mixed
    assert list(dict.fromkeys(walk)) != sorted(set(walk))
    assert walk != sorted(walk, key=list(dict.fromkeys(walk)).index)
    # unshuffled, the walk is the corpus's own order: shard after shard, members by offset
    unshuffled = plan_sequence(durations, shards("fixed-sorted"), 3, 1, layout)
    assert first_shards(unshuffled) == sorted(first_shards(unshuffled))


def test_the_order_is_the_same_in_a_fresh_process():
    script = (
        "import json, sys\n"
        "from tests.data.test_shard_order import corpus, shards\n"
        "from nestkit.data.plan import plan_sequence\n"
        "durations, layout = corpus()\n"
        "out = {m: plan_sequence(durations, shards(m), 9, 3, layout).rows.tolist() for m in sys.argv[1:]}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", script, *MODES], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    durations, layout = corpus()
    here = {m: plan_sequence(durations, shards(m), 9, 3, layout).rows.tolist() for m in MODES}
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


@pytest.mark.parametrize("mode", ["fixed", "bucketed"])
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_the_shards_order_reads_far_more_locally_than_the_global_shuffle(mode, world):
    durations, layout = corpus(cuts=2000, shards=50)
    by = {}
    for order in ("global", "shards"):
        batching = BatchingConfig(**{**MODES[mode], "order": order, "shard_window": 2})
        by[order] = locality(deal(plan_sequence(durations, batching, 0, 0, layout), world), layout)
    # a step reads a handful of shards, not one per member; a rank's reads mostly go forward in one shard
    assert by["shards"].shards_per_step * 2 <= by["global"].shards_per_step
    assert by["shards"].forward_reads >= 0.6 and by["global"].forward_reads <= 0.1


def test_a_smaller_window_reads_fewer_shards_per_step():
    durations, layout = corpus(cuts=2000, shards=50)
    per_step = {
        window: locality(
            deal(
                plan_sequence(
                    durations, BatchingConfig(batch_size=5, order="shards", shard_window=window), 0, 0, layout
                ),
                8,
            ),
            layout,
        ).shards_per_step
        for window in (1, 4, 16)
    }
    assert per_step[1] < per_step[4] < per_step[16]


def test_the_shards_order_needs_a_layout_and_says_so():
    durations, _ = corpus()
    with pytest.raises(PlanError) as caught:
        plan_sequence(durations, BatchingConfig(batch_size=4, order="shards", source="model.train_ds"), 0, 0)
    assert str(caught.value).startswith("model.train_ds.order: 'shards' needs each cut's shard")
    assert "got per-file manifests" in str(caught.value) and "order: global" in str(caught.value)
