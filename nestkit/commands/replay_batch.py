"""`nestkit replay-batch`: rebuild one batch exactly, in this process, with per-sample timing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import console, err_console, print_notes
from nestkit.commands.render import match_text, short_path


def replay_batch(
    batch: Optional[int] = typer.Argument(None, help="Batch index within --epoch (or use --step).", show_default=False),
    config: Path = typer.Option(..., "--config", help="The training config.", show_default=False),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="dotted.key=value override (repeatable)."),
    step: Optional[int] = typer.Option(None, help="Training step instead of BATCH/--epoch."),
    rank: int = typer.Option(0, help="Rank whose batch to rebuild."),
    world_size: Optional[int] = typer.Option(
        None, help="Ranks in the run (default: the run folder's logs, else the config)."
    ),
    epoch: int = typer.Option(0, help="Epoch of BATCH."),
    run_dir: Optional[Path] = typer.Option(
        None, help="Run folder whose logged fingerprint to compare with (default: the config's)."
    ),
    timeout: float = typer.Option(
        10.0,
        help="Seconds each sample may take to load; a slower one is reported as timeout (raise it for slow storage).",
    ),
    forward: bool = typer.Option(
        False, "--forward", help="Also run the training step on it: loss, and the first module with NaN/Inf."
    ),
    checkpoint: Optional[Path] = typer.Option(
        None, help="Weights for --forward (a nestkit or NeMo checkpoint); default: freshly initialised."
    ),
    repro_dir: Path = typer.Option(
        Path("nestkit-repro"), help="Where a repro folder is written for each sample that fails."
    ),
    output_format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Rebuild batch N of a rank exactly as training built it, in this process, and time each sample.

    Same plan, noise, augmentation and substitutes as training, without workers. Prints each sample's load time and status, the
    fingerprint and whether it matches the run's log; a failing or timed-out sample gets a repro
    folder (one-line manifest, config, command). Exit status 1 when a sample failed.
    """
    from nestkit.config import load_config
    from nestkit.tools.replay import replay_batch as replay
    from nestkit.tools.session import DebugSession

    if output_format not in ("table", "json"):
        raise typer.BadParameter(f"--format: expected table or json, got {output_format!r}")
    if (batch is None) == (step is None):
        raise typer.BadParameter("give BATCH or --step (exactly one)")
    loaded = load_config(config, overrides or [])
    print_notes(loaded.notes)
    # the table reports every failed sample; the dataset's per-sample warnings would repeat it
    logging.getLogger("nestkit.data").setLevel(logging.ERROR)
    session = DebugSession.open(loaded.config, world_size, run_dir, sample_timeout_s=timeout)
    if step is not None:
        places = session.places_of_step(step, rank)
        place = places[0]
        if len(places) > 1:
            others = ", ".join(str(p.batch) for p in places[1:])
            err_console.print(
                f"step {step} trains {len(places)} micro-batches on rank {rank} (accumulate_grad_batches): replaying "
                f"batch {place.batch}; the others are batch(es) {others} of epoch {place.epoch}"
            )
    else:
        place = session.place_of_batch(epoch, batch, rank)
    report = replay(session, place, forward, checkpoint, repro_dir)
    if output_format == "json":
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _render(report)
    if report.failed or report.batch_error:
        raise typer.Exit(1)


def _render(report) -> None:
    console.print(
        f"[bold]replay of batch {report.place.batch}, rank {report.rank}[/] (epoch {report.place.epoch}, "
        f"world size {report.world_size})"
    )
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("#", "cut", "manifest:line", "path", "load ms", "status"):
        table.add_column(column, overflow="fold")
    for s in report.samples:
        where = f"{short_path(s.manifest)}:{s.line}" if s.manifest else "-"
        if s.status == "ok":
            status = "[green]ok[/]"
        else:
            status = f"[red]{escape(s.status)}[/]" + (f" -> replaced by {escape(s.used_cut)}" if s.used_cut else "")
        table.add_row(
            str(s.slot), escape(s.planned_cut), escape(where), escape(short_path(s.path)), f"{s.load_ms:.1f}", status
        )
    console.print(table)
    for s in report.failed:
        console.print(f"  [red]{escape(s.planned_cut)}[/]: {escape(s.reason or '')}")
    if report.batch_error:
        console.print(f"[red]the batch cannot be built: {escape(report.batch_error)}[/]")
    else:
        console.print(f"fingerprint {report.fingerprint}  " + match_text(report.matches_log, report.logged))
    for folder in report.repro_dirs:
        console.print(f"repro folder: {escape(folder)}  (run: sh {escape(folder)}/command.sh)")
    f = report.forward
    if f is not None:
        line = f"forward at step {f.step}: loss {f.loss:.6f}, {f.masked_frames} masked frames"
        if f.logged_loss is not None:
            same = "[green]same as training[/]" if f.logged_loss == f.loss else f"training logged {f.logged_loss:.6f}"
            line += f" ({same})"
        if f.checkpoint:
            line += f"; weights from {escape(f.checkpoint)} (global step {f.checkpoint_step})"
        console.print(line)
        if f.checkpoint_step is not None and f.checkpoint_step != f.step:
            console.print(
                f"  [dim]step {f.step} was trained with the weights of global step {f.step}; these are from step "
                f"{f.checkpoint_step}, so the loss differs. A checkpoint saved at global step {f.step} reproduces it exactly.[/]"
            )
        elif f.checkpoint is None:
            console.print("  [dim]freshly initialised weights (pass --checkpoint for the run's)[/]")
        if f.nonfinite:
            console.print(f"[red]{escape(f.nonfinite)}[/]")
        elif f.grad_norm is not None:
            console.print(f"gradients finite (norm {f.grad_norm:.4g})")
