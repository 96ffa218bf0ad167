"""`nestkit lookup`: batch / step / cut / sample index -> the cuts, files and decisions involved."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import console, print_notes
from nestkit.commands.render import describe_augmentation, match_text, short_path


def lookup(
    config: Path = typer.Argument(..., help="The training config.", show_default=False),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="dotted.key=value overrides, as given to `nestkit train`.", show_default=False
    ),
    batch: Optional[int] = typer.Option(None, help="Batch index within the epoch (see --epoch)."),
    step: Optional[int] = typer.Option(
        None, help="Training step instead of --batch/--epoch (what the progress bar shows)."
    ),
    cut: Optional[str] = typer.Option(None, help="Where this cut id lands in --epoch: rank, batch, slot."),
    index: Optional[int] = typer.Option(
        None, help="The INDEX-th sample (0-based) of --rank's stream: which cut and file."
    ),
    rank: int = typer.Option(0, help="Rank to show."),
    all_ranks: bool = typer.Option(
        False, "--all-ranks", help="Show the batch on every rank, with each rank's batch count."
    ),
    world_size: Optional[int] = typer.Option(
        None, help="Ranks in the run (default: the run folder's logs, else the config)."
    ),
    epoch: int = typer.Option(0, help="Epoch of --batch / --cut."),
    run_dir: Optional[Path] = typer.Option(
        None, help="Run folder whose batch logs to compare with (default: the config's)."
    ),
    load: bool = typer.Option(
        True,
        "--load/--no-load",
        help="Build the batch (reads its audio) to show noise/augmentation decisions and the fingerprint.",
    ),
    output_format: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Name the cuts, files and noise decisions of batch N (or step S), or find a cut or sample index.

    Per rank: each cut's manifest:line, path, offset and duration, the noise and augmentation
    decisions training makes for them, the batch fingerprint, each rank's batch count, and the
    batches in flight while that step runs (Lightning prefetches one, the DataLoader
    num_workers x prefetch_factor more: a hang "at step 71" may be a load for step 72-75).
    """
    from nestkit.config import load_config
    from nestkit.tools.lookup import lookup_batch
    from nestkit.tools.positions import Position
    from nestkit.tools.session import DebugSession

    if output_format not in ("table", "json"):
        raise typer.BadParameter(f"--format: expected table or json, got {output_format!r}")
    chosen = [
        name
        for name, value in (("--batch", batch), ("--step", step), ("--cut", cut), ("--index", index))
        if value is not None
    ]
    if len(chosen) != 1:
        raise typer.BadParameter(
            f"give exactly one of --batch, --step, --cut, --index (got {', '.join(chosen) or 'none'})"
        )
    loaded = load_config(config, overrides or [])
    print_notes(loaded.notes)
    logging.getLogger("nestkit.data").setLevel(logging.ERROR)  # failures are shown under the table
    session = DebugSession.open(loaded.config, world_size, run_dir)
    ranks = list(range(session.world_size)) if all_ranks else [rank]
    for r in ranks:
        session.check_rank(r)

    if cut is not None:
        found = session.locate_cut(cut, epoch)
        index_ = session.pipeline.index
        result = {
            "cut": cut,
            "epoch": epoch,
            "world_size": session.world_size,
            "matches": [
                {
                    "manifest_line": index_.where(row),
                    "places": [
                        {"rank": r, "batch": p.batch, "slot": s, "step": session.step_of(p)} for r, p, s in places
                    ],
                }
                for row, places in found
            ],
        }
        if output_format == "json":
            print(json.dumps(result, indent=2))
            return
        if len(found) > 1:
            console.print(
                f"[yellow]{len(found)} cuts have the id {escape(cut)} (joined manifests list files of the same name at the same line)[/]"
            )
        for row, places in found:
            manifest, line = index_.manifests[int(index_.source[row])], int(index_.line[row])
            where = f"{short_path(manifest)}:{line}"
            if not places:
                console.print(
                    f"cut {escape(cut)} ({escape(where)}) is not in epoch {epoch}: filtered by min/max_duration or dropped by drop_last"
                )
            for r, p, s in places:
                console.print(
                    f"cut {escape(cut)} ({escape(where)}): epoch {epoch}, rank {r}, batch {p.batch}, slot {s} (step {session.step_of(p)} from the start)"
                )
        return

    if index is not None:
        position, slot = session.sample_at(rank, index)
        planned = session.planned(rank, position)[slot]
        result = {
            "index": index,
            "rank": rank,
            "epoch": position.epoch,
            "batch": position.batch,
            "slot": slot,
            "cut_id": planned.cut_id,
            "manifest_line": planned.where,
            "path": planned.path,
        }
        if output_format == "json":
            print(json.dumps(result, indent=2))
            return
        console.print(
            f"sample {index} of rank {rank}: {escape(planned.cut_id)} ({escape(short_path(planned.manifest))}:{planned.line}) {escape(short_path(planned.path))} "
            f"-- epoch {position.epoch}, batch {position.batch}, slot {slot}"
        )
        return

    position = session.position_of_step(step) if step is not None else Position(epoch, batch)
    results = lookup_batch(session, position, ranks, load)
    counts = {r: session.batches_per_rank(position.epoch) for r in range(session.world_size)}
    if output_format == "json":
        print(
            json.dumps(
                {"world_size": session.world_size, "batches_per_rank": counts, "ranks": [r.as_dict() for r in results]},
                indent=2,
                default=str,
            )
        )
        return
    for result in results:
        _render(result, session.world_size)
    console.print(
        f"batches per rank in epoch {position.epoch}: "
        + ", ".join(f"rank {r}: {n}" for r, n in counts.items())
        + ("  (equal by construction)" if len(set(counts.values())) == 1 else "")
    )


def _render(result, world_size: int) -> None:
    header = (
        f"[bold]batch {result.position.batch} of rank {result.rank}[/] (epoch {result.position.epoch}, "
        f"step {result.step}; world size {world_size})"
    )
    if result.fingerprint:
        header += f"  fingerprint {result.fingerprint}  " + match_text(result.matches_log, result.logged)
    console.print(header)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("#", "cut", "manifest:line", "path", "offset", "dur", "noise / augmentation"):
        table.add_column(column, overflow="fold")
    records = result.batch.records if result.batch is not None else [None] * len(result.planned)
    for cut, record in zip(result.planned, records):
        table.add_row(
            str(cut.slot),
            escape(cut.cut_id),
            escape(f"{short_path(cut.manifest)}:{cut.line}"),
            escape(short_path(cut.path)),
            f"{cut.offset:.2f}",
            f"{cut.duration:.2f}",
            describe_augmentation(record) if record else "[dim](not loaded)[/]",
        )
    console.print(table)
    if result.batch is not None and result.batch.failures:
        for failure in result.batch.failures:
            console.print(
                f"  [yellow]{failure['kind']} {escape(str(failure['cut_id']))} unusable: {escape(failure['reason'])}[/]"
            )
    if result.in_flight:
        ahead = ", ".join(
            str(p.batch) if p.epoch == result.position.epoch else f"{p.epoch}/{p.batch}" for p in result.in_flight
        )
        console.print(f"  in flight while step {result.step} runs: batch(es) {ahead}")
