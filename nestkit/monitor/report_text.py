"""The stall report as plain text: `stall/<N>/report.txt` and `nestkit stacks --format text`."""

from __future__ import annotations

import time

from nestkit.monitor.views import FROZEN, KILLED, MISSING, UNRESPONSIVE, RankView
from nestkit.runfolder.heartbeats import FAILED


def batch_name(batch: dict, position: dict | None) -> str:
    """`8` in the epoch of the rank's position, `1/0` (epoch/batch) in another."""
    same = position is not None and batch["epoch"] == position["epoch"]
    return str(batch["batch"]) if same else f"{batch['epoch']}/{batch['batch']}"


def heard(rank: RankView) -> str:
    """How current a rank's line is: nothing when its heartbeat is fresh."""
    if rank.condition == FROZEN:
        return f"; process stopped (state {rank.process_state}), heartbeat stale for {rank.heartbeat_age_s} s"
    if rank.condition == UNRESPONSIVE:
        return f"; runs no Python (state {rank.process_state}), heartbeat stale for {rank.heartbeat_age_s} s"
    if rank.condition == KILLED:
        kill = rank.killed or {}
        return f"; killed by rank {kill.get('by_rank')}'s watchdog: {kill.get('reason')}"
    if rank.died:
        return f"; process gone, last heartbeat {rank.heartbeat_age_s} s ago"
    if rank.stale:
        return f"; last heartbeat {rank.heartbeat_age_s} s ago"
    return ""


def render_text(report) -> str:
    lines = [f"nestkit stall report: {report.run_dir}"]
    if report.incident is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.time))
        who = f" by rank {report.requested_by}" if report.requested_by is not None else ""
        lines.append(f"incident {report.incident}, declared{who} at {when}: {report.reason}")
    lines.append("")
    for r in report.ranks:
        if r.status == MISSING:
            lines.append(f"rank {r.rank}: no heartbeat")
            continue
        pos = f"epoch {r.position['epoch']} batch {r.position['batch']}" if r.position else "no batch yet"
        lines.append(
            f"rank {r.rank} [{r.shown_status}] pid {r.pid} on {r.host}: {r.phase} for {r.phase_seconds} s, step {r.step} "
            f"({pos}); no progress for {r.idle_seconds} s (limit {r.timeout}: {r.timeout_rule}){heard(r)}"
        )
        if r.waiting_for:
            cuts = ", ".join(
                f"{c['cut_id']} ({c['path']}, {c.get('manifest')}:{c.get('line')})" for c in r.waiting_for["cuts"]
            )
            cuts = cuts or "its cuts are not recorded (the heartbeat file could not be rewritten)"
            lines.append(f"  waiting for epoch {r.waiting_for['epoch']} batch {r.waiting_for['batch']}: {cuts}")
        if r.in_flight:
            lines.append(
                "  in flight: " + ", ".join(f"batch {batch_name(b, r.position)} ({b['state']})" for b in r.in_flight)
            )
        if r.data_end:
            after = r.data_end.get("after") or {}
            lines.append(
                f"  data ended after epoch {after.get('epoch')} batch {after.get('batch')} ({r.data_end.get('detail')})"
            )
        if r.collective and r.collective.get("round"):
            c = r.collective
            lines.append(f"  all-reduce round {c['round']}: {c['buckets_done']}/{c['buckets_launched']} buckets done")
        if r.frame:
            lines.append(f"  main thread at {r.frame}")
        if r.spy_frame and r.spy_frame != r.frame:
            lines.append(f"  py-spy (from outside) at {r.spy_frame}" + (" holding the GIL" if r.spy_gil else ""))
        if r.error and r.status == FAILED:
            lines.append(f"  error: {r.error}")
        for w in r.loaders:
            held = f" for {w.seconds} s" if w.seconds is not None else ""
            what = f"reading {w.where}" if w.state == "loading" else (w.state or "?")
            batch = f" batch {w.batch['batch']}" if w.batch else ""
            process = f" [process {w.process}]" if w.process else ""
            lines.append(
                f"  {w.name} pid {w.pid}{process}: {what}{batch}{held}" + (f" at {w.frame}" if w.frame else "")
            )
    lines.append("")
    lines += [f"afterwards: {line}" for line in getattr(report, "afterwards", [])]
    lines.append(f"verdict: {report.verdict.sentence}")  # last: `nestkit stacks ... | tail -1`
    return "\n".join(lines) + "\n"
