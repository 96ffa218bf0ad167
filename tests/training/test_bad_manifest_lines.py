"""`nestkit train` and bad manifest lines: every one listed before anything starts (exit 1), or, with
--skip-bad-lines, left out, counted, named and recorded in the run folder's quarantine."""

from __future__ import annotations

import json

import pytest

from nestkit.runfolder.quarantine import read_quarantine
from tests.helpers import write_speech, write_train_config
from tests.training.test_train import nestkit

BAD_LINES = {
    2: "{oops",
    4: json.dumps({"duration": 1.3}),
    5: json.dumps({"audio_filepath": "x.wav"}),
    7: json.dumps({"audio_filepath": "x.wav", "duration": 0}),
    9: "[]",
    10: json.dumps({"audio_filepath": "x.wav", "duration": "1.3"}),
    12: json.dumps({"audio_filepath": "x.wav", "duration": 1.3, "offset": -1}),
    13: '{"audio_filepath": "x.wav", "duration": Infinity}',
}


@pytest.mark.slow
def test_train_lists_all_eight_bad_lines_at_once_and_trains_without_them_when_asked(tmp_path):
    lines = []
    for number in range(1, 15):
        if number in BAD_LINES:
            lines.append(BAD_LINES[number])
        else:
            audio = write_speech(tmp_path / f"u{number}.wav", 1.3, seed=number)
            lines.append(json.dumps({"audio_filepath": audio, "duration": 1.3}))
    manifest = tmp_path / "train.json"
    manifest.write_text("\n".join(lines) + "\n")
    config = write_train_config(tmp_path / "c.yaml", str(manifest), name="bad", trainer={"max_steps": 2})

    refused = nestkit("train", config, cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "manifests: 8 unusable line(s)" in refused.stderr
    for number in BAD_LINES:
        assert f"{manifest}:{number}:" in refused.stderr, number
    assert "--skip-bad-lines" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()  # nothing started

    trained = nestkit("train", config, "--skip-bad-lines", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    output = trained.stdout + trained.stderr
    assert "train: 8 unusable manifest line(s) left out" in output
    records = [r for r in read_quarantine(tmp_path / "runs" / "bad") if r["kind"] == "manifest"]
    assert sorted(r["line"] for r in records) == sorted(BAD_LINES)
    assert {r["manifest"] for r in records} == {str(manifest)} and {r["category"] for r in records} == {"bad_line"}
    assert all(r["reason"].startswith(f"manifest {manifest}:") for r in records)
