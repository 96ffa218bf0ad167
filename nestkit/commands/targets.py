"""The positional arguments `lookup` and `replay-batch` share: `[TARGET] [KEY=VALUE]...` (and a batch
number for `replay-batch`), in any order, each recognised by its form."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from nestkit.commands.common import console, err_console, print_notes
from nestkit.core.errors import UsageError

TARGET_HELP = (
    "TARGET: a training config (YAML) or a run folder (what `nestkit train` wrote; its config.yaml is used); "
    "without one, the run folder you are in, else the most recent one under ./runs. "
    "KEY=VALUE: dotted.key=value overrides, as given to `nestkit train`."
)
TARGET_METAVAR = "TARGET KEY=VALUE"  # Typer shows it as [TARGET KEY=VALUE]... (all optional)
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+|\[\d+\])*=")  # dotted.key=value, as OmegaConf reads it
_BATCH = re.compile(r"^\d+$")


@dataclass
class TargetArgs:
    target: Path | None = None
    overrides: list[str] = field(default_factory=list)
    batch: int | None = None


def split_args(args: list[str] | None, command: str, batch_allowed: bool = False) -> TargetArgs:
    """Sort the positional words: a whole number is the batch, an existing path the target,
    `dotted.key=value` an override. Anything else, or a second target or batch, is a usage error."""
    out = TargetArgs()
    for word in args or []:
        if _BATCH.match(word):
            if not batch_allowed:
                raise UsageError(
                    f"{command}: {word} is not a config, run folder or override (a batch number? use --batch {word} or --step {word})"
                )
            if out.batch is not None:
                raise UsageError(f"{command}: two batch numbers ({out.batch} and {word}); give one")
            out.batch = int(word)
        elif Path(word).exists():
            if out.target is not None:
                raise UsageError(f"{command}: two targets ({out.target} and {word}); give one config or run folder")
            out.target = Path(word)
        elif _OVERRIDE.match(word):
            out.overrides.append(word)
        else:
            kind = "no such file or folder" if ("/" in word or word.endswith((".yaml", ".yml"))) else "not understood"
            raise UsageError(
                f"{command}: {word!r}: {kind} (expected a training config or run folder that exists, "
                f"a dotted.key=value override{', or a batch number' if batch_allowed else ''})"
            )
    return out


def use_deprecated_config(args: TargetArgs, config: Path | None, command: str) -> TargetArgs:
    """`--config PATH` (the old spelling) is the target; together with another target it is ambiguous."""
    if config is None:
        return args
    if args.target is not None:
        raise UsageError(f"{command}: two targets (--config {config} and {args.target}); give one")
    args.target = config
    return args


def open_run(args: TargetArgs, run_dir: Path | None, world_size: int | None, json_output: bool):
    """Load the target (see nestkit.tools.runs.open_target), show its notes, and say which run folder
    was found when none was named: first on stdout for a table, on stderr when stdout is JSON."""
    from nestkit.tools.runs import open_target

    target = open_target(args.target, args.overrides, run_dir, world_size)
    line = target.announcement()
    if line:
        (err_console if json_output else console).print(escape(line))
    print_notes(target.notes)
    return target


def batch_place(session, batch: int, epoch: int | None, rank: int):
    """Rank `rank`'s batch BATCH of --epoch; without --epoch, its BATCH-th micro-batch from the start of
    training, as Lightning counts them in nestkit's one endless epoch (within the first data epoch
    that is the same number)."""
    from nestkit.core.errors import NestkitError

    if epoch is not None:
        return session.place_of_batch(epoch, batch, rank)
    step, k = divmod(batch, session.accumulate)
    try:
        places = session.places_of_step(step, rank)
    except NestkitError as exc:
        raise NestkitError(f"batch {batch} counted from the start of training (no --epoch): {exc}") from None
    place = places[min(k, len(places) - 1)]
    if place.epoch:
        print_notes(
            [
                f"batch {batch} counted from the start of training is epoch {place.epoch} batch {place.batch}; "
                "pass --epoch E to count within epoch E"
            ]
        )
    return place
