"""`nestkit import-manifest`: NeMo JSON-lines to a lhotse CutSet manifest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import Progress

from nestkit.commands.common import console, err_console, is_interactive, output_file


def import_manifest(
    manifests: list[Path] = typer.Argument(
        ..., help="NeMo JSON-lines manifest(s); several are joined in order.", show_default=False
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="lhotse CutSet manifest to write (.jsonl or .jsonl.gz).", show_default=False
    ),
    probe: bool = typer.Option(
        True,
        "--probe/--no-probe",
        help="Read each file's header to record its real sampling rate, length and channels.",
    ),
    sample_rate: int = typer.Option(
        16000, min=1, help="Nominal rate recorded without --probe (NeMo manifests do not say)."
    ),
) -> None:
    """Convert NeMo manifests to a lhotse CutSet (cuts keep their manifest and line).

    Relative audio paths are resolved against each manifest's folder. Every bad line or unreadable
    file is listed and nothing is written while any remains.
    """
    from nestkit.data.convert import nemo_to_lhotse
    from nestkit.data.index import CutIndex

    output_file(output, "--output")
    total = len(CutIndex.build([str(m) for m in manifests], sample_rate))
    with Progress(console=err_console, disable=not is_interactive(), transient=True) as progress:
        task = progress.add_task("converting", total=total)
        report = nemo_to_lhotse(
            [str(m) for m in manifests], str(output), probe, sample_rate, lambda n: progress.advance(task, n)
        )
    if report.problems:
        for problem in report.problems:
            err_console.print(f"[red]error:[/] {escape(problem)}")
        err_console.print(
            f"{len(report.problems)} problem(s); nothing written. Fix them or run `nestkit validate-manifest`."
        )
        raise typer.Exit(1)
    console.print(f"wrote {report.written} cuts to {escape(str(output))}" + ("" if probe else " (headers not probed)"))
