"""What every command does with a hostile new user's input: listed choices, bounds on numbers, outputs
that are folders, and stdout that stays parseable. Each case ends in one line and exit status 2."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.helpers import manifest_of, run_nestkit, write_speech, write_train_config
from tests.monitor.test_stacks import beat


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("usage")
    files = [(write_speech(folder / f"s{i}.wav", 1.2, seed=i), 1.2) for i in range(4)]
    return write_train_config(folder / "config.yaml", manifest_of(folder / "train.json", files))


def test_version_comes_from_the_installed_metadata(tmp_path):
    result = run_nestkit("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"nestkit {version('nestkit')}\n"


@pytest.mark.parametrize(
    "command, choices",
    [("lookup", ["table", "json"]), ("replay-batch", ["table", "json"]), ("stacks", ["table", "text", "json"])],
)
def test_every_format_option_lists_its_choices_and_refuses_others(tmp_path, command, choices):
    shown = run_nestkit(command, "--help", cwd=tmp_path)
    assert shown.returncode == 0 and f"[{'|'.join(choices)}]" in shown.stdout
    refused = run_nestkit(command, "--format", "xml", cwd=tmp_path)
    assert refused.returncode == 2
    assert f"expected one of {', '.join(choices)}, got 'xml'" in " ".join(refused.stderr.split())


@pytest.mark.parametrize(
    "words, refused",
    [
        (["replay-batch", "0", "CONFIG", "--timeout", "-1"], "--timeout"),
        (["replay-batch", "0", "CONFIG", "--timeout", "nan"], "--timeout"),
        (["replay-batch", "0", "CONFIG", "--epoch", "-1"], "--epoch"),
        (["lookup", "CONFIG", "--epoch", "-1", "--batch", "0"], "--epoch"),
        (["lookup", "CONFIG", "--index", "-3"], "--index"),
        (["lookup", "CONFIG", "--step", "0", "--world-size", "0"], "--world-size"),
        (["pipeline", "CONFIG", "--max-batches", "0"], "--max-batches"),
        (["pipeline", "CONFIG", "--epoch", "-1"], "--epoch"),
        (["pipeline", "CONFIG", "--workers", "-1"], "--workers"),
        (["pipeline", "CONFIG", "--split", "test"], "--split"),
        (["stacks", ".", "--dump", "--wait", "0"], "--wait"),
        (["stacks", ".", "--incident", "0"], "--incident"),
        (["import-manifest", "CONFIG", "-o", "x.jsonl", "--sample-rate", "0"], "--sample-rate"),
    ],
)
def test_numbers_and_words_out_of_range_are_usage_errors(config, words, refused):
    result = run_nestkit(*[config if w == "CONFIG" else w for w in words], cwd=Path(config).parent)
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{refused}'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "words, message",
    [
        (["import-manifest", "TRAIN", "-o", "."], "error: --output .: a folder (expected the path of a file to write)"),
        (
            ["import-manifest", "TRAIN", "-o", "TRAIN/x.jsonl"],
            "error: --output TRAIN/x.jsonl: TRAIN is a file, not a folder",
        ),
        (["export-nemo", "x.ckpt", "-o", "."], "error: --output .: a folder"),
        (["export-nemo", ".", "-o", "x.pt"], "error: checkpoint .: a folder (expected a checkpoint file"),
        (["stacks", "CONFIG"], "error: run CONFIG: a file, not a folder (expected a run folder"),
        (
            ["replay-batch", "0", "CONFIG", "--repro-dir", "CONFIG"],
            "error: --repro-dir CONFIG: a file (expected a folder",
        ),
        (["pipeline", "CONFIG", "--run-dir", "TRAIN/q"], "error: --run-dir TRAIN/q: TRAIN is a file, not a folder"),
        (["lookup", "CONFIG", "--cut", ""], "error: lookup: --cut needs a cut id (got an empty one)"),
    ],
)
def test_a_folder_where_a_file_is_expected_and_back(config, words, message):
    folder = Path(config).parent
    (folder / "x.ckpt").write_bytes(b"")

    def fill(text: str) -> str:
        return text.replace("TRAIN", str(folder / "train.json")).replace("CONFIG", config)

    result = run_nestkit(*map(fill, words), cwd=folder)
    assert result.returncode == 2 and result.stderr.startswith(fill(message)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stacks_dump_as_json_keeps_notes_off_stdout(tmp_path):
    beat(tmp_path, 0, "fetch", 3, world=1)  # a rank that does not answer the dump request
    result = run_nestkit("stacks", str(tmp_path), "--dump", "--wait", "0.5", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["incident"] == 1 and "nestkit stacks --dump" in report["reason"]
    assert "no dump from rank(s) 0 within 0.5 s" in result.stderr


@pytest.mark.parametrize(
    "words, message",
    [
        (["--step", "100000000"], "step 100000000: beyond the run (expected 0..5: trainer.max_steps=6)"),
        (["--epoch", "100000000", "--batch", "0"], "epoch 100000000 batch 0: beyond the run"),
        (["--index", "1000000000"], "index 1000000000: beyond the run"),
    ],
)
def test_positions_beyond_the_run_end_at_once_in_one_line(config, words, message):
    """Answered by arithmetic on the plan, not by walking millions of epochs."""
    result = run_nestkit("lookup", config, *words, "--no-load", cwd=Path(config).parent, timeout=60)
    assert result.returncode == 1 and message in " ".join(result.stderr.split()), result.stderr
