"""`nestkit anomalies RUN_DIR`: every training anomaly of a run, with its verdict and its cuts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import console, err_console, format_option
from nestkit.core.paths import short_path


def anomalies(
    run_dir: Optional[Path] = typer.Argument(
        None,
        help="The run folder (exp_manager.exp_dir/name); default: the run folder you are in, else the most recent one under ./runs.",
        show_default=False,
    ),
    output_format: str = format_option("table", "json", "ids"),
    cuts: int = typer.Option(
        3, "--cuts", min=0, help="Most cuts shown per incident in the table (those with a share of the excess loss)."
    ),
) -> None:
    """Loss spikes, gradient-norm spikes, outlier utterances and NaN/Inf of a run, named by their data.

    Each incident: the step, what was judged abnormal and against what typical value, the cuts ranked by their share of
    the excess loss (file, manifest:line, noise and augmentation), for NaN/Inf the first non-finite module and a repro
    command, and what training did (warned, skipped, stopped). Exit status 0 either way.

    --format ids prints each incident's first cut, one per line with a comment: a ready nestkit.exclude_cuts file.
    """
    from nestkit.core.errors import UsageError
    from nestkit.runfolder.anomalies import KIND_NAMES
    from nestkit.tools.anomalies import anomaly_report
    from nestkit.tools.runs import find_run

    if run_dir is None:
        run_dir, found = find_run()
        (err_console if output_format != "table" else console).print(
            f"run folder {escape(short_path(run_dir))} ({found})"
        )
    elif not run_dir.is_dir():
        problem = "a file, not a folder" if run_dir.exists() else "no such folder"
        raise UsageError(f"run {run_dir}: {problem} (expected a run folder, exp_manager.exp_dir/name)")
    report = anomaly_report(run_dir)
    for line in report.unreadable:
        err_console.print(f"[yellow]note:[/] {escape(line)}")
    if output_format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    elif output_format == "ids":
        for cut_id, incident in report.culprits():
            first = incident["cuts"][0]
            kinds = ", ".join(KIND_NAMES.get(k, k) for k in incident["kinds"])
            print(f"{cut_id}  # {incident['id']}: {kinds}; {first.get('path')}")
    else:
        _render(report, cuts)


def _render(report, cuts: int) -> None:
    from nestkit.runfolder.anomalies import KIND_NAMES

    incidents = report.incidents
    skipped = f", {len(report.skipped_steps)} step(s) skipped" if report.skipped_steps else ""
    console.print(f"[bold]anomalies of {escape(short_path(report.run_dir))}[/]: {len(incidents)} incident(s){skipped}")
    if not incidents:
        console.print("[green]no anomaly: no loss or gradient spike, no outlier utterance, no NaN/Inf[/]")
        _render_excluded(report)
        return
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("incident", "step", "what", "loss (typical)", "grad norm", "first cut", "file", "outcome"):
        table.add_column(column, overflow="fold")
    for incident in incidents:
        first = (incident.get("cuts") or [{}])[0]
        loss = _num(incident.get("loss"))
        if incident.get("typical_loss") is not None:
            loss += f" ({_num(incident['typical_loss'])})"
        table.add_row(
            escape(incident["id"]),
            str(incident["step"]),
            escape(", ".join(KIND_NAMES.get(k, k) for k in incident.get("kinds") or [])),
            loss,
            _num(incident.get("grad_norm")),
            escape(first.get("cut_id") or "-"),
            escape(short_path(first.get("path"))),
            _outcome(incident.get("outcome")),
        )
    console.print(table)
    for incident in incidents:
        console.print(f"\n[bold]{escape(incident['id'])}[/]: {escape(incident.get('verdict') or '')}")
        # the cuts that carry the anomaly (a share of the excess, or NaN/Inf); at least the first
        cuts_of = incident.get("cuts") or []
        ranked = [c for c in cuts_of if c.get("share") or c.get("nonfinite")][:cuts] or cuts_of[: min(cuts, 1)]
        if ranked:
            console.print(_cuts_table(ranked))
    _render_excluded(report)


def _cuts_table(rows: list[dict]) -> Table:
    from nestkit.training.incident import describe_augment

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in (
        "#",
        "cut",
        "share",
        "loss",
        "frames",
        "rank",
        "epoch/batch",
        "manifest:line",
        "noise / augmentation",
    ):
        table.add_column(column, overflow="fold")
    for number, row in enumerate(rows):
        share = (
            "NaN origin"
            if row.get("probe_origin")
            else "NaN/Inf"
            if row.get("nonfinite")
            else f"{row.get('share') or 0:.0%}"
        )
        where = f"{short_path(row.get('manifest'))}:{row.get('line')}" if row.get("manifest") else "-"
        table.add_row(
            str(number),
            escape(row.get("cut_id") or "-"),
            share,
            _num(row.get("loss")) if row.get("frames") else "-",
            str(row.get("frames")),
            str(row.get("rank")),
            f"{row.get('epoch')}/{row.get('batch')}",
            escape(where),
            escape(describe_augment(row)),
        )
    return table


def _render_excluded(report) -> None:
    if report.excluded:
        listed = ", ".join(f"{cut} ({n} substitution(s))" for cut, n in sorted(report.excluded.items()))
        console.print(f"excluded by nestkit.exclude_cuts since: {escape(listed)}")


def _outcome(outcome: str | None) -> str:
    color = {"warned": "yellow", "skipped": "cyan", "stopped": "red"}.get(outcome or "", "white")
    return f"[{color}]{outcome or '-'}[/]"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"
