"""The `nestkit` command line: a thin Typer app. Each command lives in nestkit/commands/."""

from __future__ import annotations

import typer
from rich.markup import escape

from nestkit.commands.common import err_console
from nestkit.errors import ConfigError, NestkitError

app = typer.Typer(
    name="nestkit",
    help="Debuggable data pipeline and trainer for NEST self-supervised speech pre-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Registration order is the order `nestkit --help` lists the commands in.
# register: import-manifest
# register: validate-manifest
# register: pipeline
# register: train
# register: lookup
# register: replay-batch
# register: stacks
# register: export-nemo


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise SystemExit(2) from None
    except NestkitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
