"""What every DataLoader worker sets up when it starts.

* one torch thread: workers decode audio, more threads would only fight over the cores;
* `faulthandler` registered on SIGUSR1, writing to `<run_dir>/stacks/rank<R>-worker<W>.txt`, so the
  watchdog can ask a stuck worker where it is without stopping it (works even while the worker is
  blocked in C code, because faulthandler's handler runs outside the interpreter loop);
* its status slot, `<run_dir>/heartbeat/rank<R>-worker<W>.status`: which cut, file and manifest
  line it is reading right now (see nestkit.runfolder.worker_status).

Validation workers (role "val") get `rank<R>-val-worker<W>` files.
"""

from __future__ import annotations

import faulthandler
import functools
import os

from nestkit.data.pipeline import init_loading_worker
from nestkit.monitor.stack_dump import DUMP_SIGNAL
from nestkit.runfolder import worker_status
from nestkit.runfolder.layout import heartbeat_dir, worker_stack_path
from nestkit.runfolder.records import describe_os_error, warn_once

_dump_files: list = []  # kept open for the worker's lifetime: faulthandler writes to the fd


def _worker_init(worker_id: int, run_dir: str | None, rank: int, role: str = "") -> None:
    init_loading_worker(worker_id)
    if run_dir is None:
        return
    path = worker_stack_path(run_dir, rank, worker_id, role)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dump = open(path, "w")  # noqa: SIM115 -- open for the worker's lifetime: faulthandler writes to it
        dump.write(f"# rank {rank} DataLoader {role + ' ' if role else ''}worker {worker_id}, pid {os.getpid()}\n")
        dump.flush()
    except OSError as exc:  # a full run folder costs this worker's stack dumps, never the worker
        warn_once(
            path, f"cannot create the worker's stack-dump file ({describe_os_error(exc)}); py-spy can still read it"
        )
    else:
        _dump_files.append(dump)
        faulthandler.register(DUMP_SIGNAL, file=dump, all_threads=True, chain=False)
    try:
        worker_status.install(
            worker_status.slot_path(heartbeat_dir(run_dir), rank, worker_id, role),
            rank=rank,
            worker=worker_id,
            role=role,
        )
    except OSError as exc:
        warn_once(heartbeat_dir(run_dir), f"cannot create worker {worker_id}'s status slot ({describe_os_error(exc)})")


def worker_init_for(run_dir: str | os.PathLike | None, rank: int, role: str = ""):
    """A picklable worker_init_fn for this rank's DataLoader ("" for training, "val" for validation)."""
    return functools.partial(_worker_init, run_dir=str(run_dir) if run_dir is not None else None, rank=rank, role=role)
