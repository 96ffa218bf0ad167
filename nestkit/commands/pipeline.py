"""`nestkit pipeline`: run the data pipeline alone (no model) and summarise what it produced."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nestkit.commands.common import choice_option, console, err_console, is_interactive, output_folder, print_notes


def pipeline(
    config: Path = typer.Argument(
        ...,
        help="Training config (NeMo's nest_fast-conformer.yaml layout or a short native one), or a run folder (its config.yaml).",
        show_default=False,
    ),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="dotted.key=value overrides, e.g. model.train_ds.batch_size=4.", show_default=False
    ),
    split: str = choice_option("train", "validation", name="--split", help="Which dataset"),
    epoch: int = typer.Option(0, min=0, help="Epoch whose plan to run."),
    rank: int = typer.Option(0, min=0, help="Rank whose batches to build."),
    world_size: int = typer.Option(1, min=1, help="Number of ranks the plan is cut for."),
    workers: Optional[int] = typer.Option(None, min=0, help="DataLoader workers (default: the config's num_workers)."),
    max_batches: Optional[int] = typer.Option(None, min=1, help="Stop after this many batches."),
    run_dir: Optional[Path] = typer.Option(None, help="Write the quarantine file here (default: report only)."),
) -> None:
    """Build every batch of one epoch for one rank, exactly as training would, and summarise.

    Shows the plan (cuts kept, filtered, dropped, batches per rank), throughput in audio seconds per
    second, the augmentation decisions and every sample or noise that had to be replaced.
    """
    from nestkit.config import load_config
    from nestkit.data.pipeline import build_pipeline
    from nestkit.data.stats import DataStats
    from nestkit.tools.runs import config_file_of

    if run_dir is not None:
        output_folder(run_dir, "--run-dir")
    loaded = load_config(config_file_of(config), overrides or [])
    print_notes(loaded.notes)
    pipe = build_pipeline(loaded.config, split, rank, world_size, run_dir, workers)
    pipe.sampler.set_epoch(epoch)
    plan = pipe.sampler.plan()
    total = plan.num_batches if max_batches is None else min(max_batches, plan.num_batches)
    num_workers = pipe.config.num_workers
    stats = DataStats()
    first_fingerprints: list[tuple[int, str]] = []
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not is_interactive(), transient=True) as progress:
        task = progress.add_task(f"{split} epoch {epoch} rank {rank}", total=total)
        for batch in pipe.dataloader():
            stats.add(batch)
            if len(first_fingerprints) < 3:
                first_fingerprints.append((batch.position.batch, batch.fingerprint))
            progress.advance(task)
            if stats.batches >= total:
                break
    elapsed = time.perf_counter() - started

    s = plan.stats
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("config", escape(str(config)) + f"  ({split}, epoch {epoch}, rank {rank} of {world_size})")
    table.add_row(
        "plan",
        f"{s.total_cuts} cuts; {s.too_short} shorter than min_duration, {s.too_long} longer than max_duration; "
        f"{s.batches_per_rank} batches on every rank"
        + (f"; {s.dropped} dropped by drop_last" if s.dropped else "")
        + (f"; {s.repeated} repeated to fill the last round" if s.repeated else ""),
    )
    rate = stats.audio_seconds / elapsed if elapsed > 0 else 0.0
    table.add_row(
        "produced",
        f"{stats.batches} batches, {stats.cuts} cuts, {stats.audio_seconds:.1f} s of audio in {elapsed:.1f} s "
        f"({rate:,.0f} audio-s/s, {num_workers} worker{'s' if num_workers != 1 else ''})",
    )
    modes = ", ".join(f"{m} {stats.modes[m]}" for m in ("skip", "noise", "speech"))
    fallback_text = {
        "white": "white noise after failed noise files: {}",
        "none": "no noise manifest: {} noise mix(es) added nothing",
    }
    fallbacks = "; ".join(fallback_text[k].format(v) for k, v in stats.noise_fallbacks.items()) or "no noise fallback"
    table.add_row("augment", f"{modes} ({fallbacks})")
    if stats.failures:
        detail = ", ".join(f"{n} {kind} {category}" for (kind, category), n in stats.failures.most_common())
        where = f" -> {escape(str(pipe.dataset.quarantine.path))}" if pipe.dataset.quarantine.path else ""
        table.add_row("bad data", f"[yellow]{stats.substituted} sample(s) replaced; {detail}{where}[/]")
        for (kind, category), record in stats.failed_examples.items():
            table.add_row("", f"[dim]{kind} {category}: {escape(record['reason'])}[/]")
    else:
        table.add_row("bad data", "none")
    table.add_row("fingerprints", ", ".join(f"batch {b} {fp}" for b, fp in first_fingerprints))
    console.print(table)
