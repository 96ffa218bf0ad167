"""`nestkit anomalies` on run folders written through the run-folder module: newest record per
incident, torn lines named, skipped steps and excluded cuts, usage errors."""

from __future__ import annotations

import json

from nestkit.runfolder.anomalies import IncidentWriter, incidents_path, read_anomalies, read_incidents, summary_line
from nestkit.runfolder.batch_log import BatchLogWriter
from nestkit.runfolder.layout import config_path
from nestkit.runfolder.quarantine import Quarantine
from tests.training.test_elastic_resume import nestkit


def incident(step: int, cut: str, outcome: str = "warned", **extra) -> dict:
    return {
        "id": f"step{step}",
        "step": step,
        "time": 1.0 + step,
        "kinds": ["loss_spike"],
        "signals": [{"kind": "loss_spike", "value": 6.0, "typical": 3.0, "spread": 0.3, "z": 10.0, "threshold": 6.0,
                     "ranks": []}],
        "loss": 6.0,
        "typical_loss": 3.0,
        "grad_norm": 1.5,
        "cuts": [{"cut_id": cut, "manifest": "/data/train.json", "line": 7, "path": f"/data/{cut}.wav", "rank": 1,
                  "epoch": 0, "batch": 3, "index": 7, "loss": 9.1, "frames": 12, "share": 0.9, "augment": "noise",
                  "energy_ratio_db": -2.0, "noise": {"cut_id": "hum-L1", "path": "/n/hum.wav", "offset": 0.5}}],
        "outcome": outcome,
        "verdict": f"loss spike at step {step}; 90% of the excess loss from cut {cut}",
        **extra,
    }  # fmt: skip


def run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config_path(run).write_text("name: run\n")
    return run


def test_the_report_keeps_the_newest_record_of_each_incident_and_names_torn_lines(tmp_path):
    run = run_folder(tmp_path)
    writer = IncidentWriter(run)
    writer.append(incident(12, "a-L7", "warned"))
    writer.append(incident(30, "b-L9", "skipped"))
    writer.append(incident(12, "a-L7", "skipped"))  # step 12 trained again after a resume
    writer.close()
    with open(incidents_path(run), "ab") as f:
        f.write(b'{"id": "step40", "ste')  # a writer killed mid-line
    log = BatchLogWriter(run, 0)
    log.append({"step": 12, "skipped": True})
    log.append({"step": 13})
    log.close()
    quarantine = Quarantine(run, 0)
    quarantine.write({"kind": "excluded", "cut_id": "a-L7", "split": "train"})
    quarantine.close()

    assert [(i["id"], i["outcome"]) for i in read_incidents(run)] == [("step12", "skipped"), ("step30", "skipped")]
    # what `nestkit report` puts on its timeline: the step, the words, and the batch it rebuilds
    assert [(a["step"], a["kind"], a["rank"], a["epoch"], a["batch"]) for a in read_anomalies(run)] == [
        (12, "loss spike", 1, 0, 7),
        (30, "loss spike", 1, 0, 7),
    ]
    from nestkit.tools.report.events import all_events
    from nestkit.tools.report.run_data import read_run

    timeline = [e for e in all_events(read_run(run)) if e.kind == "anomaly"]
    assert [(e.step, e.title, e.batch) for e in timeline] == [
        (12, "loss spike", (0, 7, 1)),
        (30, "loss spike", (0, 7, 1)),
    ]
    assert "90% of the excess loss from cut a-L7" in timeline[0].text
    assert summary_line(run).startswith(
        "2 training anomalies; the latest at step 30 (loss spike, first cut b-L9, skipped)"
    )
    table = nestkit("anomalies", str(run), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "2 incident(s), 1 step(s) skipped" in table.stdout
    assert "90% of the excess loss from cut a-L7" in table.stdout
    assert "noise hum-L1 @ 0.50 s, -2.0 dB" in table.stdout
    assert "excluded by nestkit.exclude_cuts since: a-L7 (1 substitution(s))" in table.stdout
    assert "incidents.jsonl:4: skipped (torn last line" in table.stderr
    report = json.loads(nestkit("anomalies", str(run), "--format", "json", cwd=tmp_path).stdout)
    assert [i["id"] for i in report["incidents"]] == ["step12", "step30"] and report["skipped_steps"] == [12]
    ids = nestkit("anomalies", str(run), "--format", "ids", cwd=tmp_path).stdout
    assert ids == "a-L7  # step12: loss spike; /data/a-L7.wav\nb-L9  # step30: loss spike; /data/b-L9.wav\n"


def test_a_healthy_run_and_a_wrong_folder(tmp_path):
    run = run_folder(tmp_path)
    (run / "batches").mkdir()
    healthy = nestkit("anomalies", str(run), cwd=tmp_path)
    assert healthy.returncode == 0 and "0 incident(s)" in healthy.stdout and "no anomaly" in healthy.stdout
    assert summary_line(run) is None
    missing = nestkit("anomalies", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder (expected a run folder" in missing.stderr
    (tmp_path / "plain").mkdir()
    plain = nestkit("anomalies", str(tmp_path / "plain"), cwd=tmp_path)
    assert plain.returncode == 1 and "not a run folder" in plain.stderr


def test_a_repro_past_the_checkpoint_budget_replays_from_the_newest_earlier_checkpoint(tmp_path):
    """After max_repro_checkpoints, a repro's command takes the newest checkpoint whose state is from
    its step or before (a periodic one or an earlier repro's), and its README says how exact that is."""
    from nestkit.config import config_from_dict
    from nestkit.runfolder.anomalies import checkpoint_at_or_before, repro_checkpoint, repro_dir
    from nestkit.runfolder.layout import checkpoints_dir
    from nestkit.training.anomaly import write_repro

    run = run_folder(tmp_path)
    assert checkpoint_at_or_before(run, 50) is None
    checkpoints_dir(run).mkdir()
    for name in ("step20.ckpt", "step40.ckpt", "step60.ckpt", "last.ckpt", "best-step45.ckpt"):
        (checkpoints_dir(run) / name).write_bytes(b"")
    earlier = repro_checkpoint(run, "step33", 33)
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"")
    assert checkpoint_at_or_before(run, 50) == checkpoints_dir(run) / "step40.ckpt"
    assert checkpoint_at_or_before(run, 39) == earlier
    assert checkpoint_at_or_before(run, 40) == checkpoints_dir(run) / "step40.ckpt"
    assert checkpoint_at_or_before(run, 19) is None

    cfg = config_from_dict({}).config
    probe = {"rank": 1, "epoch": 2, "batch": 5, "module": "preprocessor.featurizer", "where": "output"}
    for step, weights, said in (
        (50, "step40.ckpt", "an earlier state than step 50's"),
        (40, "step40.ckpt", "the state step 40 started from: the replay is exact"),
        (19, None, "the replay runs on freshly initialised weights"),
    ):
        incident = {"id": f"step{step}", "step": step, "kinds": ["nonfinite_loss"], "nonfinite": probe, "cuts": []}
        folder = write_repro(run, cfg, None, incident, None)
        assert folder == repro_dir(run, f"step{step}")
        command = (folder / "command.sh").read_text().splitlines()[-1]
        assert command.startswith("nestkit replay-batch 5 ") and "--epoch 2 --rank 1 " in command
        assert command.endswith(f"--checkpoint {checkpoints_dir(run).resolve() / weights}" if weights else "--forward")
        assert said in (folder / "README.txt").read_text()
