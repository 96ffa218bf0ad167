"""`nestkit shard`: per-file manifests -> lhotse Shar (lhotse's own writer) or NeMo's tarred layout."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from nestkit.commands.common import console, err_console, is_interactive

FAILURES_SHOWN = 20  # lines that could not be written, listed by name (all are counted)


def shard(
    manifests: list[Path] = typer.Argument(
        ..., help="Per-file NeMo manifests, joined in order.", show_default=False, exists=True, dir_okay=False
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (new or empty).", show_default=False),
    layout: str = typer.Option("shar", "--format", help="shar (lhotse's SharWriter) or nemo (NeMo's tarred layout)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Cuts per shard (the last shard holds the rest)."),
    audio_format: str = typer.Option(
        "flac", "--audio-format", help="Shar only: how lhotse encodes each cut (flac is lossless for 16-bit PCM)."
    ),
) -> None:
    """Write shards from per-file manifests, with each tar's member index beside it.

    Shard k holds lines [k*N, (k+1)*N) of the usable lines, in manifest order: the same input gives
    the same bytes. Shar cuts keep their nestkit cut ids (`<stem>-L<line>`) and NeMo tarred lines carry
    them as `cut_id`, so batches built from the shards equal those built from the files. A line that
    cannot be written is left out and named (exit status 1).
    """
    from nestkit.core.errors import NestkitError
    from nestkit.data.shards.write import write_shards

    if layout not in ("shar", "nemo"):
        raise typer.BadParameter(f"--format: expected shar or nemo, got {layout!r}")
    if shard_size < 1:
        raise typer.BadParameter(f"--shard-size: expected at least 1 cut per shard, got {shard_size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NestkitError(
            f"output {out}: not a new or empty folder (expected one; got {'a file' if not out.is_dir() else 'files in it'}). "
            "Shards written among old ones would mix with them: choose another folder or empty it"
        )
    result = write_shards(
        [str(m) for m in manifests], str(out), layout, shard_size, progress=is_interactive(), audio_format=audio_format
    )
    what = "lhotse Shar" if layout == "shar" else "NeMo tarred"
    console.print(
        f"{what}: {result.cuts} cuts in {len(result.tars)} shard(s) under {escape(str(out))} "
        f"({result.seconds:.1f} s); member indexes: {escape(_common_folder(result.indexes))}"
    )
    console.print(_config_hint(result))
    for failure in result.failures[:FAILURES_SHOWN]:
        err_console.print(f"[yellow]not written:[/] {escape(failure.message())}")
    if len(result.failures) > FAILURES_SHOWN:
        err_console.print(f"[yellow]... and {len(result.failures) - FAILURES_SHOWN} more line(s) not written[/]")
    if result.failures:
        raise typer.Exit(1)


def _common_folder(paths: list[str]) -> str:
    return os.path.commonpath(paths) if paths else "-"


def _config_hint(result) -> str:
    """The dataset keys that read what was written."""
    out = os.path.abspath(result.out_dir)
    if result.layout == "shar":
        return f"use it with:  model.train_ds.shar_path={out}"
    last = len(result.tars) - 1
    return (
        "use it with:  model.train_ds.is_tarred=true "
        f"model.train_ds.manifest_filepath={os.path.join(out, 'tarred_audio_manifest.json')} "
        f"model.train_ds.tarred_audio_filepaths={os.path.join(out, f'audio__OP_0..{last}_CL_.tar')}"
    )
