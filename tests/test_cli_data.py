"""`nestkit import-manifest` and `nestkit pipeline` through the real CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.helpers import manifest_of, write_speech, write_train_config


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nestkit.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_import_manifest_probes_rates_and_channels(tmp_path):
    mono = write_speech(tmp_path / "mono.wav", 1.5)
    sf.write(str(tmp_path / "stereo8k.wav"), np.zeros((16000, 2), np.float32), 8000)
    manifest = manifest_of(
        tmp_path / "m.json", [(mono, 1.5), {"audio_filepath": "stereo8k.wav", "duration": 1.0, "offset": 0.5}]
    )
    out = tmp_path / "cuts.jsonl.gz"
    result = run("import-manifest", manifest, "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 cuts" in result.stdout
    with gzip.open(out, "rt") as f:
        first, second = [json.loads(line) for line in f]
    assert first["id"] == "mono-L1" and first["recording"]["sampling_rate"] == 16000
    assert first["custom"] == {"manifest": manifest, "line": 1}
    assert second["type"] == "MultiCut" and second["channel"] == [0, 1] and second["start"] == 0.5
    assert second["recording"]["sampling_rate"] == 8000 and second["recording"]["num_samples"] == 16000
    # the converted manifest trains the same data
    from nestkit.data.loading import load_cut
    from nestkit.data.manifest import CutIndex

    a, b = CutIndex.build(manifest), CutIndex.build(str(out))
    for i in range(2):
        assert np.array_equal(load_cut(a.cut(i), 16000, None), load_cut(b.cut(i), 16000, None))


def test_import_manifest_lists_every_problem_and_writes_nothing(tmp_path):
    ok = write_speech(tmp_path / "ok.wav", 1.0)
    manifest = manifest_of(tmp_path / "m.json", [(ok, 1.0), (str(tmp_path / "gone.wav"), 1.0), (ok, 5.0)])
    out = tmp_path / "cuts.jsonl"
    result = run("import-manifest", manifest, "-o", str(out), cwd=tmp_path)
    assert result.returncode == 1 and not out.exists()
    assert f"{manifest}:2" in result.stderr and "no such file" in result.stderr
    assert f"{manifest}:3" in result.stderr and "truncated" not in result.stdout
    assert "2 problem(s); nothing written" in result.stderr


def test_pipeline_summarises_plan_throughput_and_bad_data(tmp_path):
    files = [(write_speech(tmp_path / f"s{i}.wav", 1.5, seed=i), 1.5) for i in range(9)]
    manifest = manifest_of(tmp_path / "train.json", [(str(tmp_path / "gone.wav"), 1.5)] + files)
    config = write_train_config(tmp_path / "c.yaml", manifest, model={"train_ds": {"batch_size": 3, "shuffle": False}})
    result = run("pipeline", config, "--run-dir", str(tmp_path / "check"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert (
        "10 cuts; 0 shorter than min_duration, 0 longer than max_duration; 3 batches on every rank; 1 dropped by drop_last"
        in out
    )
    assert "3 batches, 9 cuts" in out
    assert "1 sample(s) replaced; 1 audio missing" in out
    records = [
        json.loads(line) for line in (tmp_path / "check" / "quarantine" / "rank0.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["category"]) for r in records] == [(1, "missing")]
    assert "no noise manifest" in out


def test_pipeline_reports_config_errors_without_a_traceback(tmp_path):
    config = write_train_config(tmp_path / "c.yaml", str(tmp_path / "none.json"))
    result = run("pipeline", config, "model.train_ds.batch_sise=3", cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'batch_size'" in result.stderr and "Traceback" not in result.stderr
    missing = run("pipeline", config, cwd=tmp_path)
    assert missing.returncode == 1 and "none.json" in missing.stderr and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
