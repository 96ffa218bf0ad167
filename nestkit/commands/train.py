"""`nestkit train`: Lightning (DDP) training of the NEST model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from nestkit.commands.common import console, err_console, is_interactive, print_notes


def train(
    config: Path = typer.Argument(
        ...,
        help="NeMo's nest_fast-conformer.yaml (manifest paths filled in) or a short native config.",
        show_default=False,
    ),
    overrides: Optional[list[str]] = typer.Argument(
        None, help="dotted.key=value overrides, e.g. trainer.max_steps=1000.", show_default=False
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in the run folder from its last checkpoint (checked first; a damaged last.ckpt "
        "falls back to the newest intact stepN.ckpt, said so): same step, same data position. Refused when "
        "there is nothing to resume, unless --fresh.",
    ),
    resume_from: Optional[Path] = typer.Option(
        None, "--resume-from", help="Continue from this checkpoint instead of the run folder's last.ckpt."
    ),
    skip_bad_lines: bool = typer.Option(
        False,
        "--skip-bad-lines",
        help="Train without manifest lines that cannot be used (counted, named, recorded in the quarantine) "
        "instead of refusing to start (= nestkit.skip_bad_manifest_lines=true).",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Start a new run in a folder that holds an earlier run: its files move to previous/<time>/. "
        "With --resume: only when there is nothing to resume.",
    ),
) -> None:
    """Train the NEST model (Lightning; DDP over trainer.devices / num_nodes, torchrun or SLURM).

    The run folder is exp_manager.exp_dir/exp_manager.name (default runs/NAME). Every step's batch
    fingerprint and cut ids are logged per rank under it, for `nestkit lookup` and `replay-batch`.
    Manifest lines that cannot be used are all listed before anything starts (exit 1), unless
    --skip-bad-lines.
    A folder that holds an earlier run (its logs or checkpoints) is never appended to by a new run:
    pass --resume to continue it, or --fresh to start over (the earlier files move aside).
    """
    from nestkit.config import load_config
    from nestkit.training.devices import is_global_rank_zero as _is_rank_zero
    from nestkit.training.run import train as run_training

    extra = ["nestkit.skip_bad_manifest_lines=true"] if skip_bad_lines else []
    loaded = load_config(config, [*(overrides or []), *extra])
    if _is_rank_zero():
        print_notes(loaded.notes)
    cfg = loaded.config
    if _is_rank_zero():
        console.print(f"run folder [bold]{escape(str(cfg.run_dir))}[/]")
    notify = print_notes if _is_rank_zero() else (lambda notes: None)
    plan = run_training(
        cfg,
        resume=str(resume_from) if resume_from else resume,
        interactive=is_interactive(),
        notify=lambda n: notify([n]),
        fresh=fresh,
        warn=lambda text: err_console.print(f"[yellow]{escape(text)}[/]"),
    )
    if _is_rank_zero():
        console.print(
            f"done: checkpoints in {escape(str(plan.run_dir / 'checkpoints'))}, per-step batch log in {escape(str(plan.run_dir / 'batches'))}"
        )
