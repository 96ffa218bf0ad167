"""Helpers shared by the command modules."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def is_interactive() -> bool:
    """Progress bars only on a terminal; CI logs get plain lines."""
    return sys.stderr.isatty()


def print_notes(notes: list[str]) -> None:
    """Config keys that were accepted but have no effect, shown once, dimmed."""
    from rich.markup import escape

    for note in notes:
        err_console.print(f"[dim]note: {escape(note)}[/]")
