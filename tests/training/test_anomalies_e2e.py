"""Training anomalies on real training runs (real subprocesses, 2-process gloo DDP), provoked by
planted data, with no test hook in the product:

* a loss spike: a corpus of tones with one utterance of white noise. Once the model predicts the
  tones' tokens, the noise's tokens cost it far more than anything else in the batch;
* NaN: one utterance with 0.6 s of digital silence inside, under `preprocessor.dither: 0` and
  `log_zero_guard_value: 0` (settings a NeMo user can have: no dither for determinism, and a log
  guard of 0). The silent frames' mel energies are exactly 0, log(0) = -inf, and the per-feature
  normalisation turns the utterance's features into NaN (the batch augmentor is off, so nothing
  covers the silence in the noisy copy either).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nestkit.runfolder.anomalies import read_incidents
from nestkit.runfolder.batch_log import read_batch_log
from nestkit.runfolder.heartbeats import read_heartbeats
from nestkit.runfolder.quarantine import read_quarantine
from nestkit.runfolder.segments import read_segments
from tests.helpers import write_train_config
from tests.training.test_elastic_resume import effective, nestkit, train_until_killed

SPIKE_CUT = "planted-L11"
NAN_CUT = "gap-L6"


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory):
    """24 amplitude-modulated tones and, at manifest line 11, two seconds of white noise."""
    from nestkit.data.synthetic import noise_like, write_manifest, write_wav

    folder = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(1)
    entries = []
    for i in range(24):
        seconds = round(float(rng.uniform(1.5, 2.5)), 2)
        t = np.arange(int(seconds * 16000)) / 16000
        tone = (
            0.3
            * np.sin(2 * np.pi * rng.uniform(300, 600) * t)
            * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        )
        write_wav(folder / f"audio/u{i:02d}.wav", tone.astype(np.float32))
        entries.append({"audio_filepath": f"audio/u{i:02d}.wav", "duration": seconds})
    write_wav(folder / "audio/planted.wav", noise_like(2.0, 9, "white"))
    entries.insert(10, {"audio_filepath": "audio/planted.wav", "duration": 2.0})
    write_wav(folder / "noise/pink.wav", noise_like(6.0, 3, "pink"))
    return {
        "train": write_manifest(folder / "train.json", entries),
        "noise": write_manifest(folder / "noise.json", [{"audio_filepath": "noise/pink.wav", "duration": 6.0}]),
        "planted": str(folder / "audio/planted.wav"),
    }


@pytest.fixture(scope="module")
def gap_corpus(tmp_path_factory):
    """13 speech-like utterances and, at manifest line 6, one with 0.6 s of digital silence inside."""
    from nestkit.data.synthetic import make_corpus, speech_like, write_wav

    folder = tmp_path_factory.mktemp("gap")
    paths = make_corpus(folder, num_utterances=14, num_noises=2, min_seconds=1.2, max_seconds=2.0, seed=4)
    speech = speech_like(1.6, 99)
    speech[6000:16000] = 0.0
    write_wav(folder / "audio/gap.wav", speech)
    lines = Path(paths["train"]).read_text().splitlines()
    lines.insert(5, json.dumps({"audio_filepath": "audio/gap.wav", "duration": 1.6}))
    Path(paths["train"]).write_text("\n".join(lines) + "\n")
    return paths


def nan_config(tmp_path: Path, corpus: dict, name: str, action: str) -> str:
    return write_train_config(
        tmp_path / f"{name}.yaml",
        corpus["train"],
        corpus["noise"],
        name=name,
        model={
            "preprocessor": {"dither": 0.0, "log_zero_guard_value": 0},
            "train_ds": {"batch_augmentor": None},
        },
        trainer={"devices": 2, "max_steps": 8},
        exp_manager={"checkpoint_callback_params": {"every_n_train_steps": 2}},
        nestkit={"anomaly": {"action": action}},
    )


def finite_state(checkpoint: Path) -> bool:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def replay(repro: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The repro's command (`nestkit replay-batch ...`), run with this interpreter."""
    (line,) = [x for x in (repro / "command.sh").read_text().splitlines() if x.startswith("nestkit ")]
    return nestkit(*shlex.split(line)[1:], cwd=cwd)


@pytest.mark.slow
def test_a_loss_spike_names_the_planted_utterance_its_file_and_noise(tmp_path, tone_corpus):
    cfg = write_train_config(
        tmp_path / "spike.yaml",
        tone_corpus["train"],
        tone_corpus["noise"],
        name="spike",
        model={"masking": {"mask_prob": 0.05}, "train_ds": {"batch_size": 4}},
        trainer={"max_steps": 26},
        nestkit={"anomaly": {"warmup_steps": 10, "window": 50}},
    )
    result = nestkit("train", cfg, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "spike"
    incidents = read_incidents(run)
    assert incidents, result.stdout
    log = {r["step"]: r for r in read_batch_log(run, 0)}
    for incident in incidents:
        top = incident["cuts"][0]
        assert top["cut_id"] == SPIKE_CUT and top["path"] == tone_corpus["planted"], incident["verdict"]
        assert (top["manifest"], top["line"]) == (tone_corpus["train"], 11) and top["share"] > 0.5
        assert top["augment"] in ("skip", "noise", "speech") and "energy_ratio_db" in top
        # reported in the step that trained it, before its update; the batch log points to it
        step = log[incident["step"]]
        assert SPIKE_CUT in step["cut_ids"] and step["anomaly"] == incident["id"]
        assert (step["epoch"], step["batch"]) == (top["epoch"], top["batch"]) and incident["outcome"] == "warned"
        assert f"nestkit anomaly {incident['id']}: " in result.stdout
    healthy = [r for r in log.values() if "anomaly" not in r]
    assert all(len(r["row_loss"]) == len(r["cut_ids"]) == len(r["row_frames"]) and r["grad_norm"] > 0 for r in healthy)

    table = nestkit("anomalies", str(run), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"{len(incidents)} incident(s)" in table.stdout and SPIKE_CUT in table.stdout
    assert "of the excess loss from cut planted-L11" in table.stdout
    as_json = json.loads(nestkit("anomalies", str(run), "--format", "json", cwd=tmp_path).stdout)
    assert [i["id"] for i in as_json["incidents"]] == [i["id"] for i in incidents]
    ids = nestkit("anomalies", str(run), "--format", "ids", cwd=tmp_path).stdout.splitlines()
    assert ids[0].startswith(f"{SPIKE_CUT}  # {incidents[0]['id']}: ") and len(ids) == 1
    stacks = nestkit("stacks", str(run), cwd=tmp_path)
    assert f"anomalies: {len(incidents)} training anomal" in stacks.stdout
    from nestkit.tools.report.events import all_events
    from nestkit.tools.report.run_data import read_run

    timeline = [e for e in all_events(read_run(run)) if e.kind == "anomaly"]  # `nestkit report`'s timeline
    assert [e.step for e in timeline] == [i["step"] for i in incidents]
    first = incidents[0]["cuts"][0]
    assert timeline[0].batch == (first["epoch"], first["index"], first["rank"]) and SPIKE_CUT in timeline[0].text
    bad = nestkit("anomalies", str(run), "--format", "yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "expected one of table, json, ids" in bad.stderr


@pytest.mark.slow
def test_nan_on_two_ranks_is_skipped_identically_reproduced_and_resumed_bit_for_bit(tmp_path, gap_corpus):
    full = nestkit("train", nan_config(tmp_path, gap_corpus, "full", "skip"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "runs" / "full"
    incidents = read_incidents(run)
    assert incidents, full.stdout
    ranks = {rank: {r["step"]: r for r in read_batch_log(run, rank)} for rank in (0, 1)}
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(8))
    skipped = {i["step"] for i in incidents}
    for step in range(8):
        a, b = ranks[0][step], ranks[1][step]
        assert a.get("skipped", False) == b.get("skipped", False) == (step in skipped)  # the same decision
        assert a.get("anomaly") == b.get("anomaly") and a["grad_norm"] == b["grad_norm"]
        if step not in skipped:
            assert np.isfinite(a["loss"]) and np.isfinite(b["loss"])  # a skipped NaN never reached the weights
    assert finite_state(run / "checkpoints" / "last.ckpt")  # neither weights nor BatchNorm statistics saw the NaN
    for incident in incidents:
        assert incident["kinds"] == ["nonfinite_loss"] and incident["outcome"] == "skipped"
        top = incident["cuts"][0]
        assert top["cut_id"] == NAN_CUT and top["probe_origin"] and top["line"] == 6
        probe = incident["nonfinite"]
        assert (probe["module"], probe["where"], probe["inputs_finite"]) == ("preprocessor.featurizer", "output", True)
        assert probe["cuts"] == [NAN_CUT] and incident["ranks"] == [probe["rank"]]
    first = incidents[0]
    repro = Path(first["repro"])
    lines = [json.loads(x) for x in (repro / "manifest.json").read_text().splitlines()]
    assert any(x["audio_filepath"].endswith("audio/gap.wav") and os.path.isabs(x["audio_filepath"]) for x in lines)
    assert (repro / "config.yaml").is_file() and (repro / f"step{first['step']}.ckpt").is_file()
    replayed = replay(repro, tmp_path)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert "first non-finite output in module preprocessor.featurizer (its inputs were finite)" in replayed.stdout
    assert "matches the training log" in replayed.stdout

    # killed after step 4, resumed from the step-4 checkpoint: the same skips, the same bits
    cfg = nan_config(tmp_path, gap_corpus, "parts", "skip")
    train_until_killed(cfg, [], tmp_path / "runs" / "parts", kill_after_step=4, cwd=tmp_path)
    rest = nestkit("train", cfg, "--resume", cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    fields = ("rank", "epoch", "batch", "fingerprint", "loss", "grad_norm", "skipped", "anomaly")
    expected, resumed = effective(run, range(2)), effective(tmp_path / "runs" / "parts", range(2))
    assert sorted(resumed) == sorted(expected) == list(range(8))
    for step in range(8):
        ours = sorted(tuple(str(r.get(f)) for f in fields) for r in resumed[step])
        theirs = sorted(tuple(str(r.get(f)) for f in fields) for r in expected[step])
        assert ours == theirs, step


@pytest.mark.slow
def test_stop_ends_every_rank_then_excluding_the_cut_resumes_to_the_same_step_count(tmp_path, gap_corpus):
    cfg = nan_config(tmp_path, gap_corpus, "stop", "stop")
    run = tmp_path / "runs" / "stop"
    stopped = nestkit("train", cfg, cwd=tmp_path)
    assert stopped.returncode == 4, stopped.stderr[-3000:]
    (incident,) = read_incidents(run)
    step = incident["step"]
    assert stopped.stderr.count(f"error: anomaly {incident['id']}: non-finite loss") == 2  # both ranks say why
    assert "Training stopped on every rank." in stopped.stdout and "Traceback" not in stopped.stderr
    beats = read_heartbeats(run)
    assert sorted(beats) == [0, 1]
    assert all(b["status"] == "failed" and b["error"].startswith("AnomalyStop: anomaly") for b in beats.values())
    assert Path(incident["checkpoint"]).name == "last.ckpt" and Path(incident["checkpoint"]).is_file()
    assert finite_state(Path(incident["checkpoint"]))  # the NaN forward's BatchNorm statistics are not in it

    ids = nestkit("anomalies", str(run), "--format", "ids", cwd=tmp_path)
    assert ids.stdout.startswith(f"{NAN_CUT}  # {incident['id']}")
    (tmp_path / "excluded.txt").write_text(ids.stdout)
    resumed = nestkit("train", cfg, "--resume", "nestkit.exclude_cuts=excluded.txt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "nestkit anomaly" not in resumed.stdout and len(read_incidents(run)) == 1  # nothing new
    segments = read_segments(run)
    assert [s.start_step for s in segments] == [0, step]  # the stopped step is trained again
    steps = effective(run, range(2))
    assert sorted(steps) == list(range(8))
    assert not any(NAN_CUT in r["cut_ids"] for records in steps.values() for r in records if r["step"] >= step)
    excluded = [r for r in read_quarantine(run) if r["kind"] == "excluded"]
    assert excluded and {r["cut_id"] for r in excluded} == {NAN_CUT}
    report = nestkit("anomalies", str(run), cwd=tmp_path).stdout
    assert "stopped" in report and f"excluded by nestkit.exclude_cuts since: {NAN_CUT}" in report


@pytest.mark.slow
def test_the_watch_changes_no_bit_of_training_and_clipping_reuses_its_gradient_norm(tmp_path, gap_corpus):
    """Per-utterance losses, the all-reduce and the gradient norm are observation only: with the
    watch on or off, and with clipping by norm (which then takes the watch's norm), every step's
    loss is the same to the last bit."""
    curves = {}
    for name, enabled in (("watched", True), ("unwatched", False)):
        cfg = write_train_config(
            tmp_path / f"{name}.yaml",
            gap_corpus["train"],
            gap_corpus["noise"],
            name=name,
            trainer={"max_steps": 6, "gradient_clip_val": 0.05},
            nestkit={"anomaly": {"enabled": enabled}},
        )
        result = nestkit("train", cfg, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        curves[name] = [(r["step"], r["fingerprint"], r["loss"]) for r in read_batch_log(tmp_path / "runs" / name, 0)]
        if enabled:
            norms = [r["grad_norm"] for r in read_batch_log(tmp_path / "runs" / name, 0)]
            assert sum(n > 0.05 for n in norms) >= 3, norms  # clipping really clipped (0: no frame was masked)
    assert curves["watched"] == curves["unwatched"] and len(curves["watched"]) == 6
