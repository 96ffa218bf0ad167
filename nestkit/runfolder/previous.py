"""An earlier run's files, moved aside so that a new run in the same folder starts clean.

`nestkit train --fresh` (or a resume that finds nothing to resume and is allowed to start over)
moves the earlier run's logs -- and, with --fresh, its checkpoints and config -- into
`previous/<YYYYmmdd-HHMMSS>/` of the same folder: a rename, instant on any file system, nothing is
deleted, and the new run never appends to another run's batch log or quarantine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nestkit.core.errors import NestkitError
from nestkit.runfolder.layout import previous_dir


def move_aside(run_dir: str | os.PathLike, names: list[str], now: float | None = None) -> Path:
    """Move `names` (files or folders directly under `run_dir`) into previous/<time>/; returns that folder."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    target = previous_dir(run_dir) / stamp
    suffix = 1
    while target.exists():  # two starts within a second
        suffix += 1
        target = previous_dir(run_dir) / f"{stamp}-{suffix}"
    try:
        target.mkdir(parents=True)
        for name in names:
            source = run_dir / name
            if source.exists():
                os.replace(source, target / name)
    except OSError as exc:
        raise NestkitError(
            f"run {run_dir}: cannot move the earlier run's files aside into {target} "
            f"(expected a writable run folder, got {exc.strerror or exc}). Free the folder or choose another "
            "exp_manager.name"
        ) from None
    return target
