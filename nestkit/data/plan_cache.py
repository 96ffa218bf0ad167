"""Epoch sequences kept on disk, shared by every rank and DataLoader worker by memory mapping.

Planning 10M cuts takes seconds and hundreds of MB; 8 ranks on a node planning the same epoch each
pay that. The first process to need an epoch plans it and stores its rows and bounds as .npy files
(written to a temporary folder, then renamed: readers see all of it or nothing); the others wait
for it (bounded: a builder that died is replaced) and map the same files, so the pages are shared.
The key is the plan's signature (seed, batching settings, the cuts' durations), so a changed
manifest or setting never reads a stale plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nestkit.data.plan import EpochSequence

WAIT_FOR_BUILDER_S = 300.0  # another process is planning this epoch: wait this long before planning it too
POLL_S = 0.05


def _folder(cache_dir: Path, signature: dict, epoch: int) -> Path:
    digest = hashlib.blake2b(json.dumps(signature, sort_keys=True).encode(), digest_size=10).hexdigest()
    return cache_dir / "plans" / f"{digest}-epoch{epoch}"


def _load(folder: Path, epoch: int) -> EpochSequence | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        rows = np.load(folder / "rows.npy", mmap_mode="r")
        bounds = np.load(folder / "bounds.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    return EpochSequence(
        epoch, rows, bounds, meta["total_cuts"], meta["too_short"], meta["too_long"], meta["partial_dropped"]
    )


def _store(folder: Path, sequence: EpochSequence) -> None:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rows = sequence.rows.astype(np.int32) if len(sequence.rows) and sequence.rows.max() < 2**31 else sequence.rows
    np.save(tmp / "rows.npy", rows)
    np.save(tmp / "bounds.npy", np.asarray(sequence.bounds, dtype=np.int64))
    meta = {
        "total_cuts": sequence.total_cuts,
        "too_short": sequence.too_short,
        "too_long": sequence.too_long,
        "partial_dropped": sequence.partial_dropped,
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process stored it first: theirs is the same plan
        shutil.rmtree(tmp, ignore_errors=True)


def cached_sequence(cache_dir: Path, signature: dict, epoch: int, plan: Callable[[], EpochSequence]) -> EpochSequence:
    """The epoch's sequence from the cache, planned (once, by one process) when missing."""
    folder = _folder(cache_dir, signature, epoch)
    found = _load(folder, epoch)
    if found is not None:
        return found
    lock = folder.with_name(folder.name + ".lock")
    deadline = time.monotonic() + WAIT_FOR_BUILDER_S
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _load(folder, epoch)
            if found is not None:
                return found
            if time.monotonic() > deadline or _stale(lock):
                break  # the builder is gone or too slow: plan it here (the result is the same)
            time.sleep(POLL_S)
            continue
        except OSError:
            return plan()  # the cache folder cannot be written: plan in memory
        os.close(fd)
        try:
            found = _load(folder, epoch)  # stored by a builder that finished just before we locked
            if found is not None:
                return found
            sequence = plan()
            try:
                _store(folder, sequence)
            except OSError:
                return sequence
            return _load(folder, epoch) or sequence
        finally:
            try:
                os.unlink(lock)
            except OSError:
                pass
    return plan()


def _stale(lock: Path) -> bool:
    try:
        return time.time() - lock.stat().st_mtime > WAIT_FOR_BUILDER_S
    except OSError:
        return True
