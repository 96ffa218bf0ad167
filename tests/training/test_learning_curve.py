"""A run's metrics as Lightning's CSV logger wrote them, and the learning-curve figure drawn from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nestkit.runfolder.layout import learning_curve_path
from nestkit.runfolder.metrics import metrics_files, read_metrics

HEADER = "epoch,lr,step,train_acc,train_loss,val_acc,val_loss\n"


def write_versions(run_dir: Path, *versions: str) -> None:
    for number, text in enumerate(versions):
        folder = run_dir / "csv" / f"version_{number}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(text)


def test_versions_are_read_in_order_a_resume_replaces_its_steps_and_a_torn_row_is_left_out(tmp_path):
    first = HEADER + "0,0.001,9,0.2,3.1,,\n0,,9,,,0.25,2.9\n0,0.001,19,0.3,2.8,,\n"
    # resumed from step 10: its step 19 replaces the first start's; then killed mid-row
    resumed = HEADER + "0,0.002,19,0.4,2.5,,\n0,0.002,29,0.5,2.1,,\n0,0.0"
    write_versions(tmp_path, first, resumed)
    (tmp_path / "csv" / "version_10").mkdir()  # no metrics.csv: not a version to read
    metrics = read_metrics(metrics_files(tmp_path))
    assert metrics["train_loss"] == [(9, 3.1), (19, 2.5), (29, 2.1)]
    assert metrics["train_acc"] == [(9, 0.2), (19, 0.4), (29, 0.5)]
    assert metrics["val_loss"] == [(9, 2.9)] and metrics["val_acc"] == [(9, 0.25)]
    assert "step" not in metrics and "epoch" not in metrics


def test_the_figure_is_drawn_from_the_runs_own_csv(tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "runs" / "demo"
    rows = [f"0,0.001,{s},{0.1 + s / 100:.3f},{3.0 - s / 50:.3f},," for s in range(9, 100, 10)]
    rows += [f"0,,{s},,,{0.2 + s / 200:.3f},{2.8 - s / 100:.3f}" for s in (24, 49, 74, 99)]
    write_versions(run_dir, HEADER + "\n".join(rows) + "\n")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "demo", "model": {"num_classes": 32}}))
    script = Path(__file__).resolve().parents[2] / "tools" / "plot_demo_curve.py"
    result = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val_loss 2.56 -> 1.81, val_acc 0.32 -> 0.695" in result.stdout
    assert learning_curve_path(run_dir).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
