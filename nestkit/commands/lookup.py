"""`nestkit lookup`: batch / step / cut / sample index -> the cuts, files and decisions involved."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from nestkit.commands.common import console, format_option
from nestkit.commands.render import describe_augmentation, match_text
from nestkit.commands.targets import TARGET_HELP, TARGET_METAVAR, batch_place, open_run, split_args
from nestkit.core.errors import UsageError
from nestkit.core.paths import short_path


def lookup(
    args: Optional[list[str]] = typer.Argument(None, metavar=TARGET_METAVAR, help=TARGET_HELP, show_default=False),
    batch: Optional[int] = typer.Option(None, min=0, help="Batch index within the epoch (see --epoch)."),
    step: Optional[int] = typer.Option(
        None, min=0, help="Training step instead of --batch/--epoch (what the progress bar shows)."
    ),
    cut: Optional[str] = typer.Option(None, help="Where this cut id lands in --epoch: rank, batch, slot."),
    index: Optional[int] = typer.Option(
        None, min=0, help="The INDEX-th sample (0-based) of --rank's stream: which cut and file."
    ),
    rank: int = typer.Option(0, min=0, help="Rank to show."),
    all_ranks: bool = typer.Option(
        False, "--all-ranks", help="Show the batch on every rank, with each rank's batch count."
    ),
    world_size: Optional[int] = typer.Option(
        None, min=1, help="Ranks in the run (default: the run folder's logs, else the config)."
    ),
    epoch: Optional[int] = typer.Option(
        None,
        min=0,
        help="Epoch of --batch / --cut (without it, --batch counts from the start of training and --cut looks in epoch 0).",
    ),
    run_dir: Optional[Path] = typer.Option(
        None, help="Run folder whose batch logs to compare with (default: TARGET's, or the config's exp_dir/name)."
    ),
    load: bool = typer.Option(
        True,
        "--load/--no-load",
        help="Build the batch (reads its audio) to show noise/augmentation decisions and the fingerprint.",
    ),
    output_format: str = format_option("table", "json"),
) -> None:
    """Name the cuts, files and noise decisions of batch N (or step S), or find a cut or sample index.

    Per rank: each cut's manifest:line, path, offset and duration, the noise and augmentation
    decisions training makes for them, the batch fingerprint, each rank's batch count, and the
    batches in flight while that step runs (Lightning prefetches one, the DataLoader
    num_workers x prefetch_factor more: a hang "at step 71" may be a load for step 72-75).
    """
    chosen = [
        name
        for name, value in (("--batch", batch), ("--step", step), ("--cut", cut), ("--index", index))
        if value is not None
    ]
    if len(chosen) != 1:
        raise UsageError(
            f"lookup: give exactly one of --batch, --step, --cut, --index (got {', '.join(chosen) or 'none'})"
        )
    if cut is not None and not cut.strip():
        raise UsageError("lookup: --cut needs a cut id (got an empty one). Cut ids look like <audio stem>-L<line>")
    target = open_run(split_args(args, "lookup"), run_dir, world_size, output_format == "json")
    from nestkit.tools.lookup import lookup_batch  # torch and lhotse: after the arguments are known to be usable
    from nestkit.tools.session import DebugSession

    logging.getLogger("nestkit.data").setLevel(logging.ERROR)  # failures are shown under the table
    session = DebugSession.open(target.config, target.world_size, target.run_dir)

    if cut is not None:
        _lookup_cut(session, cut, epoch or 0, output_format)
        return
    if index is not None:
        _lookup_sample(session, rank, index, output_format)
        return

    if step is not None:
        first = session.place_of_step(step, rank)
        ranks = session.ranks_at(first) if all_ranks else [rank]
        places = [p for r in ranks for p in session.places_of_step(step, r)]
    else:
        assert batch is not None  # exactly one of --batch, --step, --cut, --index was given
        first = batch_place(session, batch, epoch, rank)
        ranks = session.ranks_at(first) if all_ranks else [rank]
        places = [first if r == rank else session.place_of_batch(first.epoch, first.batch, r) for r in ranks]
    results = lookup_batch(session, places, load)
    counts = session.batches_in_epoch(first.epoch)
    if output_format == "json":
        print(
            json.dumps(
                {
                    "world_size": session.layout.world_size_at(first),
                    "segments": [asdict(s) for s in session.segments],
                    "batches_per_rank": counts,
                    "ranks": [r.as_dict() for r in results],
                },
                indent=2,
                default=str,
            )
        )
        return
    for result in results:
        _render(result)
    if all_ranks:
        _render_segment(session, first)
    # after a resume on fewer ranks, the ranks beyond its world size take no part in later epochs
    taking = {r: n for r, n in counts.items() if n > 0} or counts
    absent = sorted(set(counts) - set(taking))
    console.print(
        f"batches per rank in epoch {first.epoch}: "
        + ", ".join(f"rank {r}: {n}" for r, n in taking.items())
        + ("  (equal by construction)" if len(taking) > 1 and len(set(taking.values())) == 1 else "")
        + (f"; rank(s) {', '.join(map(str, absent))} took no part in it (fewer ranks then)" if absent else "")
    )


def _render_segment(session, place) -> None:
    segments = session.segments
    segment = segments[place.segment]
    end = segments[place.segment + 1].start_step - 1 if place.segment + 1 < len(segments) else None
    steps = f"steps {segment.start_step}..{end}" if end is not None else f"steps {segment.start_step}.."
    console.print(
        f"segment {place.segment + 1} of {len(segments)}: {steps} on {segment.world_size} rank(s) x accumulate "
        f"{segment.accumulate}, from epoch {segment.epoch} micro-batch {segment.consumed}"
        + (f" (resumed from {escape(short_path(segment.resumed_from))})" if segment.resumed_from else "")
    )


def _lookup_cut(session, cut: str, epoch: int, output_format: str) -> None:
    found = session.locate_cut(cut, epoch)
    index_ = session.pipeline.index
    result = {
        "cut": cut,
        "epoch": epoch,
        "matches": [
            {
                "manifest_line": index_.where(row),
                "places": [
                    {"rank": p.rank, "batch": p.batch, "micro_batch": p.index, "slot": s, "step": p.step}
                    for p, s in places
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
        for p, s in places:
            console.print(
                f"cut {escape(cut)} ({escape(where)}): epoch {epoch}, rank {p.rank}, batch {p.batch}, slot {s} "
                f"(step {p.step} from the start)"
            )


def _lookup_sample(session, rank: int, index: int, output_format: str) -> None:
    place, slot = session.sample_at(rank, index)
    planned = session.planned(place)[slot]
    result = {
        "index": index,
        "rank": rank,
        "epoch": place.epoch,
        "batch": place.batch,
        "step": place.step,
        "slot": slot,
        "cut_id": planned.cut_id,
        "manifest_line": planned.where,
        "path": planned.path,
        "shard": planned.shard,
        "member": planned.member,
        "member_offset": planned.member_offset,
    }
    if output_format == "json":
        print(json.dumps(result, indent=2))
        return
    console.print(
        f"sample {index} of rank {rank}: {escape(planned.cut_id)} ({escape(short_path(planned.manifest))}:{planned.line}) "
        f"{escape(_source(planned))}{' ' + _member_bytes(planned) if planned.member else ''} "
        f"-- epoch {place.epoch}, batch {place.batch}, slot {slot}"
    )


def _source(cut) -> str:
    """The file, or for a cut in a shard `shard:member`."""
    if cut.member is None:
        return short_path(cut.path)
    shard = cut.shard if "://" in cut.shard else short_path(cut.shard)
    return f"{shard}:{cut.member}"


def _member_bytes(cut) -> str:
    """Where a shard member's bytes are in its tar: `@offset+size` (one ranged read)."""
    return f"@{cut.member_offset}+{cut.member_size}" if cut.member is not None else "-"


def _render(result) -> None:
    place = result.place
    micro = f", micro-batch {place.index}" if place.index != place.batch else ""
    header = (
        f"[bold]batch {place.batch} of rank {place.rank}[/] (epoch {place.epoch}{micro}, "
        f"step {place.step}; world size {result.world_size})"
    )
    if result.fingerprint:
        header += f"  fingerprint {result.fingerprint}  " + match_text(result.matches_log, result.logged)
    console.print(header)
    table = Table(box=None, pad_edge=False, show_edge=False)
    sharded = any(cut.member is not None for cut in result.planned)  # a column for the members' bytes
    columns = ("#", "cut", "manifest:line", "path", *(("member bytes",) if sharded else ()), "offset", "dur")
    for column in (*columns, "noise / augmentation"):
        table.add_column(column, overflow="fold")
    records = result.batch.records if result.batch is not None else [None] * len(result.planned)
    for cut, record in zip(result.planned, records):
        table.add_row(
            str(cut.slot),
            escape(cut.cut_id),
            escape(f"{short_path(cut.manifest)}:{cut.line}"),
            escape(_source(cut)),
            *((_member_bytes(cut),) if sharded else ()),
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
        ahead = ", ".join(str(p.batch) if p.epoch == place.epoch else f"{p.epoch}/{p.batch}" for p in result.in_flight)
        console.print(f"  in flight while step {result.step} runs: batch(es) {ahead}")
