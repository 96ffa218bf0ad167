"""Training anomalies in the run folder: `anomalies/incidents.jsonl` and one repro folder per NaN/Inf.

Each line of `incidents.jsonl` is one incident, whole (records.JsonlWriter): a loss spike, a
gradient-norm spike, an utterance whose loss is far above the typical one, or a NaN/Inf in the loss
or the gradients, with the step, the ranks and micro-batches, the cuts ranked by their share of the
spike (files, manifest lines, noise, augmentation) and what training did about it. Written by
global rank zero only, after the ranks have pooled what they know. The incident id is
`step<N>`: a resumed run that trains step N again writes a newer line with the same id, and the
newest one wins.

`anomalies/<id>/` holds the repro of a NaN/Inf incident: the micro-batch's manifest lines, the
run's config, a checkpoint with the weights the step started from, and the `replay-batch --forward`
command that shows the same non-finite module.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nestkit.runfolder.layout import anomalies_dir, checkpoints_dir
from nestkit.runfolder.records import JsonlWriter, SkippedLine, read_jsonl

INCIDENTS_FILE = "incidents.jsonl"
REPRO_COMMAND = "command.sh"
REPRO_README = "README.txt"
REPRO_CONFIG = "config.yaml"
REPRO_MANIFEST = "manifest.json"
# an incident's `kinds`, in words
KIND_NAMES = {
    "nonfinite_loss": "NaN/Inf loss",
    "nonfinite_grad": "NaN/Inf gradient",
    "loss_spike": "loss spike",
    "grad_norm_spike": "gradient-norm spike",
    "utterance_loss": "utterance loss",
}


def incidents_path(run_dir: str | os.PathLike) -> Path:
    return anomalies_dir(run_dir) / INCIDENTS_FILE


def incident_id(step: int) -> str:
    return f"step{step}"


def repro_dir(run_dir: str | os.PathLike, incident: str) -> Path:
    return anomalies_dir(run_dir) / incident


def repro_checkpoint(run_dir: str | os.PathLike, incident: str, step: int) -> Path:
    return repro_dir(run_dir, incident) / f"step{step}.ckpt"


STEP_CHECKPOINT = re.compile(r"step(\d+)\.ckpt")  # the state after N optimizer steps (= when step N starts)


def checkpoint_at_or_before(run_dir: str | os.PathLike, step: int) -> Path | None:
    """The newest checkpoint of the run whose state is from step `step` or earlier: a periodic
    `checkpoints/step<N>.ckpt` or an earlier repro's `anomalies/step<N>/step<N>.ckpt`; None if none."""
    found = []
    for path in [*checkpoints_dir(run_dir).glob("step*.ckpt"), *anomalies_dir(run_dir).glob("step*/step*.ckpt")]:
        match = STEP_CHECKPOINT.fullmatch(path.name)
        if match and int(match.group(1)) <= step:
            found.append((int(match.group(1)), str(path)))
    return Path(max(found)[1]) if found else None


class IncidentWriter(JsonlWriter):
    """`anomalies/incidents.jsonl` (global rank zero is its only writer)."""

    def __init__(self, run_dir: str | os.PathLike):
        super().__init__(incidents_path(run_dir))


def read_incidents(run_dir: str | os.PathLike, skipped: list[SkippedLine] | None = None) -> list[dict]:
    """Every incident, the newest record of each id, in step order; torn lines go to `skipped`."""
    read = read_jsonl(incidents_path(run_dir))
    if skipped is not None:
        skipped.extend(read.skipped)
    newest: dict[str, dict] = {}
    for record in read.records:
        key = record.get("id") or incident_id(int(record.get("step", -1)))
        newest[key] = record
    return sorted(newest.values(), key=lambda r: (r.get("step", -1), r.get("time") or 0.0))


def read_anomalies(run_dir: str | os.PathLike) -> list[dict]:
    """Every incident as a run-wide timeline takes it (`nestkit report`): `step`, `time`, `kind` (in
    words), `sentence` (the verdict), and where its data is: `rank`, `epoch` and `batch`, which here
    is the micro-batch's index in the epoch's sequence (`index` in the batch log; the same batch on
    any world size), of the micro-batch the NaN probe found, else of the incident's first cut."""
    out = []
    for incident in read_incidents(run_dir):
        probe = incident.get("nonfinite") or {}
        where = probe if "index" in probe else (incident.get("cuts") or [{}])[0]
        kinds = incident.get("kinds") or []
        out.append(
            {
                "id": incident.get("id"),
                "step": incident.get("step"),
                "time": incident.get("time"),
                "kind": ", ".join(KIND_NAMES.get(k, k) for k in kinds) or "anomaly",
                "sentence": incident.get("verdict"),
                "outcome": incident.get("outcome"),
                "rank": where.get("rank"),
                "epoch": where.get("epoch"),
                "batch": where.get("index"),
            }
        )
    return out


def summary_line(run_dir: str | os.PathLike) -> str | None:
    """One sentence about the run's anomalies for other reports (`nestkit stacks`), or None."""
    incidents = read_incidents(run_dir)
    if not incidents:
        return None
    last = incidents[-1]
    top = (last.get("cuts") or [{}])[0].get("cut_id")
    kinds = ", ".join(KIND_NAMES.get(k, k) for k in last.get("kinds") or [])
    named = f", first cut {top}" if top else ""
    return (
        f"{len(incidents)} training anomal{'y' if len(incidents) == 1 else 'ies'}; the latest at step "
        f"{last.get('step')} ({kinds}{named}, {last.get('outcome')}). Run `nestkit anomalies {run_dir}`"
    )
