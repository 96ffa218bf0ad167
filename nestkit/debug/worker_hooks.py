"""What every DataLoader worker sets up when it starts.

* one torch thread: workers decode audio, more threads would only fight over the cores;
* `faulthandler` registered on SIGUSR1, writing to `<run_dir>/stacks/rank<R>-worker<W>.txt`, so the
  watchdog can ask a stuck worker where it is without stopping it (works even while the worker is
  blocked in C code, because faulthandler's handler runs outside the interpreter loop).
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
from pathlib import Path

import torch

STACKS_DIR = "stacks"
DUMP_SIGNAL = signal.SIGUSR1

_dump_files: list = []  # kept open for the worker's lifetime: faulthandler writes to the fd


def worker_stack_path(run_dir: str | os.PathLike, rank: int, worker_id: int) -> Path:
    return Path(run_dir) / STACKS_DIR / f"rank{rank}-worker{worker_id}.txt"


def _worker_init(worker_id: int, run_dir: str | None, rank: int) -> None:
    torch.set_num_threads(1)
    if run_dir is None:
        return
    path = worker_stack_path(run_dir, rank, worker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    dump = open(path, "w")
    dump.write(f"# rank {rank} DataLoader worker {worker_id}, pid {os.getpid()}\n")
    dump.flush()
    _dump_files.append(dump)
    faulthandler.register(DUMP_SIGNAL, file=dump, all_threads=True, chain=False)


def worker_init_for(run_dir: str | os.PathLike | None, rank: int):
    """A picklable worker_init_fn for this rank's DataLoader."""
    return functools.partial(_worker_init, run_dir=str(run_dir) if run_dir is not None else None, rank=rank)
