"""`nestkit stacks RUN_DIR`: every rank's heartbeat and stall dumps in one report, with a verdict."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import console, err_console, format_option, positive_seconds
from nestkit.core.paths import short_path


def stacks(
    run_dir: Optional[Path] = typer.Argument(
        None,
        help="The run folder (exp_manager.exp_dir/name); default: the run folder you are in, else the most recent one under ./runs.",
        show_default=False,
    ),
    output_format: str = format_option("table", "text", "json"),
    incident: Optional[int] = typer.Option(
        None, min=1, help="Stall incident number (the folder stall/N under the run folder; default: the latest)."
    ),
    dump: bool = typer.Option(
        False,
        "--dump",
        help="Ask a running job for fresh stacks first: every rank's watchdog dumps within a poll interval (the job is not stopped).",
    ),
    wait: float = typer.Option(
        20.0, callback=positive_seconds, help="With --dump: seconds to wait for the ranks' dumps."
    ),
) -> None:
    """One report of what every rank and DataLoader worker was doing, with a verdict.

    Phase, step, batch, the file each worker reads, where each process is stuck (from the watchdog's stack dumps), and a verdict: data stall,
    collective mismatch, compute stall, slow, healthy.
    """
    from nestkit.core.errors import UsageError
    from nestkit.tools.runs import find_run

    if run_dir is None:
        run_dir, found = find_run()
        (err_console if output_format == "json" else console).print(
            f"run folder {escape(short_path(run_dir))} ({found})"
        )
    elif not run_dir.is_dir():
        problem = "a file, not a folder" if run_dir.exists() else "no such folder"
        raise UsageError(f"run {run_dir}: {problem} (expected a run folder, exp_manager.exp_dir/name)")
    from nestkit.monitor.stall_report import build_report, render_text

    if dump:
        incident = _request_dump(run_dir, wait)
    report = build_report(run_dir, incident)
    _point_to_anomalies(run_dir, output_format)  # before the report: its verdict stays the last line
    if output_format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    elif output_format == "text":
        print(render_text(report), end="")
    else:
        _print_tables(report)


def _point_to_anomalies(run_dir: Path, output_format: str) -> None:
    """A stall and a NaN are both "the run went wrong": the stacks report says when the run also
    has training anomalies (first, so that the verdict stays the last line; on stderr for json, so
    that the JSON stays one document)."""
    from nestkit.runfolder.anomalies import summary_line

    line = summary_line(run_dir)
    if line is None:
        return
    if output_format == "json":
        err_console.print(f"anomalies: {escape(line)}")
    else:
        console.print(f"[bold yellow]anomalies:[/] {escape(line)}")


def _request_dump(run_dir: Path, wait: float) -> int:
    from nestkit.core.errors import NestkitError
    from nestkit.runfolder.heartbeats import read_heartbeats
    from nestkit.runfolder.incidents import open_incident

    beats = read_heartbeats(run_dir)
    if not beats:
        raise NestkitError(f"run {run_dir}: no heartbeats (expected heartbeat/rank<R>.json): nothing to ask for stacks")
    world = max(b.get("world_size", 1) for b in beats.values())
    request = {
        "kind": "manual",
        "rank": None,
        "reason": "stacks requested by `nestkit stacks --dump`",
        "time": time.time(),
    }
    found, _ = open_incident(run_dir, request)
    dumped = found.wait_for_dumps(world, wait)
    if len(dumped) < world:
        missing = sorted(set(range(world)) - set(dumped))
        err_console.print(  # stdout is the report only: `--format json` must parse
            f"[yellow]note:[/] no dump from rank(s) {', '.join(map(str, missing))} within {wait:g} s "
            "(finished, dead, or its watchdog thread cannot run)"
        )
    return found.number


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _print_tables(report) -> None:
    from nestkit.monitor.verdicts import error_gist

    if report.incident is not None:
        who = f" by rank {report.requested_by}" if report.requested_by is not None else ""
        console.print(f"[bold]incident {report.incident}[/]{who}: {escape(report.reason)}")
    ranks = Table(title=f"ranks of {escape(short_path(report.run_dir))}", title_justify="left")
    for column in ("rank", "status", "phase", "for", "step", "epoch/batch", "waiting for", "where"):
        ranks.add_column(column, overflow="fold")
    for r in report.ranks:
        if r.status == "missing":
            ranks.add_row(str(r.rank), "[red]no heartbeat[/]", *[""] * 6)
            continue
        waiting = "-"
        if r.waiting_for:
            waiting = f"batch {r.waiting_for['batch']}: " + ", ".join(c["cut_id"] for c in r.waiting_for["cuts"])
        elif r.phase == "collective":
            waiting = f"peers, in {r.collective_op}"
        elif r.data_end:
            waiting = f"nothing: data ended after batch {(r.data_end.get('after') or {}).get('batch')}"
        batch = f"{r.position['epoch']}/{r.position['batch']}" if r.position else "-"
        status = r.shown_status
        if r.stale and r.condition is None:
            status += f" (heartbeat {_seconds(r.heartbeat_age_s)} old)"
        ranks.add_row(
            str(r.rank),
            f"[bold red]{status}[/]" if r.condition else escape(status),
            r.phase or "-",
            _seconds(r.phase_seconds),
            str(r.step),
            batch,
            escape(waiting),
            escape(r.frame or (error_gist(r.error) if r.status == "failed" else None) or "-"),
        )
    console.print(ranks)
    loaders = Table(title="data loading processes", title_justify="left")
    for column in ("rank", "process", "state", "for", "batch", "reading", "where"):
        loaders.add_column(column, overflow="fold")
    for r in report.ranks:
        for w in r.loaders:
            reading = "-"
            if w.state == "loading":
                manifest = f", {short_path(w.manifest)}:{w.line}" if w.manifest else ""
                reading = f"{short_path(w.path)} (cut {w.cut_id}{manifest})"
            stuck = w.state != "idle" and (w.seconds or 0) > 5
            state = f"{w.state}, process {w.process}" if w.process else str(w.state)
            loaders.add_row(
                str(r.rank),
                f"{w.name} ({w.pid})",
                f"[bold red]{escape(state)}[/]" if stuck or w.process else escape(state),
                _seconds(w.seconds),
                str(w.batch["batch"]) if w.batch else "-",
                escape(reading),
                escape(w.frame or "-"),
            )
    if loaders.row_count:
        console.print(loaders)
    if report.incident is not None:
        console.print(
            f"stacks: {escape(short_path(str(Path(report.run_dir) / 'stall' / str(report.incident))))}/rank<R>/threads.txt, worker<W>.txt"
        )
    for line in report.afterwards:
        console.print(f"afterwards: {escape(line)}")
    color = {"healthy": "green", "finished": "green", "slow": "yellow"}.get(report.verdict.kind, "red")
    console.print(f"[bold {color}]verdict:[/] {escape(report.verdict.sentence)}")
