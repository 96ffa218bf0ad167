"""`nestkit validate-manifest`: check manifests and noise manifests for everything training would trip on."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from nestkit.commands.common import console, err_console, is_interactive

# Defaults, spelled out here so `--help` stays cheap (the library imports lhotse); a test checks
# they equal the library's (CheckSettings, ValidateOptions, DatasetConfig).
_TARGET_RATE = 16000
_TOLERANCE_S = 0.1
_MIN_DURATION_S = 1.0
_MAX_DURATION_S = 60.0
_CLIP_LEVEL = 0.999
_CLIP_FRACTION = 0.001
_NOISE_SILENCE_DB = -80.0
_TIMEOUT_S = 30.0
_SHARD_TIMEOUT_S = 300.0
_TABLE_ROWS_MAX = 500  # more findings than this are listed as plain lines even on a terminal

EXIT_USAGE = 2  # 0: no errors, 1: errors (or warnings with --strict); see Report.exit_code


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    junit = "junit"
    github = "github"


_FORMAT_CHOICES = "[" + "|".join(f.value for f in OutputFormat) + "]"  # listed in --help


def _usage_error(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _check_readable(path: Path, what: str) -> None:
    if not path.exists():
        got = "a broken symbolic link or a link loop" if path.is_symlink() else "nothing"
        raise _usage_error(f"{what} {path}: no such file (expected a JSON-lines manifest, got {got}). Check the path")
    if not path.is_file():
        raise _usage_error(
            f"{what} {path}: not a regular file (expected a JSON-lines manifest, got a "
            f"{'directory' if path.is_dir() else 'special file'}). Give the manifest file itself"
        )
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise _usage_error(
            f"{what} {path}: unreadable (expected a readable file, got {exc.strerror}). Fix its permissions"
        ) from None


def validate_manifest(
    manifests: list[Path] | None = typer.Argument(
        None,
        metavar="MANIFEST...",
        show_default=False,
        help="NeMo JSON-lines or lhotse CutSet manifests (.json, .jsonl, .jsonl.gz) of training or validation audio.",
    ),
    noise: list[Path] | None = typer.Option(
        None,
        "--noise",
        metavar="NOISE",
        show_default=False,
        help="A noise manifest, checked with the noise rules too (a silent noise is an error). Repeat for several.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        metavar="CFG",
        show_default=False,
        help="A training config (NeMo YAML): check the data of model.train_ds and model.validation_ds -- "
        "manifest_filepath, noise_manifest, shar_path, or is_tarred with tarred_audio_filepaths.",
    ),
    shar: list[Path] | None = typer.Option(
        None,
        "--shar",
        metavar="DIR",
        show_default=False,
        help="A lhotse Shar directory (cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar). Repeat for several.",
    ),
    tarred_audio: str | None = typer.Option(
        None,
        "--tarred-audio",
        metavar="TARS",
        show_default=False,
        help="NeMo tarred dataset: the tars (tarred_audio_filepaths: `{0..3}` or `_OP_0..3_CL_` patterns, paths "
        "or http(s) URLs); MANIFEST... are then its tarred manifest(s), patterns and URLs allowed.",
    ),
    decode: bool = typer.Option(
        True,
        "--decode/--no-decode",
        help="Decode every segment and check its samples (NaN/Inf, all-zero, DC-only, clipping, "
        "silent noise). "
        "--no-decode checks paths and headers only, about 10x faster.",
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.table,
        "--format",
        case_sensitive=False,
        metavar=_FORMAT_CHOICES,
        help="table: one line per finding (a table on a terminal); json: {summary, findings}; "
        "junit: JUnit XML "
        "for CI test views; github: GitHub Actions ::error/::warning annotations.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", show_default=False, help="Write the report to this file instead of stdout."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too, not only on errors."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes; 0 means one per available core."),
    timeout: float = typer.Option(
        _TIMEOUT_S,
        "--timeout",
        min=0.1,
        help="Seconds one file (or tar member) may take before it is reported as `timeout` and its worker is "
        "killed (a stalled mount or server never holds the run up).",
    ),
    shard_timeout: float = typer.Option(
        _SHARD_TIMEOUT_S,
        "--shard-timeout",
        min=0.1,
        help="Seconds indexing one shard may take (over HTTP the whole tar is streamed once) before it is `timeout`.",
    ),
    target_rate: int = typer.Option(
        _TARGET_RATE,
        "--target-rate",
        min=1,
        help="Sample rate training uses (Hz); other rates are `needs_resampling`.",
    ),
    duration_tolerance: float = typer.Option(
        _TOLERANCE_S,
        "--duration-tolerance",
        min=0.0,
        help="Seconds the manifest duration may differ from the file before `duration_mismatch`. A segment "
        "longer than the file by more than the loader's 0.1 s is always `truncated` (training refuses it).",
    ),
    min_duration: float = typer.Option(
        _MIN_DURATION_S,
        "--min-duration",
        min=0.0,
        help="Shorter lines are `too_short` (training's default min_duration; it leaves them out). 0 turns it off.",
    ),
    max_duration: float = typer.Option(
        _MAX_DURATION_S,
        "--max-duration",
        min=0.0,
        help="Longer lines are `too_long` (training's default max_duration; it leaves them out). 0 turns it off.",
    ),
    clip_level: float = typer.Option(
        _CLIP_LEVEL,
        "--clip-level",
        min=0.0,
        help="A sample with |x| at or above this (full scale is 1.0) is clipped.",
    ),
    clip_fraction: float = typer.Option(
        _CLIP_FRACTION,
        "--clip-fraction",
        min=0.0,
        max=1.0,
        help="`clipping` when more than this fraction of a segment's samples are clipped (0.001 = 0.1%).",
    ),
    noise_silence_db: float = typer.Option(
        _NOISE_SILENCE_DB,
        "--noise-silence-db",
        help="A noise segment with RMS at or below this (dBFS) is `silent_noise` (training's noise_silence_db).",
    ),
    write_clean: Path | None = typer.Option(
        None,
        "--write-clean",
        metavar="PATH",
        show_default=False,
        help="Also write the manifest(s) without the lines that have errors (warnings are kept). "
        "PATH is a file "
        "for one manifest, a folder for several. Relative audio paths are rewritten to stay valid.",
    ),
    fix_durations: Path | None = typer.Option(
        None,
        "--fix-durations",
        metavar="PATH",
        show_default=False,
        help="Also write the manifest(s) with durations measured from the files (NeMo lines; a line with an "
        "offset only shrinks to fit). Every line is kept. PATH as for --write-clean.",
    ),
) -> None:
    """Check manifests and sharded datasets for everything a training run would trip on.

    Reports every finding: lines (JSON, fields, duplicates), paths (FIFOs
    and devices are never opened), headers (format, rate, channels,
    duration) and, unless --no-decode, the decoded samples. Files are
    checked in parallel, each under --timeout. Shards (--shar, --tarred-audio,
    or a --config naming them): tars, line/member pairing and every
    member's audio, each shard under --shard-timeout.

    Exit status: 0 no errors; 1 errors (or warnings with --strict);
    2 usage error. Categories: docs/validate-manifest.md.
    """
    manifests, noise = list(manifests or []), list(noise or [])
    shards = _shard_sources(manifests, shar or [], tarred_audio)
    if tarred_audio is not None:
        manifests = []  # they are the tarred dataset's
    if config is not None:
        manifests, noise, shards = _add_config(config, manifests, noise, shards)
    if not manifests and not noise and not shards:
        raise _usage_error(
            "validate-manifest: no manifest given (expected MANIFEST..., --noise NOISE, --shar DIR, "
            "--tarred-audio TARS or --config CFG). See `nestkit validate-manifest --help`"
        )
    for path in manifests:
        _check_readable(path, "manifest")
    for path in noise:
        _check_readable(path, "noise manifest")

    for option, out in (("--output", output), ("--write-clean", write_clean), ("--fix-durations", fix_durations)):
        if out is not None:
            _check_writable(out, option)

    from nestkit.validate.write import output_paths

    everything = [str(p) for p in manifests + noise]
    targets = {}
    for option, out in (("--write-clean", write_clean), ("--fix-durations", fix_durations)):
        if out is not None:
            if shards:
                raise _usage_error(
                    f"{option}: rewrites per-file manifests only (expected no sharded dataset, got "
                    f"{len(shards)}). Validate the shards in a separate run"
                )
            try:
                targets[option] = output_paths(everything, str(out))
            except ValueError as exc:
                raise _usage_error(f"{option} {exc}") from None

    from nestkit.validate.audio import CheckSettings
    from nestkit.validate.validator import ValidateOptions

    options = ValidateOptions(
        checks=CheckSettings(
            decode=decode,
            target_rate=target_rate,
            duration_tolerance_s=duration_tolerance,
            clip_level=clip_level,
            clip_fraction=clip_fraction,
            noise_silence_db=noise_silence_db,
        ),
        min_duration_s=min_duration,
        max_duration_s=max_duration,
        jobs=jobs,
        timeout_s=timeout,
        shard_timeout_s=shard_timeout,
    )
    report = _validate_with_progress([str(p) for p in manifests], [str(p) for p in noise], options, shards)
    try:
        _render(report, output_format.value, output, strict)
    except OSError as exc:
        from nestkit.validate.report import summary_line

        err_console.print(escape(summary_line(report, strict)), soft_wrap=True)
        raise _output_error("--output", output, exc) from None
    for option, out in (("--write-clean", write_clean), ("--fix-durations", fix_durations)):
        if option in targets:
            try:
                _write_repair(report, option, targets[option])
            except OSError as exc:
                raise _output_error(option, exc.filename or out, exc) from None
    raise typer.Exit(report.exit_code(strict))


def _check_writable(path: Path, option: str) -> None:
    """Refuse, before any work, an output that cannot be created: under a file, or a folder for -o."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise _usage_error(
            f"{option} {path}: cannot be created (expected a folder at {folder}, got a file). Choose another path"
        )
    if option == "--output" and path.is_dir():
        raise _usage_error(
            f"{option} {path}: is a folder (expected a file to write the report to, got a folder). Name a file"
        )


def _output_error(option: str, path, exc: OSError) -> typer.Exit:
    return _usage_error(
        f"{option} {path}: cannot be written (expected a writable file, got {exc.strerror or exc}). Choose another path"
    )


def _shard_sources(manifests: list[Path], shar: list[Path], tarred_audio: str | None) -> list:
    """The sharded datasets named on the command line; a bad one is a usage error."""
    sources: list = []
    if not shar and tarred_audio is None:
        return sources
    from nestkit.validate.shards import SharSource, TarredSource

    for directory in shar:
        if not directory.is_dir():
            raise _usage_error(
                f"--shar {directory}: not a directory (expected the folder CutSet.to_shar wrote, got "
                f"{'a file' if directory.exists() else 'nothing'}). A remote Shar dataset is named field by field "
                "in a config (shar_path: {cuts: ..., recording: ...}), see --config"
            )
        sources.append(SharSource(directory=str(directory.absolute())))
    if tarred_audio is not None:
        if not manifests:
            raise _usage_error(
                "--tarred-audio: no tarred manifest (expected MANIFEST..., the manifest(s) whose lines carry shard_id)"
            )
        specs = [str(m) if "://" in str(m) else os.path.abspath(m) for m in manifests]
        tars = tarred_audio if "://" in tarred_audio else os.path.abspath(tarred_audio)
        source = TarredSource(specs[0] if len(specs) == 1 else specs, tars)
        _check_patterns(source)
        sources.append(source)
    return sources


def _check_patterns(source) -> None:
    from nestkit.core.errors import ConfigError
    from nestkit.data.shards.nemo_tarred import expand_nemo_paths

    try:
        expand_nemo_paths(source.manifests, "manifest_filepath")
        expand_nemo_paths(source.tars)
    except ConfigError as exc:
        raise _usage_error(f"{source.origin}: {'; '.join(exc.problems)}") from None


def _add_config(config: Path, manifests: list[Path], noise: list[Path], shards: list):
    from nestkit.core.errors import ConfigError
    from nestkit.validate.config_data import read_config_data
    from nestkit.validate.shards import TarredSource

    if not config.is_file():
        raise _usage_error(f"--config {config}: no such file (expected a YAML training config). Check the path")
    try:
        data = read_config_data(str(config))
    except ConfigError as exc:
        raise _usage_error(str(exc)) from None
    for source in data.shards:
        if isinstance(source, TarredSource):
            _check_patterns(source)
    for line in data.described:
        err_console.print(escape(f"config {config}: {line}"), soft_wrap=True)
    return manifests + [Path(p) for p in data.manifests], noise + [Path(p) for p in data.noise], shards + data.shards


def _validate_with_progress(manifests: list[str], noise: list[str], options, shards: list):
    from nestkit.validate.validator import validate

    if not is_interactive():
        return validate(manifests, noise, options, shards=shards)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("reading manifests", total=None)
        return validate(
            manifests,
            noise,
            options,
            on_progress=lambda done, total, what: progress.update(task, completed=done, total=total, description=what),
            shards=shards,
        )


def _render(report, output_format: str, output: Path | None, strict: bool) -> None:
    from nestkit.validate.report import RENDERERS, summary_line

    table_on_terminal = (
        output_format == "table" and output is None and console.is_terminal and len(report.findings) <= _TABLE_ROWS_MAX
    )
    if table_on_terminal:
        _print_table(report, strict)
        return
    text = RENDERERS[output_format](report, strict)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        err_console.print(escape(summary_line(report, strict)), soft_wrap=True)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
        if output_format in ("json", "junit"):  # stdout must stay parseable; people still want the verdict
            err_console.print(escape(summary_line(report, strict)), soft_wrap=True)


def _print_table(report, strict: bool) -> None:
    from rich.table import Table

    from nestkit.validate.report import printable, summary_line, where

    if report.findings:
        table = Table(expand=True)
        table.add_column("where", overflow="fold")
        table.add_column("severity")
        table.add_column("category")
        table.add_column("reason", overflow="fold", ratio=1)  # the only column that takes the spare width
        for f in report.findings:
            colour = "red" if f.severity == "error" else "yellow"
            reason = escape(printable(f.reason))
            table.add_row(escape(where(f)), f"[{colour}]{f.severity}[/]", f.category, reason)
        console.print(table)
    colour = "red" if report.exit_code(strict) else "green"
    console.print(f"[{colour}]{escape(summary_line(report, strict))}[/]")


def _write_repair(report, option: str, targets: dict[str, str]) -> None:
    from nestkit.validate.write import write_clean, write_fixed_durations

    if option == "--write-clean":
        for w in write_clean(report, targets):
            err_console.print(
                escape(
                    f"wrote {w.target}: {w.kept} line(s) kept, {w.dropped} with errors left out "
                    f"(from {os.path.relpath(w.source)})"
                ),
                soft_wrap=True,
            )
    else:
        for w in write_fixed_durations(report, targets):
            err_console.print(
                escape(
                    f"wrote {w.target}: {w.changed} duration(s) measured and changed, "
                    f"{w.unmeasured} line(s) could not be measured and keep theirs "
                    f"(from {os.path.relpath(w.source)})"
                ),
                soft_wrap=True,
            )
