"""What every DataLoader worker sets up when it starts.

* one torch thread: workers decode audio, more threads would only fight over the cores;
* `faulthandler` registered on SIGUSR1, writing to `<run_dir>/stacks/rank<R>-worker<W>.txt`, so the
  watchdog can ask a stuck worker where it is without stopping it (works even while the worker is
  blocked in C code, because faulthandler's handler runs outside the interpreter loop);
* its status slot, `<run_dir>/heartbeat/rank<R>-worker<W>.status`: which cut, file and manifest
  line it is reading right now (see nestkit.debug.worker_status).

Validation workers (role "val") get `rank<R>-val-worker<W>` files.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
from pathlib import Path

from nestkit.debug import worker_status

STACKS_DIR = "stacks"
DUMP_SIGNAL = signal.SIGUSR1
HEARTBEAT_DIR = "heartbeat"  # = nestkit.debug.heartbeat.HEARTBEAT_DIR (not imported: workers stay light)

_dump_files: list = []  # kept open for the worker's lifetime: faulthandler writes to the fd


def worker_stack_path(run_dir: str | os.PathLike, rank: int, worker_id: int, role: str = "") -> Path:
    return Path(run_dir) / STACKS_DIR / f"{worker_status.process_name(rank, worker_id, role)}.txt"


def _worker_init(worker_id: int, run_dir: str | None, rank: int, role: str = "") -> None:
    import torch  # here, not at the top: `nestkit stacks` reads this module's paths without torch

    torch.set_num_threads(1)
    if run_dir is None:
        worker_status.uninstall()  # a forked worker must not write into its parent's slot
        return
    path = worker_stack_path(run_dir, rank, worker_id, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    dump = open(path, "w")
    dump.write(f"# rank {rank} DataLoader {role + ' ' if role else ''}worker {worker_id}, pid {os.getpid()}\n")
    dump.flush()
    _dump_files.append(dump)
    faulthandler.register(DUMP_SIGNAL, file=dump, all_threads=True, chain=False)
    worker_status.install(
        worker_status.slot_path(Path(run_dir) / HEARTBEAT_DIR, rank, worker_id, role), rank=rank, worker=worker_id, role=role
    )


def worker_init_for(run_dir: str | os.PathLike | None, rank: int, role: str = ""):
    """A picklable worker_init_fn for this rank's DataLoader ("" for training, "val" for validation)."""
    return functools.partial(_worker_init, run_dir=str(run_dir) if run_dir is not None else None, rank=rank, role=role)
