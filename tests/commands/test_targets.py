"""`lookup` and `replay-batch` take one shape, `[TARGET] [KEY=VALUE]...`, against a real training run;
with no target they find the run from where you stand and say which in their first line."""

from __future__ import annotations

import json

import pytest

from nestkit.runfolder.batch_log import read_batch_log
from tests.helpers import run_nestkit, write_train_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One rank, 8 steps (into the second epoch): its folder, config and run folder."""
    from nestkit.data.synthetic import make_corpus

    folder = tmp_path_factory.mktemp("targets")
    corpus = make_corpus(folder / "data", num_utterances=10, num_noises=2, min_seconds=1.2, max_seconds=2.0, seed=3)
    config = write_train_config(folder / "config.yaml", corpus["train"], corpus["noise"], name="tiny")
    result = run_nestkit("train", config, "trainer.max_steps=8", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    run = folder / "runs" / "tiny"
    return {"folder": folder, "config": config, "run": run, "log": {r["step"]: r for r in read_batch_log(run, 0)}}


@pytest.mark.slow
def test_the_missions_words_work_with_no_path(trained):
    folder, logged = trained["folder"], trained["log"]
    epoch, batch = logged[6]["epoch"], logged[6]["batch"]
    assert epoch == 1, "step 6 is in the second epoch"
    replayed = run_nestkit("replay-batch", "6", cwd=folder)  # batch 6 counted from the start of training
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    lines = replayed.stdout.splitlines()
    assert lines[0] == "run folder runs/tiny (the most recent under ./runs)"
    assert lines[1].startswith(f"replay of batch {batch}, rank 0 (epoch 1,")
    assert f"fingerprint {logged[6]['fingerprint']}  matches the training log (step 6)" in replayed.stdout
    assert f"batch 6 counted from the start of training is epoch 1 batch {batch}" in replayed.stderr

    looked = run_nestkit("lookup", "--step", "6", "--no-load", "--format", "json", cwd=folder)
    assert looked.returncode == 0, looked.stderr[-2000:]
    [rank] = json.loads(looked.stdout)["ranks"]  # stdout is the JSON alone; the run folder line went to stderr
    assert (rank["epoch"], rank["batch"]) == (epoch, batch) and [c["cut_id"] for c in rank["cuts"]] == logged[6][
        "cut_ids"
    ]
    assert "run folder runs/tiny (the most recent under ./runs)" in looked.stderr

    inside = run_nestkit("lookup", "--step", "2", "--no-load", cwd=trained["run"] / "checkpoints")
    assert inside.returncode == 0, inside.stderr[-2000:]
    assert inside.stdout.splitlines()[0] == f"run folder {trained['run']} (the run folder you are in)"


@pytest.mark.slow
@pytest.mark.parametrize(
    "words",
    [
        ["replay-batch", "2", "runs/tiny"],
        ["replay-batch", "runs/tiny", "--step", "2", "trainer.devices=1"],
        ["replay-batch", "2", "CONFIG", "nestkit.watchdog.enabled=false"],
        ["replay-batch", "2", "--config", "CONFIG"],  # the old spelling, still accepted
        ["lookup", "runs/tiny", "--batch", "2"],
        ["lookup", "--step", "2", "CONFIG", "nestkit.watchdog.enabled=false"],
    ],
)
def test_one_shape_for_both_commands(trained, words):
    words = [trained["config"] if w == "CONFIG" else w for w in words]
    result = run_nestkit(*words, "--format", "json", cwd=trained["folder"])
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    record = data["ranks"][0] if words[0] == "lookup" else data
    assert record["fingerprint"] == trained["log"][2]["fingerprint"] and record["matches_log"] is True


@pytest.mark.slow
def test_a_config_that_is_not_the_runs_own_is_named(trained):
    result = run_nestkit(
        "lookup", "runs/tiny", "--step", "2", "--no-load", "model.train_ds.batch_size=3", cwd=trained["folder"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.train_ds.batch_size 2 there, 3 here" in result.stderr and "describes other batches" in result.stderr


@pytest.mark.parametrize(
    "words, message",
    [
        (["replay-batch", "2", "3"], "replay-batch: two batch numbers (2 and 3); give one"),
        (["replay-batch", "2", "runs/tiny", "CONFIG"], "replay-batch: two targets (runs/tiny and CONFIG); give one"),
        (["replay-batch", "2", "runs/tiny", "--config", "CONFIG"], "two targets (--config CONFIG and runs/tiny)"),
        (["replay-batch", "runs/tiny"], "give BATCH or --step (exactly one)"),
        (["replay-batch", "2", "nope/config.yaml"], "'nope/config.yaml': no such file or folder"),
        (["replay-batch", "2", "bogus"], "'bogus': not understood (expected a training config or run folder"),
        (
            ["lookup", "2", "--step", "2"],
            "lookup: 2 is not a config, run folder or override (a batch number? use --batch 2",
        ),
        (["lookup", "runs", "--step", "2"], "it holds the run folder(s) runs/tiny: pass one of them"),
        (["lookup", "data", "--step", "2"], "target data: a folder but not a run folder"),
        (["lookup", "--step", "2", "--batch", "2"], "give exactly one of --batch, --step, --cut, --index"),
        (["replay-batch", "2", "--checkpoint", "runs/tiny", "--forward"], "runs/tiny/checkpoints/last.ckpt"),
        (["replay-batch", "2", "--checkpoint", "runs/tiny/checkpoints/last.ckpt"], "--checkpoint is used by --forward"),
    ],
)
def test_words_that_cannot_be_used_are_one_line_usage_errors(trained, words, message):
    words = [trained["config"] if w == "CONFIG" else w for w in words]
    message = message.replace("CONFIG", trained["config"])
    result = run_nestkit(*words, cwd=trained["folder"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_with_no_run_anywhere_the_error_says_where_it_looked(tmp_path):
    for command in (["lookup", "--step", "71"], ["replay-batch", "71"], ["stacks"]):
        result = run_nestkit(*command, cwd=tmp_path)
        assert result.returncode == 2
        [line] = result.stderr.strip().splitlines()
        assert f"{tmp_path} is not one and there is no ./runs folder" in line
        assert "Pass a training config or a run folder" in line
