"""`nestkit replay-batch`: rebuild one batch exactly, in this process, with per-sample timing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import (
    checkpoint_file,
    console,
    err_console,
    format_option,
    output_folder,
    positive_seconds,
)
from nestkit.commands.render import match_text, plain_augmentation
from nestkit.commands.targets import (
    TARGET_HELP,
    TARGET_METAVAR,
    batch_place,
    open_run,
    split_args,
    use_deprecated_config,
)
from nestkit.core.errors import UsageError
from nestkit.core.paths import short_path


def replay_batch(
    args: Optional[list[str]] = typer.Argument(
        None,
        metavar="BATCH " + TARGET_METAVAR,
        help="BATCH: batch index within --epoch (or use --step). " + TARGET_HELP,
        show_default=False,
    ),
    step: Optional[int] = typer.Option(None, min=0, help="Training step instead of BATCH/--epoch."),
    rank: int = typer.Option(0, min=0, help="Rank whose batch to rebuild."),
    world_size: Optional[int] = typer.Option(
        None, min=1, help="Ranks in the run (default: the run folder's logs, else the config)."
    ),
    epoch: Optional[int] = typer.Option(
        None, min=0, help="Epoch of BATCH (without it, BATCH counts from the start of training)."
    ),
    run_dir: Optional[Path] = typer.Option(
        None,
        help="Run folder whose logged fingerprint to compare with (default: TARGET's, or the config's exp_dir/name).",
    ),
    timeout: float = typer.Option(
        10.0,
        callback=positive_seconds,
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
    audio: Optional[Path] = typer.Option(
        None,
        "--audio",
        help="Write per row the clean, noise and noisy audio as WAV into this folder, and one PNG of the batch "
        "(log-mel of clean and noisy audio, the step's masks, the mixed segments). Needs nestkit[report].",
    ),
    output_format: str = format_option("table", "json"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Deprecated: pass the config as TARGET (`replay-batch 71 CONFIG`).", show_default=False
    ),
    overrides: Optional[list[str]] = typer.Option(None, "--set", hidden=True),  # deprecated: overrides go after TARGET
) -> None:
    """Rebuild batch N of a rank exactly as training built it, in this process, and time each sample.

    Same plan, noise, augmentation and substitutes as training, without workers. Prints each sample's load time and status, the
    fingerprint and whether it matches the run's log; a failing or timed-out sample gets a repro
    folder (one-line manifest, config, command). Exit status 1 when a sample failed.
    """
    words = use_deprecated_config(split_args(args, "replay-batch", batch_allowed=True), config, "replay-batch")
    words.overrides += overrides or []
    if (words.batch is None) == (step is None):
        raise UsageError("replay-batch: give BATCH or --step (exactly one)")
    if checkpoint is not None and not forward:
        raise UsageError("replay-batch: --checkpoint is used by --forward only; add --forward")
    checkpoint_file(checkpoint, "--checkpoint")
    output_folder(repro_dir, "--repro-dir")
    if audio is not None:
        from nestkit.tools.report.plotting import require_matplotlib

        output_folder(audio, "--audio")
        require_matplotlib()
    target = open_run(words, run_dir, world_size, output_format == "json")
    from nestkit.tools.replay import replay_batch as replay  # torch and lhotse: after the arguments are usable
    from nestkit.tools.session import DebugSession

    # the table reports every failed sample; the dataset's per-sample warnings would repeat it
    logging.getLogger("nestkit.data").setLevel(logging.ERROR)
    session = DebugSession.open(target.config, target.world_size, target.run_dir, sample_timeout_s=timeout)
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
        assert words.batch is not None  # BATCH or --step, checked above
        place = batch_place(session, words.batch, epoch, rank)
    report = replay(session, place, forward, checkpoint, repro_dir, audio, plain_augmentation)
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
    if report.audio_files:
        folder = escape(short_path(str(Path(report.audio_files[0]).parent)))
        wavs = sum(1 for f in report.audio_files if f.endswith(".wav"))
        console.print(f"audio: {wavs} WAV files (clean, noise, noisy per row) and the picture in {folder}/")
        for f in report.audio_files:
            if f.endswith(".png"):
                console.print(f"picture: {escape(short_path(f))}")
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
