"""A training anomaly as a record and in words: the cuts of a step ranked by their share of the
excess loss, and the verdict `nestkit train` prints and `nestkit anomalies` shows.

Light (no torch): `nestkit anomalies` uses the same wording without loading the trainer.
"""

from __future__ import annotations

import math
import time

from nestkit.runfolder.anomalies import REPRO_COMMAND
from nestkit.training.spikes import Signal, StepValues

MAX_CUTS = 20  # rows an incident keeps, best first


def cut_summary(record: dict) -> dict:
    """What an incident says about one utterance: source, noise, augmentation."""
    augment = record.get("augment") or {}
    summary = {
        "cut_id": record.get("cut_id"),
        "manifest": record.get("manifest"),
        "line": record.get("line"),
        "path": record.get("path"),
        "offset": record.get("offset"),
        "duration": record.get("duration"),
        "substitute_for": record.get("substitute_for"),
        "augment": augment.get("mode"),
        "energy_ratio_db": rounded_value(augment.get("energy_ratio_db")),
    }
    noise = augment.get("noise")
    if noise:
        summary["noise"] = {
            "cut_id": noise.get("cut_id"),
            "path": noise.get("path"),
            "offset": noise.get("offset"),
            "fallback": noise.get("fallback"),
        }
    if augment.get("speakers"):
        summary["speakers"] = augment["speakers"]
    return summary


def build_incident(
    ident: str,
    values: StepValues,
    signals: list[Signal],
    typical: float | None,
    pooled: list[dict],
    world: int,
    outcome: str,
) -> dict:
    """One incident from every rank's candidates: cuts ranked by their share of the excess loss."""
    positive = sum(part["positive"] for part in pooled)
    rows = [row for part in pooled for row in part["rows"]]
    for row in rows:
        excess = row.pop("excess")
        row["share"] = round(excess / positive, 4) if positive > 0 and excess > 0 else 0.0
    rows.sort(key=rank_key)
    # the probes that found a module first (in rank order), then any that failed
    probes = sorted((part["probe"] for part in pooled if part["probe"] is not None), key=lambda p: "module" not in p)
    nonfinite = probes[0] if probes else None
    top = rows[0] if rows else None
    ranks = sorted({r for s in signals for r in s.ranks}) or ([top["rank"]] if top else [])
    return {
        "id": ident,
        "step": values.step,
        "time": round(time.time(), 3),
        "kinds": [s.kind for s in signals],
        "signals": [s.as_dict() for s in signals],
        "loss": rounded_value(values.loss),
        "typical_loss": rounded_value(typical),
        "grad_norm": rounded_value(values.grad_norm),
        "loss_frames": values.loss_frames,
        "world_size": world,
        "ranks": ranks,
        "batches": [b for part in pooled for b in part["batches"]],
        "cuts": rows[:MAX_CUTS],
        "nonfinite": nonfinite,
        "probes": probes[1:],
        "outcome": outcome,
        "repro": None,
        "checkpoint": None,
    }


def verdict(incident: dict) -> str:
    """One paragraph: what happened at which step, which cut (file, line, noise) carries it, what was done."""
    signals = ", ".join(_signal_text(s) for s in incident["signals"])
    parts = [f"{signals} at step {incident['step']}"]
    probe = incident.get("nonfinite")
    if probe and "module" not in probe:
        parts.append(f"on rank {probe.get('rank')} {probe.get('error')}")
    elif probe:
        inputs = "its inputs were finite" if probe.get("inputs_finite") else "its inputs were already non-finite"
        where = "output" if probe.get("where") == "output" else "gradient at the output"
        parts.append(
            f"first non-finite {where} in module {probe['module']}"
            + (f" ({inputs})" if probe.get("where") == "output" else "")
            + f" on rank {probe['rank']}, epoch {probe['epoch']} batch {probe['batch']}"
        )
    cuts = incident.get("cuts") or []
    if cuts:
        top = cuts[0]
        if top.get("probe_origin") or top.get("nonfinite"):
            lead = "in the row of cut"
        elif top.get("share"):
            lead = f"{top['share']:.0%} of the excess loss from cut"
        else:
            lead = "most deviant cut"
        parts.append(f"{lead} {describe_cut(top)}")
    outcome = {
        "warned": "training went on with this step's update (nestkit.anomaly.action=warn)",
        "skipped": "the step's update was skipped on every rank",
        "stopped": "training stopped on every rank",
    }[incident["outcome"]]
    text = "; ".join(parts) + f". {outcome[0].upper()}{outcome[1:]}."
    if incident.get("repro"):
        text += f" Repro: sh {incident['repro']}/{REPRO_COMMAND}"
    return text


def describe_cut(row: dict) -> str:
    where = f"{row['manifest']}:{row['line']}" if row.get("manifest") else "-"
    text = f"{row['cut_id']} ({row.get('path')}, {where}; rank {row['rank']}, epoch {row['epoch']} batch {row['batch']}"
    if row.get("loss") is not None:
        text += f", utterance loss {row['loss']:.3f} on {row['frames']} frames"
    if row.get("earlier_high"):
        text += f", far above typical at {row['earlier_high']} earlier appearance(s) too"
    return text + f"; {describe_augment(row)})"


def describe_augment(row: dict) -> str:
    mode, ratio = row.get("augment"), row.get("energy_ratio_db")
    if mode == "noise" and row.get("noise"):
        noise = row["noise"]
        name = noise.get("cut_id") or ("white noise (fallback)" if noise.get("fallback") else noise.get("path"))
        return f"noise {name} @ {noise.get('offset') or 0:.2f} s, {ratio:+.1f} dB"
    if mode == "speech":
        return f"speech of {', '.join(row.get('speakers') or [])}, {ratio:+.1f} dB"
    return "clean: not augmented"


def _signal_text(signal: dict) -> str:
    return Signal(**signal).text()


def rank_key(row: dict):
    """Sort key of an incident's rows: the probe's non-finite rows, other non-finite rows, then by share."""
    return (not row.get("probe_origin"), not row.get("nonfinite"), -(row.get("share") or row.get("excess") or 0.0))


def rounded_value(value, digits: int = 5):
    return round(float(value), digits) if value is not None and math.isfinite(value) else None
