"""Helpers shared by the command modules."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def is_interactive() -> bool:
    """Progress bars only on a terminal; CI logs get plain lines."""
    return sys.stderr.isatty()
