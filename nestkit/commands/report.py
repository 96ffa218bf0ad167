"""`nestkit report`: one self-contained HTML page of a run (finished or live), and its figures as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from nestkit.commands.common import console, err_console, output_file, output_folder, positive_seconds
from nestkit.commands.render import plain_augmentation
from nestkit.core.paths import short_path


def report(
    run_dir: Optional[Path] = typer.Argument(
        None,
        help="The run folder (exp_manager.exp_dir/name); default: the run folder you are in, else the most recent one under ./runs.",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="HTML file to write [default: RUN_DIR/report.html].", show_default=False
    ),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write every figure as a PNG into this folder."),
    incident_batches: int = typer.Option(
        4, min=0, help="Stall and anomaly batches to rebuild and draw (0: none; each loads its audio)."
    ),
    data: bool = typer.Option(
        True,
        "--data/--no-data",
        help="Open the run's manifests for epoch lengths, file names and incident batches (--no-data: the run folder only).",
    ),
    timeout: float = typer.Option(
        10.0, callback=positive_seconds, help="Seconds each sample of an incident batch may take to load."
    ),
) -> None:
    """Write one HTML file that shows a run: loss, lr, masked frames and throughput; each rank's step
    time split into data wait and compute, with stragglers named; incidents on a timeline with their
    batches drawn; the quarantine by category; epoch progress.

    Self-contained (figures inside, no network, no script): open it from disk. Works on a live run
    (it reads whatever is there). Needs the extra nestkit[report] (matplotlib).
    """
    import logging

    from nestkit.core.errors import UsageError
    from nestkit.tools.runs import find_run

    if run_dir is None:
        run_dir, found = find_run()
        console.print(f"run folder {escape(short_path(run_dir))} ({found})")
    elif not run_dir.is_dir():
        problem = "a file, not a folder" if run_dir.exists() else "no such folder"
        raise UsageError(f"run {run_dir}: {problem} (expected a run folder, exp_manager.exp_dir/name)")
    out = output_file(output if output is not None else run_dir / "report.html", "--output")
    if png is not None:
        output_folder(png, "--png")
    from nestkit.tools.report.build import build_report

    logging.getLogger("nestkit.data").setLevel(logging.ERROR)  # a rebuilt batch's bad samples are in the report
    result = build_report(run_dir, out, png, incident_batches, data, plain_augmentation, timeout)
    for sentence in result.stragglers:
        console.print(f"[yellow]straggler:[/] {escape(sentence)}")
    for note in result.notes:
        err_console.print(f"[dim]note: {escape(note)}[/]")
    console.print(f"report: {escape(short_path(result.html))} ({len(result.pictures)} figures)")
    if result.pngs and png is not None:
        console.print(f"figures: {len(result.pngs)} PNG files in {escape(short_path(png))}/")
