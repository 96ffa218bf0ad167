"""Worker processes: a stalled file is a `timeout`, a crash a `worker_crash`, and the rest is still checked.

Faults are injected with the NESTKIT_VALIDATE_TEST_FAULT hook: `stall` blocks the worker in a real
read(2) on a pipe nobody writes to (a thread could never be woken from it; only killing the process
helps), `crash` kills it with SIGSEGV, `raise` throws an unexpected exception.
"""

from __future__ import annotations

import time

import pytest

from nestkit.validate.audio import FAULT_ENV, CheckSettings, FileTask, Segment
from nestkit.validate.pool import check_files
from tests.validate.validate_corpus import found, nemo, run_json, speech, write_jsonl


def _corpus(folder, count=8):
    files = [speech(folder, f"u{i}.wav", 1.2, seed=i) for i in range(count)]
    lines = [nemo(path, 1.2) for path in files]
    lines.insert(5, nemo("gone.wav", 1.2))  # a real finding after the faulty file
    return files, write_jsonl(folder / "train.json", lines)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("jobs", [1, 2])
def test_stalled_file_is_reported_as_timeout_and_the_rest_is_checked(tmp_path, jobs):
    files, manifest = _corpus(tmp_path)
    started = time.monotonic()
    done, report = run_json(manifest, "--timeout", "1", "--jobs", str(jobs), env={FAULT_ENV: f"stall:{files[2]}"})
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    got = found(report)
    assert got == {(manifest, 3): {"timeout"}, (manifest, 6): {"missing"}}
    [timeout] = [f for f in report["findings"] if f["category"] == "timeout"]
    assert timeout["path"] == files[2] and "expected <= 1 s per file" in timeout["reason"]
    assert report["summary"]["files"] == 9
    assert report["summary"]["elapsed_s"] < 1 + 5  # one time limit, plus starting a replacement worker
    assert elapsed < 30


@pytest.mark.timeout(60)
def test_worker_crash_is_reported_and_the_rest_is_checked(tmp_path):
    files, manifest = _corpus(tmp_path)
    _done, report = run_json(manifest, "--jobs", "1", env={FAULT_ENV: f"crash:{files[4]}"})
    assert found(report) == {(manifest, 5): {"worker_crash"}, (manifest, 6): {"missing"}}
    [crash] = [f for f in report["findings"] if f["category"] == "worker_crash"]
    assert "SIGSEGV" in crash["reason"]


@pytest.mark.timeout(60)
def test_unexpected_exception_is_an_internal_error_finding(tmp_path):
    files, manifest = _corpus(tmp_path)
    _done, report = run_json(manifest, env={FAULT_ENV: f"raise:{files[0]}"})
    assert found(report) == {(manifest, 1): {"internal_error"}, (manifest, 6): {"missing"}}
    assert "RuntimeError: injected" in report["findings"][0]["reason"]


@pytest.mark.timeout(60)
def test_every_task_gets_exactly_one_result_after_a_stall(tmp_path, monkeypatch):
    """The library API: the stalled file's batch-mates are re-queued, none lost and none doubled."""
    files = [speech(tmp_path, f"u{i}.wav", 1.0, seed=i) for i in range(12)]
    tasks = [FileTask(path, (Segment(i, 0.0, 1.0, False, False),)) for i, path in enumerate(files)]
    monkeypatch.setenv(FAULT_ENV, f"stall:{files[5]}")
    results: dict[int, list] = {}
    check_files(
        tasks,
        CheckSettings(decode=False),
        lambda i, r: results.setdefault(i, []).append(r),
        jobs=1,
        timeout_s=0.5,
    )
    assert sorted(results) == list(range(12)) and all(len(r) == 1 for r in results.values())
    assert [cat for _, cat, _ in results[5][0].findings] == ["timeout"]
    assert all(not results[i][0].findings for i in range(12) if i != 5)
