"""Helpers shared by the command modules."""

from __future__ import annotations

import sys

from rich.console import Console

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
