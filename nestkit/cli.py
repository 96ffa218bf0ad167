"""The `nestkit` command line: a thin Typer app. Each command lives in nestkit/commands/."""

from __future__ import annotations

import typer
from rich.markup import escape

from nestkit.commands import (
    anomalies,
    export_nemo,
    import_manifest,
    lookup,
    pipeline,
    replay_batch,
    report,
    shard,
    train,
    validate_manifest,
)
from nestkit.commands.common import err_console
from nestkit.commands.stacks import stacks
from nestkit.core.errors import ConfigError, NestkitError, UsageError

app = typer.Typer(
    name="nestkit",
    help="Debuggable data pipeline and trainer for NEST self-supervised speech pre-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _print_version(value: bool) -> None:
    if value:
        import nestkit

        print(f"nestkit {nestkit.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print nestkit's version and exit."
    ),
) -> None:
    """Debuggable data pipeline and trainer for NEST self-supervised speech pre-training."""


# Registration order is the order `nestkit --help` lists the commands in. Command modules import
# their heavy dependencies (torch, lhotse) inside the command, so `--help` stays fast.
app.command("import-manifest")(import_manifest.import_manifest)
app.command("validate-manifest")(validate_manifest.validate_manifest)
app.command("shard")(shard.shard)
app.command("pipeline")(pipeline.pipeline)
app.command("train")(train.train)
app.command("lookup")(lookup.lookup)
app.command("replay-batch")(replay_batch.replay_batch)
app.command("stacks")(stacks)
app.command("report")(report.report)
app.command("anomalies")(anomalies.anomalies)
app.command("export-nemo")(export_nemo.export_nemo)


def main() -> None:
    try:
        app()
    except (ConfigError, UsageError) as exc:  # usage errors: exit 2, as for the command line's own
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise SystemExit(2) from None
    except NestkitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise SystemExit(getattr(exc, "exit_status", 1)) from None
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        message = (
            f"this command needs {exc.name}, which the light install leaves out (expected the [{extra}] extra, "
            f"got no {exc.name}). Install it with: pip install 'nestkit[{extra}]'"
        )
        err_console.print(f"[bold red]error:[/] {escape(message)}")
        raise SystemExit(1) from None


# packages of optional extras -> the extra that installs them (the core install is light)
EXTRAS = {
    "torch": "train",
    "lhotse": "train",
    "pytorch_lightning": "train",
    "lightning_fabric": "train",
    "tensorboard": "train",
    "matplotlib": "report",
}


if __name__ == "__main__":
    main()
