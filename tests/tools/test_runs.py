"""Finding the run a debugging command is about: the folder you stand in, else the newest under ./runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nestkit.config import save_config
from nestkit.core.errors import UsageError
from nestkit.runfolder.batch_log import BatchLogWriter
from nestkit.runfolder.layout import config_path
from nestkit.tools.runs import enclosing_run_folder, find_run, last_log_write, open_target, run_folders_under
from tests.helpers import data_config, manifest_of, write_speech


@pytest.fixture
def config(tmp_path):
    files = [(write_speech(tmp_path / f"s{i}.wav", 1.2, seed=i), 1.2) for i in range(8)]
    return data_config(manifest_of(tmp_path / "train.json", files), batch_size=2)


def make_run(folder: Path, cfg, logged_at: float | None = None, ranks: int = 1) -> Path:
    """A run folder as `nestkit train` leaves it: its config.yaml and a batch log per rank."""
    save_config(cfg, config_path(folder))
    for rank in range(ranks):
        writer = BatchLogWriter(folder, rank)
        writer.append({"step": 0, "epoch": 0, "batch": rank, "fingerprint": "0", "cut_ids": []})
        writer.close()
        if logged_at is not None:
            os.utime(folder / "batches" / f"rank{rank}.jsonl", (logged_at, logged_at))
    return folder


def test_the_most_recent_run_is_the_one_whose_logs_were_written_last(tmp_path, config, monkeypatch):
    now = time.time()
    old = make_run(tmp_path / "runs" / "a-newer-name", config, logged_at=now - 3600)
    new = make_run(tmp_path / "runs" / "b", config, logged_at=now - 10)
    (tmp_path / "runs" / "not-a-run").mkdir()
    os.utime(config_path(old), (now, now))  # a config written later does not make a run more recent
    assert run_folders_under(tmp_path / "runs") == [new, old]
    assert last_log_write(new) == pytest.approx(now - 10)
    monkeypatch.chdir(tmp_path)
    folder, how = find_run()
    assert folder.resolve() == new.resolve() and how == "the most recent of 2 under ./runs"


def test_standing_in_a_run_folder_or_below_it_wins(tmp_path, config, monkeypatch):
    make_run(tmp_path / "runs" / "newest", config, logged_at=time.time())
    here = make_run(tmp_path / "runs" / "older", config, logged_at=time.time() - 100)
    (here / "checkpoints").mkdir()
    monkeypatch.chdir(here / "checkpoints")
    assert enclosing_run_folder(Path.cwd()) == here.resolve()
    assert find_run() == (here.resolve(), "the run folder you are in")


def test_no_run_anywhere_says_where_it_looked_and_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as no_runs_dir:
        find_run()
    message = str(no_runs_dir.value)
    assert "there is no ./runs folder" in message and str(tmp_path) in message
    assert "Pass a training config or a run folder" in message and "\n" not in message
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"\./runs has no run folder"):
        find_run()


def test_a_target_is_a_config_a_run_folder_or_found(tmp_path, config, monkeypatch):
    run = make_run(tmp_path / "runs" / "r", config, ranks=2)
    monkeypatch.chdir(tmp_path)
    by_folder = open_target(run, ["model.train_ds.shuffle=false"])
    assert by_folder.run_dir == run and by_folder.found is None and by_folder.config.model.train_ds.shuffle is False
    found = open_target(None, [])
    assert found.announcement() == "run folder runs/r (the most recent under ./runs)"
    assert found.config.model.train_ds.manifest_filepath == config.model.train_ds.manifest_filepath
    # an override of the world size wins over the logs, and says that the logs describe other batches
    three = open_target(run, ["trainer.devices=3"])
    assert three.world_size == 3 and "world size 3 from the overrides" in " ".join(three.notes)
    asked = open_target(run, ["trainer.devices=3"], world_size=4)
    assert asked.world_size == 4 and "world size 4 from --world-size, but run folder" in " ".join(asked.notes)
    assert open_target(run, [], world_size=2).notes == []  # as logged


def test_a_config_other_than_the_runs_is_named_by_its_differing_keys(tmp_path, config, monkeypatch):
    run = make_run(tmp_path / "runs" / "r", config)
    other = tmp_path / "other.yaml"
    config.model.train_ds.batch_size = 4
    config.trainer.max_steps = 7  # not data settings: not named
    config.model.train_ds.sample_timeout_s = 5.0
    save_config(config, other)
    target = open_target(other, [], run_dir=run)
    [note] = target.notes
    assert "(model.train_ds.batch_size 2 there, 4 here)" in note
    assert open_target(run, []).notes == []  # the run folder's own config agrees with itself


@pytest.mark.parametrize(
    "name, expected",
    [
        ("missing.yaml", "no such file or folder"),
        ("runs", "it holds the run folder(s) runs/r: pass one of them"),
        ("plain", "a folder but not a run folder"),
    ],
)
def test_unusable_targets_are_usage_errors(tmp_path, config, monkeypatch, name, expected):
    make_run(tmp_path / "runs" / "r", config)
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        open_target(name, [])
