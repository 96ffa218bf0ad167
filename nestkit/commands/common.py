"""Helpers shared by the command modules."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from nestkit.core.errors import UsageError
from nestkit.core.paths import short_path
from nestkit.runfolder.layout import CHECKPOINTS_DIR

LOG_WIDTH = 160  # columns for tables when the output is not a terminal


def _console(stderr: bool) -> Console:
    # On a terminal rich fits its width. In logs and pipes (where COLUMNS is often a nominal 80) a
    # wrapped error message is hard to read and to grep: lines stay whole, tables get room.
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=LOG_WIDTH, soft_wrap=True)


console = _console(stderr=False)
err_console = _console(stderr=True)


def is_interactive() -> bool:
    """Progress bars only on a terminal; CI logs get plain lines."""
    return sys.stderr.isatty()


def print_notes(notes: list[str]) -> None:
    """Config keys that were accepted but have no effect, shown once, dimmed."""
    from rich.markup import escape

    for note in notes:
        err_console.print(f"[dim]note: {escape(note)}[/]")


def choice_option(*choices: str, name: str, help: str) -> Any:
    """An option with a fixed set of values: listed in --help, any other value a usage error (exit 2).
    The first choice is the default."""

    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return typer.Option(
        choices[0], name, metavar="[" + "|".join(choices) + "]", help=f"{help}: {', '.join(choices)}.", callback=check
    )


def format_option(*choices: str) -> Any:
    """`--format`, the same way in every command."""
    return choice_option(*choices, name="--format", help="Output format")


def checkpoint_file(path: Path | None, option: str) -> Path | None:
    """A checkpoint argument must name a file; for a folder, say which checkpoints it holds."""
    if path is None or not path.is_dir():
        return path
    inside = sorted(path.glob("*.ckpt")) or sorted(path.glob(f"{CHECKPOINTS_DIR}/*.ckpt"))
    hint = f"; it holds {', '.join(short_path(p) for p in inside[:4])}" if inside else ""
    raise UsageError(f"{option} {path}: a folder (expected a checkpoint file, .ckpt / .nemo / .pt){hint}")


def output_file(path: Path, option: str) -> Path:
    """An output file must not name an existing folder, nor lie below a file (the write would fail
    after the work is done)."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: a folder (expected the path of a file to write)")
    _no_file_above(path, option)
    return path


def output_folder(path: Path, option: str) -> Path:
    """An output folder may be new, but not an existing file nor below one."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: a file (expected a folder to write into)")
    _no_file_above(path, option)
    return path


def _no_file_above(path: Path, option: str) -> None:
    existing = next(p for p in path.absolute().parents if p.exists())  # the root always exists
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder (expected a path in a folder)")


def positive_seconds(value: float | None) -> float | None:
    """Option callback: a bound on a wait is a finite number of seconds above 0 (else it never bounds)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a finite number of seconds > 0, got {value:g}")
    return value
