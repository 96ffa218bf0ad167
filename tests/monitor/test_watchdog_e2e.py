"""The stall watchdog end to end: real `nestkit train` processes, 2-rank gloo DDP, real hangs.

A file whose read blocks (NESTKIT_DEBUG_BLOCK_PATH) and a rank whose data ends early
(NESTKIT_DEBUG_STOP_RANK) must each end in a report that names the cause, and a non-zero exit;
a healthy run with a short stall timeout must never trip the watchdog.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nestkit.config import load_config
from nestkit.data.pipeline import build_pipeline
from nestkit.monitor.watchdog import STALL_EXIT_CODE
from nestkit.runfolder.heartbeats import read_heartbeats
from tests.helpers import write_train_config

STALL_S = 8  # watchdog.stall_timeout_s in these tests
BLOCKED_BATCH = 5  # the batch of rank 1 (epoch 0) that holds the blocked file
WORLD = 2


def nestkit(*args: str, cwd: Path, env: dict | None = None, timeout: float = 110) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def watched_config(tmp_path: Path, corpus: dict, name: str, **sections) -> str:
    """2 ranks, 2 workers each, a short stall timeout; unbounded sample reads (so a blocked read is
    a stall, not a quarantined substitute)."""
    model = {"train_ds": {"num_workers": 2, "sample_timeout_s": 0}}
    nestkit_section = {
        "seed": 3,
        "dataloader_timeout_s": 0,
        "watchdog": {"stall_timeout_s": STALL_S, "first_step_timeout_s": 60, "dump_grace_s": 10},
    }
    return write_train_config(
        tmp_path / f"{name}.yaml",
        corpus["train"],
        corpus["noise"],
        name=name,
        model=_merge(model, sections.pop("model", {})),
        trainer=_merge({"devices": WORLD, "strategy": "ddp", "max_steps": 40}, sections.pop("trainer", {})),
        nestkit=_merge(nestkit_section, sections.pop("nestkit", {})),
        **sections,
    )


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def report_of(run: Path) -> dict:
    incidents = sorted((run / "stall").iterdir(), key=lambda p: int(p.name))
    assert incidents, f"no stall incident under {run / 'stall'}"
    return json.loads((incidents[-1] / "report.json").read_text())


# ------------------------------------------------------------------------------------------------
# (a) a file whose read never returns


@pytest.fixture(scope="module")
def data_stall(tmp_path_factory, corpus):
    """One training run in which rank 1's batch BLOCKED_BATCH holds a file whose read blocks."""
    tmp = tmp_path_factory.mktemp("data_stall")
    cfg_path = watched_config(tmp, corpus, "stall")
    cfg = load_config(cfg_path, []).config
    cuts = list(build_pipeline(cfg, "train", 1, WORLD).sampler.batch_cuts(BLOCKED_BATCH, 0))
    blocked = cuts[0].recording.sources[0].source
    result = nestkit("train", cfg_path, cwd=tmp, env={"NESTKIT_DEBUG_BLOCK_PATH": blocked})
    return {
        "tmp": tmp,
        "config": cfg_path,
        "run": cfg.run_dir.resolve(),
        "blocked": blocked,
        "cut": cuts[0],
        "result": result,
    }


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_blocked_read_ends_in_a_report_naming_the_file_and_a_nonzero_exit(data_stall):
    result, run, blocked = data_stall["result"], data_stall["run"], data_stall["blocked"]
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode in (STALL_EXIT_CODE, -9), result.stderr[
        -3000:
    ]  # the watchdog's exit, or the launcher's kill
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "data stall: rank 1" in result.stderr and blocked in result.stderr  # the printed verdict

    report = report_of(run)
    verdict = report["verdict"]
    assert verdict["kind"] == "data_stall", verdict
    assert verdict["culprits"] == [1]
    assert blocked in verdict["sentence"] and f"batch {BLOCKED_BATCH}" in verdict["sentence"], verdict
    cut = data_stall["cut"]
    assert f"{cut.id}" in verdict["sentence"] and f"train.json:{cut.custom['line']}" in verdict["sentence"]
    assert "rank 0 waiting in" in verdict["sentence"], verdict  # the peer waits in a collective

    ranks = {r["rank"]: r for r in report["ranks"]}
    assert ranks[1]["phase"] == "fetch" and ranks[1]["waiting_for"]["batch"] == BLOCKED_BATCH
    assert ranks[0]["phase"] == "collective", ranks[0]  # rank 0 is reported as waiting for its peer
    reader = [w for w in ranks[1]["loaders"] if w["state"] == "loading"]
    assert len(reader) == 1 and reader[0]["path"] == blocked and reader[0]["batch"]["batch"] == BLOCKED_BATCH
    assert "faults.py" in reader[0]["frame"]  # from the worker's own stack dump (SIGUSR1 -> faulthandler)
    # the stall was caught within stall_timeout + 30 s of the read that blocked (seconds: until the dump)
    assert STALL_S <= reader[0]["seconds"] < STALL_S + 30

    # every rank dumped its threads and its workers' stacks
    incident = run / "stall" / str(report["incident"])
    for rank in range(WORLD):
        assert "MainThread" in (incident / f"rank{rank}" / "threads.txt").read_text()
        assert len(list((incident / f"rank{rank}").glob("worker[0-9].txt"))) == 2
    # the job is gone: no rank's process and no DataLoader worker is left behind
    for beat in read_heartbeats(run).values():
        assert beat["status"] == "aborted"
        for pid in [beat["pid"]] + [w["pid"] for w in beat["workers"]]:
            assert _gone_within(pid, 5.0), f"process {pid} survived the abort"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_nestkit_stacks_prints_the_verdict_naming_the_file(data_stall):
    result = nestkit("stacks", str(data_stall["run"]), "--format", "text", cwd=data_stall["tmp"])
    assert result.returncode == 0, result.stderr
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: data stall: rank 1, worker"), verdict
    assert data_stall["blocked"] in verdict and f"in batch {BLOCKED_BATCH}" in verdict
    table = nestkit("stacks", str(data_stall["run"]), cwd=data_stall["tmp"])
    assert table.returncode == 0 and "data stall" in table.stdout and "loading" in table.stdout
    as_json = json.loads(nestkit("stacks", str(data_stall["run"]), "--format", "json", cwd=data_stall["tmp"]).stdout)
    assert as_json["verdict"]["kind"] == "data_stall"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_lookup_and_replay_batch_name_the_same_file(data_stall):
    tmp, config = data_stall["tmp"], data_stall["config"]
    common = ["--rank", "1", "--world-size", str(WORLD), "--epoch", "0", "--format", "json"]
    named_by_stacks = report_of(data_stall["run"])["ranks"][1]["waiting_for"]["cuts"][0]["path"]
    lookup = nestkit("lookup", config, "--batch", str(BLOCKED_BATCH), "--no-load", *common, cwd=tmp)
    assert lookup.returncode == 0, lookup.stderr
    (looked_up,) = json.loads(lookup.stdout)["ranks"]
    assert (looked_up["epoch"], looked_up["batch"]) == (0, BLOCKED_BATCH)
    assert looked_up["cuts"][0]["path"] == named_by_stacks == data_stall["blocked"]
    # replaying the batch with the same hook reproduces the hang, bounded, and names the same file
    replay = nestkit(
        "replay-batch",
        str(BLOCKED_BATCH),
        "--config",
        config,
        "--timeout",
        "3",
        *common,
        "--repro-dir",
        str(tmp / "repro"),
        cwd=tmp,
        env={"NESTKIT_DEBUG_BLOCK_PATH": data_stall["blocked"]},
    )
    assert replay.returncode == 1, replay.stderr
    timed_out = [s["path"] for s in json.loads(replay.stdout)["samples"] if s["status"] == "timeout"]
    assert timed_out == [named_by_stacks]


def _gone_within(pid: int, seconds: float) -> bool:
    """The process exited (or is a zombie) within `seconds` (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------------------------
# (b) a rank that stops early


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_b_a_rank_that_stops_early_is_a_collective_mismatch(tmp_path, corpus):
    cfg_path = watched_config(tmp_path, corpus, "uneven")
    result = nestkit("train", cfg_path, cwd=tmp_path, env={"NESTKIT_DEBUG_STOP_RANK": "1:3"})
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    report = report_of(tmp_path / "runs" / "uneven")
    verdict = report["verdict"]
    assert verdict["kind"] == "collective_mismatch" and verdict["culprits"] == [1], verdict
    assert "rank 1 left the training loop after 3 steps" in verdict["sentence"]
    assert "rank 0 waits in" in verdict["sentence"] and "at step 3" in verdict["sentence"]
    ranks = {r["rank"]: r for r in report["ranks"]}
    assert ranks[1]["data_end"]["after"] == {"epoch": 0, "batch": 2}
    assert ranks[0]["phase"] == "collective"
    stacks = nestkit("stacks", str(tmp_path / "runs" / "uneven"), "--format", "text", cwd=tmp_path)
    assert "verdict: collective mismatch: rank 1" in stacks.stdout


# ------------------------------------------------------------------------------------------------
# (c) a healthy run


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_c_a_healthy_run_of_hundreds_of_steps_never_trips_a_short_timeout(tmp_path, corpus):
    steps = 300
    cfg_path = watched_config(
        tmp_path,
        corpus,
        "healthy",
        validation=corpus["validation"],
        model={"train_ds": {"num_workers": 1}, "validation_ds": {"num_workers": 1}},
        trainer={"max_steps": steps, "val_check_interval": 100, "log_every_n_steps": 50},
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": 100}},
        nestkit={"watchdog": {"stall_timeout_s": 4, "slow_phase_timeout_s": 60}},
    )
    result = nestkit("train", cfg_path, cwd=tmp_path, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "healthy"
    assert not (run / "stall").exists(), "the watchdog fired on a healthy run"
    beats = read_heartbeats(run)
    assert sorted(beats) == [0, 1]
    for beat in beats.values():
        assert beat["status"] == "finished" and beat["steps_done"] == steps
        assert beat["collective"]["round"] == steps  # one gradient all-reduce per step went through the hook
    stacks = nestkit("stacks", str(run), "--format", "json", cwd=tmp_path)
    assert json.loads(stacks.stdout)["verdict"]["kind"] == "finished"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_c_slow_storage_is_reported_as_slow_not_declared_a_stall(tmp_path, corpus):
    """Every read takes 1 s (a slow mount): waits for a batch exceed the 2 s stall timeout, but the
    loaders keep starting and finishing reads, so the watchdog says so and lets the run finish."""
    cfg_path = watched_config(
        tmp_path, corpus, "slowmount", trainer={"max_steps": 6}, nestkit={"watchdog": {"stall_timeout_s": 2}}
    )
    result = nestkit("train", cfg_path, cwd=tmp_path, env={"NESTKIT_DEBUG_SLOW_READ_S": "1"}, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "slowmount"
    assert not (run / "stall").exists(), result.stderr[-3000:]
    note = " ".join(result.stderr.split())
    assert "Slow data loading, not a stall" in note and "started reading" in note, result.stderr[-3000:]
    assert all(beat["steps_done"] == 6 for beat in read_heartbeats(run).values())


# ------------------------------------------------------------------------------------------------
# The DataLoader's own timeout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_dataloader_timeout_names_rank_step_batch_cuts_and_files(tmp_path, corpus):
    cfg_path = watched_config(
        tmp_path,
        corpus,
        "dltimeout",
        model={"train_ds": {"num_workers": 1}},
        trainer={"devices": 1},
        nestkit={"dataloader_timeout_s": 4, "watchdog": {"stall_timeout_s": 60}},
    )
    cfg = load_config(cfg_path, []).config
    cuts = list(build_pipeline(cfg, "train", 0, 1).sampler.batch_cuts(3, 0))
    blocked = cuts[1].recording.sources[0].source
    result = nestkit("train", cfg_path, cwd=tmp_path, env={"NESTKIT_DEBUG_BLOCK_PATH": blocked})
    assert result.returncode == 1, result.stderr[-3000:]
    error = " ".join(result.stderr.split())  # rich wraps long lines
    assert "Traceback" not in result.stderr
    assert "rank 0 step" in error and "DataLoader timed out" in error and "Waiting for epoch 0 batch 3" in error
    assert blocked in error and f"{cuts[1].id}" in error and f"train.json:{cuts[1].custom['line']}" in error
    assert "Worker0 (pid" in error and f"reading {blocked}" in error
    report = report_of(tmp_path / "runs" / "dltimeout")
    assert report["verdict"]["kind"] == "data_stall" and blocked in report["verdict"]["sentence"]
