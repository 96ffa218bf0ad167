"""Epoch sequences shared on disk: planned once by one process, mapped by the others, never stale."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nestkit.data.plan import BatchingConfig, plan_sequence
from nestkit.data.plan_cache import cached_sequence

BUCKETED = BatchingConfig(batch_size=None, batch_duration=30.0, num_buckets=5)
SIGNATURE = {"seed": 3, "cuts": 500, "mode": "bucketed"}


def durations() -> np.ndarray:
    return np.random.default_rng(4).uniform(0.5, 9.0, 500)


def plan() -> object:
    return plan_sequence(durations(), BUCKETED, seed=3, epoch=2)


def test_a_cached_sequence_is_the_planned_one_memory_mapped(tmp_path):
    first = cached_sequence(tmp_path, SIGNATURE, 2, plan)
    again = cached_sequence(tmp_path, SIGNATURE, 2, lambda: (_ for _ in ()).throw(AssertionError("planned twice")))
    expected = plan()
    for seq in (first, again):
        assert np.array_equal(seq.rows, expected.rows) and np.array_equal(seq.bounds, expected.bounds)
        assert (seq.total_cuts, seq.too_short, seq.too_long) == (expected.total_cuts, 0, 0)
    assert isinstance(again.rows, np.memmap)
    # another signature (a changed manifest or setting) is another plan, never the stale one
    other = cached_sequence(tmp_path, {**SIGNATURE, "seed": 4}, 2, lambda: plan_sequence(durations(), BUCKETED, 4, 2))
    assert not np.array_equal(other.rows, expected.rows)


WORKER = """
import sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from nestkit.data.plan_cache import cached_sequence
from tests.data.test_plan_cache import SIGNATURE, plan
calls = []
def counted():
    calls.append(1)
    time.sleep(0.5)  # a slow planner: the others must wait for it, not plan too
    return plan()
seq = cached_sequence(__import__("pathlib").Path({cache!r}), SIGNATURE, 2, counted)
print(len(calls), int(np.asarray(seq.rows).sum()))
"""


def test_concurrent_processes_plan_an_epoch_once(tmp_path):
    repo = str(Path(__file__).parents[2])
    code = WORKER.format(repo=repo, cache=str(tmp_path))
    jobs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [job.communicate(timeout=120)[0].split() for job in jobs]
    assert sum(int(o[0]) for o in outputs) == 1, outputs  # one planner
    assert len({o[1] for o in outputs}) == 1  # the same rows everywhere
    assert not list((tmp_path / "plans").glob("*.lock"))


def test_a_builder_that_died_is_replaced(tmp_path):
    first = cached_sequence(tmp_path, SIGNATURE, 2, plan)  # creates the folder layout
    folder = next((tmp_path / "plans").glob("*-epoch2"))
    lock = folder.with_name(folder.name.replace("epoch2", "epoch3") + ".lock")
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))  # its builder is long gone
    started = time.monotonic()
    third = cached_sequence(tmp_path, SIGNATURE, 3, lambda: plan_sequence(durations(), BUCKETED, 3, 3))
    assert time.monotonic() - started < 5
    assert len(third) > 0 and len(first) > 0


def test_an_unwritable_cache_plans_in_memory(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    seq = cached_sequence(blocked, SIGNATURE, 2, plan)
    assert np.array_equal(seq.rows, plan().rows)
