"""Straggler detection in parts: where a step's time goes (heartbeat), the rule that names a slower
rank (and only a slower one), the warning's persistence, and the rank-targeted slow-read hook."""

from __future__ import annotations

import time

import pytest

from nestkit.config import StragglerConfig
from nestkit.core import faults
from nestkit.core.errors import NestkitError
from nestkit.monitor.heartbeat import Heartbeat
from nestkit.monitor.stragglers import RankTiming, StragglerWatch, compare
from nestkit.runfolder.stragglers import read_stragglers

RULE = StragglerConfig(factor=1.5, min_excess_s=0.05, min_steps=5, checks=2, check_interval_s=1.0)


def _timing(rank: int, data: float, compute: float = 0.2, steps: int = 20, loads=()) -> RankTiming:
    wall = data + compute
    return RankTiming(rank, steps, data, compute, 0.0, data / wall, compute / wall, list(loads))


def test_a_step_is_split_into_data_wait_compute_and_waits_for_peers(tmp_path):
    beat = Heartbeat(tmp_path, rank=0, world_size=2)
    for _ in range(2):  # the first step is start-up: kept out of the window
        beat.mark_fetched((0, 0), 0.01)
        beat.mark_fetched((0, 1), 0.25)  # Lightning fetched twice since the last step began
        beat.mark_step_start(3, (0, 0), [{"cut_id": "a", "path": "/d/a.wav"}], [12.5])
        time.sleep(0.05)  # forward
        beat.enter_collective("all-reduce")
        time.sleep(0.1)  # waiting for a peer
        beat.set_phase("optimizer")
        time.sleep(0.02)
        beat.mark_step_end(4)
    cost = beat.timing.last
    assert cost.data_wait_s == pytest.approx(0.26)
    assert 0.1 <= cost.peer_wait_s < 0.15
    assert 0.07 <= cost.compute_s < 0.12  # the step less its wait for the peer
    summary = beat.snapshot()["timing"]
    assert summary["steps"] == 2 and summary["window"] == 1
    assert summary["data_wait_s"] == pytest.approx(0.26) and 0.5 < summary["data_wait_share"] < 0.75
    assert summary["slow_loads"] == [{"ms": 12.5, "cut_id": "a", "path": "/d/a.wav", "manifest": None, "line": None}]


def test_the_rank_that_waits_on_its_data_is_named_with_its_slowest_files():
    slow = [{"ms": 612.0, "cut_id": "u7-L3", "path": "/data/u7.wav", "manifest": "/m/train.json", "line": 3}]
    found = compare([_timing(0, 0.01), _timing(1, 0.6, loads=slow), _timing(2, 0.02)], RULE)
    assert [(s.rank, s.phase) for s in found] == [(1, "data")]
    sentence = found[0].sentence()
    assert sentence.startswith("rank 1 waits 75% of its step time on data (0.6 s per step; its peers 0.015 s)")
    assert sentence.endswith("its slowest files: /data/u7.wav (612 ms, u7-L3, train.json:3)")


def test_a_rank_slow_in_compute_is_named_for_compute():
    found = compare([_timing(0, 0.0, compute=0.2), _timing(1, 0.0, compute=0.5)], RULE)
    assert [(s.rank, s.phase) for s in found] == [(1, "compute")]
    assert found[0].sentence().startswith("rank 1 computes 2.5x as long as its peers")


@pytest.mark.parametrize(
    "timings",
    [
        [_timing(0, 0.01), _timing(1, 0.04)],  # 4x slower, but by 30 ms: noise
        [_timing(0, 0.2), _timing(1, 0.28)],  # 80 ms slower, but only 1.4x
        [_timing(0, 0.01), _timing(1, 0.6, steps=4)],  # too few steps to judge
        [_timing(0, 0.6)],  # no peer
    ],
)
def test_no_straggler_below_the_rule(timings):
    assert compare(timings, RULE) == []


def test_a_warning_needs_consecutive_checks_is_said_once_and_recorded(tmp_path):
    said: list[str] = []
    watch = StragglerWatch(RULE, tmp_path, said.append)
    slow = compare([_timing(0, 0.01), _timing(1, 0.6)], RULE)
    assert watch.observe(slow, step=10) == []  # 1 check of 2
    assert watch.observe([], step=11) == []  # caught up: the streak starts again
    assert watch.observe(slow, step=12) == []
    assert [s.rank for s in watch.observe(slow, step=13)] == [1]
    assert watch.observe(slow, step=14) == []  # said once
    assert len(said) == 1 and "nestkit straggler: rank 1 waits" in said[0]
    records = read_stragglers(tmp_path)
    assert [(r["step"], r["rank"], r["phase"]) for r in records] == [(13, 1, "data")]
    watch.observe([], step=15)
    assert "rank 1 keeps up with its peers again (data)" in said[-1]


def test_slow_reads_can_target_one_rank(monkeypatch):
    assert faults.parse_slow_read("0.25") == (None, 0.25)
    assert faults.parse_slow_read("1:0.3") == (1, 0.3)
    assert faults.parse_slow_read("") == (None, 0.0)
    for bad in ("fast", "1:x", "-1:0.2", "1:-2"):
        with pytest.raises(NestkitError, match="NESTKIT_DEBUG_SLOW_READ_S"):
            faults.parse_slow_read(bad)
    monkeypatch.setattr(faults, "SLOW_READ_RANK", 1)
    monkeypatch.setattr(faults, "SLOW_READ_S", 0.2)
    for rank, slowed in ((1, True), (0, False), (None, False)):
        started = time.perf_counter()
        faults.slow_read("/data/a.wav", rank)
        assert (time.perf_counter() - started >= 0.2) == slowed, rank
