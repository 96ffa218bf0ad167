"""`nestkit anomalies RUN_DIR`: the run's training anomalies, each with its verdict and its cuts.

Reads `anomalies/incidents.jsonl` (nestkit.runfolder.anomalies), the batch log's skipped steps and
the quarantine's excluded cuts, so one report says what happened, what training did about it and
what has been done since (cuts excluded by `nestkit.exclude_cuts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nestkit.core.errors import NestkitError
from nestkit.runfolder.anomalies import read_incidents
from nestkit.runfolder.batch_log import logged_ranks, read_batch_log
from nestkit.runfolder.layout import is_run_folder
from nestkit.runfolder.quarantine import read_quarantine
from nestkit.runfolder.records import SkippedLine


@dataclass
class AnomalyReport:
    run_dir: str
    incidents: list[dict]
    skipped_steps: list[int]  # steps whose update was skipped (batch log, rank 0)
    excluded: dict[str, int]  # cut id -> substitutions made since it was excluded
    unreadable: list[str] = field(default_factory=list)  # torn or malformed lines, named

    def as_dict(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "incidents": self.incidents,
            "skipped_steps": self.skipped_steps,
            "excluded": self.excluded,
            "unreadable": self.unreadable,
        }

    def culprits(self) -> list[tuple[str, dict]]:
        """(cut id, incident) of each incident's first cut, each cut once: an exclusion list."""
        seen: dict[str, dict] = {}
        for incident in self.incidents:
            cuts = incident.get("cuts") or []
            if cuts and cuts[0].get("cut_id") and cuts[0]["cut_id"] not in seen:
                seen[cuts[0]["cut_id"]] = incident
        return list(seen.items())


def anomaly_report(run_dir: Path) -> AnomalyReport:
    if not Path(run_dir).is_dir():
        raise NestkitError(f"run {run_dir}: no such folder (expected a run folder, exp_manager.exp_dir/name)")
    if not is_run_folder(run_dir):
        raise NestkitError(
            f"run {run_dir}: not a run folder (expected config.yaml and batches/, heartbeat/ or checkpoints/ "
            "written by `nestkit train`)"
        )
    skipped: list[SkippedLine] = []
    incidents = read_incidents(run_dir, skipped)
    steps: set[int] = set()
    ranks = logged_ranks(run_dir)
    if ranks:
        for record in read_batch_log(run_dir, ranks[0], skipped):
            if record.get("skipped"):
                steps.add(int(record["step"]))
    excluded: dict[str, int] = {}
    for record in read_quarantine(run_dir, skipped):
        if record.get("kind") == "excluded" and record.get("split", "train") == "train":
            excluded[record["cut_id"]] = excluded.get(record["cut_id"], 0) + 1
    return AnomalyReport(str(run_dir), incidents, sorted(steps), excluded, [str(s) for s in skipped])
