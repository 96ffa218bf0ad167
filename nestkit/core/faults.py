"""Debug hooks that make the classic DDP hangs (and a slow mount) reproducible on any machine.

Each is read from the environment once, at import, and costs one falsy check when unset. They
exist for tests and for docs/debugging.md; never set them in a real run.

NESTKIT_DEBUG_BLOCK_PATH=<substring>
    Loading an audio file whose path contains <substring> blocks in a read() that never returns,
    as a read from a stalled network mount does. The block happens inside the bounded per-sample
    load, so `model.train_ds.sample_timeout_s` still turns it into a quarantined substitute; set
    sample_timeout_s=0 (unbounded) to get a real data stall.
NESTKIT_DEBUG_SLOW_READ_S=<seconds> | <rank>:<seconds>
    Every audio read first sleeps that long, as on a slow network mount: the data keeps moving, only
    slowly, which the watchdog must tell apart from a stall. With `<rank>:` only the reads of that
    rank's training loader (its DataLoader workers, or the rank itself with num_workers=0) are
    slow: a straggler, one rank waiting on its data while its peers wait for it (e.g. `1:0.3`).
    Reads outside a rank's loader (replay-batch, validate-manifest) are never slowed by a rank rule.
NESTKIT_DEBUG_STOP_RANK=<rank>:<batches>
    That rank's training data stream ends after <batches> batches, as if its plan were shorter
    (uneven work: the rank finishes while its peers wait for it in the next all-reduce). nestkit's
    planner makes uneven plans impossible by construction, hence a hook.
"""

from __future__ import annotations

import os
import time

from nestkit.core.errors import NestkitError

BLOCK_PATH_ENV = "NESTKIT_DEBUG_BLOCK_PATH"
SLOW_READ_ENV = "NESTKIT_DEBUG_SLOW_READ_S"
STOP_RANK_ENV = "NESTKIT_DEBUG_STOP_RANK"

BLOCK_PATH: str | None = os.environ.get(BLOCK_PATH_ENV) or None


def parse_slow_read(value: str | None) -> tuple[int | None, float]:
    """(rank or None for every reader, seconds) from NESTKIT_DEBUG_SLOW_READ_S."""
    if not value:
        return None, 0.0
    rank_text, _, seconds_text = value.rpartition(":")
    try:
        rank = int(rank_text) if rank_text else None
        seconds = float(seconds_text)
    except ValueError:
        raise NestkitError(
            f"environment {SLOW_READ_ENV}: malformed (expected <seconds> or <rank>:<seconds>, e.g. 0.3 or 1:0.3, got {value!r})"
        ) from None
    if seconds < 0 or (rank is not None and rank < 0):
        raise NestkitError(f"environment {SLOW_READ_ENV}: negative value (expected >= 0, got {value!r})")
    return rank, seconds


SLOW_READ_RANK, SLOW_READ_S = parse_slow_read(os.environ.get(SLOW_READ_ENV))

_held_pipes: list[int] = []  # write ends kept open, so the read below can never see EOF


def block_forever(path: str) -> None:
    """Block the calling thread in a read() syscall, forever (a stalled mount, not a busy loop:
    the thread shows up in stack dumps exactly where a stuck read would)."""
    read_end, write_end = os.pipe()
    _held_pipes.append(write_end)
    os.read(read_end, 1)  # NESTKIT_DEBUG_BLOCK_PATH: simulated stalled read of `path`
    raise AssertionError(f"{path}: the simulated stalled read returned")  # unreachable


def slow_read(path: str, rank: int | None = None) -> None:
    """Sleep SLOW_READ_S seconds before reading `path` (a read from a slow mount), when the rule
    covers `rank` (the rank whose training loader reads it; None outside a training loader)."""
    if SLOW_READ_RANK is None or rank == SLOW_READ_RANK:
        time.sleep(SLOW_READ_S)  # NESTKIT_DEBUG_SLOW_READ_S: simulated slow storage


def stop_after(rank: int) -> int | None:
    """Batches after which `rank`'s training stream ends (NESTKIT_DEBUG_STOP_RANK), or None."""
    value = os.environ.get(STOP_RANK_ENV)
    if not value:
        return None
    try:
        stop_rank, batches = (int(part) for part in value.split(":"))
    except ValueError:
        raise NestkitError(
            f"environment {STOP_RANK_ENV}: malformed (expected <rank>:<batches>, e.g. 1:5, got {value!r})"
        ) from None
    if batches < 0:
        raise NestkitError(f"environment {STOP_RANK_ENV}: negative batch count (expected >= 0, got {batches})")
    return batches if stop_rank == rank else None
