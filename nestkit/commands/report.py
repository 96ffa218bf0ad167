"""`nestkit report`: one self-contained HTML page of a run (finished or live), and its figures as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from nestkit.commands.common import console, err_console
from nestkit.commands.render import plain_augmentation
from nestkit.core.paths import short_path


def report(
    run_dir: Path = typer.Argument(..., help="The run folder (runs/<name>).", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="HTML file to write [default: RUN_DIR/report.html]."
    ),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write every figure as a PNG into this folder."),
    incident_batches: int = typer.Option(
        4, help="Stall and anomaly batches to rebuild and draw (0: none; each loads its audio)."
    ),
    data: bool = typer.Option(
        True,
        "--data/--no-data",
        help="Open the run's manifests for epoch lengths, file names and incident batches (--no-data: the run folder only).",
    ),
    timeout: float = typer.Option(10.0, help="Seconds each sample of an incident batch may take to load."),
) -> None:
    """Write one HTML file that shows a run: loss, lr, masked frames and throughput; each rank's step
    time split into data wait and compute, with stragglers named; incidents on a timeline with their
    batches drawn; the quarantine by category; epoch progress.

    Self-contained (figures inside, no network, no script): open it from disk. Works on a live run
    (it reads whatever is there). Needs the extra nestkit[report] (matplotlib).
    """
    import logging

    from nestkit.tools.report.build import build_report

    if incident_batches < 0:
        raise typer.BadParameter(f"--incident-batches: must not be negative (got {incident_batches})")
    logging.getLogger("nestkit.data").setLevel(logging.ERROR)  # a rebuilt batch's bad samples are in the report
    out = output if output is not None else run_dir / "report.html"
    result = build_report(run_dir, out, png, incident_batches, data, plain_augmentation, timeout)
    for sentence in result.stragglers:
        console.print(f"[yellow]straggler:[/] {escape(sentence)}")
    for note in result.notes:
        err_console.print(f"[dim]note: {escape(note)}[/]")
    console.print(f"report: {escape(short_path(str(result.html)))} ({len(result.pictures)} figures)")
    if result.pngs:
        console.print(f"figures: {len(result.pngs)} PNG files in {escape(short_path(str(png)))}/")
