"""Check files (and shards, and tar members) in worker processes, each under a time limit that a
stalled read cannot escape.

A thread blocked in `read(2)` on a stalled mount cannot be interrupted, so each worker is a process
the parent can kill. Workers are started once (`python -c ...`, importing only numpy and
soundfile, never lhotse or torch) and fed batches of files over a pipe, one pickled message per
batch each way. To know which file a worker is on without a message per file, each worker writes
the index of its current file into its own 8-byte slot of a shared memory page; the parent reads
the slots while it waits. A slot that has not moved for `timeout_s` means the file is stalled: the
parent kills that worker, reports the file as `timeout`, puts the rest of the batch back in the
queue and starts a replacement. A worker that dies (a decoder crash) is handled the same way, with
`worker_crash`. Every file therefore gets a result, and no file can hold up the others.

A task is any picklable object with `run(settings) -> result`, `failed(category, problem) -> result`
and a `unit` ("file", "shard", "member") for messages: `FileTask` checks a file, `validate.shard_tasks`
indexes a shard or checks a member's audio. Tasks of one kind go through `run` together.
"""

from __future__ import annotations

import math
import mmap
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import IO, Any, ClassVar, Protocol, cast

from nestkit.core.errors import NestkitError
from nestkit.core.procs import usable_cores
from nestkit.validate.audio import CheckSettings

_SLOT = struct.Struct("q")  # index of the file a worker is on (-1: none yet)
_MAX_BATCH = 128  # files per message; small enough that a requeue after a timeout is cheap
_START_LIMIT_S = 60.0  # a worker that has not said "ready" by then is not going to
# the folder holding the nestkit package (this file is nestkit/validate/pool.py)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WORKER_CODE = "import sys; from nestkit.validate.pool import worker_main; worker_main(sys.argv[1:])"


class Task(Protocol):
    unit: ClassVar[str]

    def run(self, settings: CheckSettings) -> Any: ...

    def failed(self, category: str, problem: str) -> Any: ...


Batch = list[tuple[int, Task]]


def default_jobs() -> int:
    return usable_cores()


def batch_size(num_tasks: int, jobs: int) -> int:
    """About eight batches per worker, so that the last ones finish together, capped at _MAX_BATCH."""
    return max(1, min(_MAX_BATCH, math.ceil(num_tasks / (jobs * 8))))


# ------------------------------------------------------------------------------------------------
# Worker side


def worker_main(argv: list[str]) -> None:
    import faulthandler

    faulthandler.enable()  # a decoder crash leaves a Python stack in the stderr the parent reads
    read_fd, write_fd, slots_fd, slot = (int(a) for a in argv)
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    slots = mmap.mmap(slots_fd, 0)
    settings: CheckSettings = requests.recv()
    replies.send(("ready", os.getpid()))
    while True:
        try:
            batch: Batch = requests.recv()
        except EOFError:  # the parent is done (or gone)
            return
        results = []
        for index, task in batch:
            _SLOT.pack_into(slots, slot * _SLOT.size, index)
            try:
                results.append(task.run(settings))
            except Exception as exc:  # a bug of ours must not cost the other files their results
                results.append(task.failed("internal_error", f"{type(exc).__name__}: {exc}"))
        replies.send(("results", results))


# ------------------------------------------------------------------------------------------------
# Parent side


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen
    requests: Connection
    replies: Connection
    stderr: IO[bytes]
    started: float
    ready: bool = False
    batch: Batch | None = None
    seen: int = -1  # slot value last read
    since: float = 0.0  # when `seen` last changed (or the batch was sent)


class WorkerPool:
    """Worker processes that check files; use it as a context manager so they are always stopped.

    The first workers start at once, so they import numpy and soundfile while the caller is still
    reading manifests; `run` adds more, up to `jobs`, when there is enough work for them.
    """

    def __init__(self, settings: CheckSettings, jobs: int = 0, timeout_s: float = 30.0, start_now: int = 2):
        self.settings, self.jobs = settings, jobs or default_jobs()
        self.default_timeout_s = self.timeout_s = timeout_s  # timeout_s: the limit of the run in progress
        self.slots_file = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the pool
        self.slots_file.truncate(self.jobs * _SLOT.size)
        self.slots = mmap.mmap(self.slots_file.fileno(), self.jobs * _SLOT.size)
        self.workers: list[_Worker] = []
        self.failed_starts = 0
        self.grow(min(self.jobs, start_now))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def grow(self, count: int) -> None:
        """Start workers until there are `count` (at most `jobs`)."""
        while len(self.workers) < min(count, self.jobs):
            taken = {w.slot for w in self.workers}
            self.workers.append(self.start(min(set(range(self.jobs)) - taken)))

    # -- processes

    def start(self, slot: int) -> _Worker:
        _SLOT.pack_into(self.slots, slot * _SLOT.size, -1)
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- the worker's stderr, read when it dies
        env = dict(os.environ)  # the worker must import this very nestkit, installed or not
        package_root = _PACKAGE_ROOT
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        fds = (request_read, reply_write, self.slots_file.fileno())
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, *map(str, fds), str(slot)],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        finally:
            os.close(request_read)
            os.close(reply_write)
        worker = _Worker(
            slot,
            process,
            Connection(request_write, readable=False),
            Connection(reply_read, writable=False),
            stderr,
            started=time.monotonic(),
        )
        worker.requests.send(self.settings)  # a few hundred bytes: fits in the pipe, never blocks
        return worker

    def stop(self, worker: _Worker, kill: bool) -> None:
        worker.requests.close()  # EOF: an idle worker exits by itself
        worker.replies.close()
        if kill:
            worker.process.kill()
        try:
            worker.process.wait(timeout=0.5 if kill else 5.0)
        except subprocess.TimeoutExpired:  # stuck in the kernel (D state): leave it, never wait on it
            if not kill:
                worker.process.kill()
        worker.stderr.close()

    def replace(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        self.stop(worker, kill=True)
        self.workers.append(self.start(worker.slot))

    def last_words(self, worker: _Worker) -> str:
        """The end of a dead worker's stderr (faulthandler's stack of a crash), on one line."""
        worker.stderr.seek(0)
        lines = [x.strip() for x in worker.stderr.read()[-4000:].decode("utf-8", "replace").splitlines() if x.strip()]
        return " | ".join(lines[-3:])

    # -- the loop

    def run(self, tasks: Sequence[Task], on_result: Callable[[int, Any], None], timeout_s: float | None = None) -> None:
        """Run every task; `on_result(task index, result)` is called once per task, in completion order.

        `timeout_s` bounds each task (default: the pool's).
        """
        self.timeout_s = timeout_s if timeout_s is not None else self.default_timeout_s
        size = batch_size(len(tasks), self.jobs)
        indexed = list(enumerate(tasks))
        batches = deque(indexed[i : i + size] for i in range(0, len(indexed), size))
        self.grow(len(batches))
        poll_s = min(0.2, self.timeout_s / 4)
        while batches or any(w.batch is not None for w in self.workers):
            for worker in self.workers:
                if worker.ready and worker.batch is None and batches:
                    self.dispatch(worker, batches)
            by_connection = {w.replies: w for w in self.workers}
            for connection in wait(list(by_connection), timeout=poll_s):
                self.receive(by_connection[cast(Connection, connection)], batches, on_result)
            self.watch(batches, on_result)

    def dispatch(self, worker: _Worker, batches: deque[Batch]) -> None:
        batch = batches.popleft()
        _SLOT.pack_into(self.slots, worker.slot * _SLOT.size, -1)  # the worker is idle: safe to write
        worker.batch, worker.seen, worker.since = batch, -1, time.monotonic()
        try:
            worker.requests.send(batch)
        except OSError:  # it died while idle; its batch goes back untouched
            batches.appendleft(batch)
            worker.batch = None
            self.replace(worker)

    def receive(self, worker: _Worker, batches: deque[Batch], on_result: Callable[[int, Any], None]) -> None:
        try:
            kind, payload = worker.replies.recv()
        except (EOFError, OSError):
            self.lost(worker, batches, on_result)
            return
        if kind == "ready":
            worker.ready = True
            self.failed_starts = 0
            return
        batch, worker.batch = worker.batch, None
        assert batch is not None  # a worker replies only to a batch it was sent
        for (index, _task), result in zip(batch, payload):
            on_result(index, result)

    def current(self, worker: _Worker) -> int:
        """Position in the worker's batch of the file it is on."""
        index = _SLOT.unpack_from(self.slots, worker.slot * _SLOT.size)[0]
        positions = [i for i, (number, _) in enumerate(worker.batch or []) if number == index]
        return positions[0] if positions else 0

    def watch(self, batches: deque[Batch], on_result: Callable[[int, Any], None]) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            if not worker.ready:
                if now - worker.started > max(_START_LIMIT_S, self.timeout_s) or worker.process.poll() is not None:
                    self.failed_start(worker)
                continue
            if worker.batch is None:
                continue
            value = _SLOT.unpack_from(self.slots, worker.slot * _SLOT.size)[0]
            if value != worker.seen:
                worker.seen, worker.since = value, now
            elif now - worker.since > self.timeout_s:
                self.give_up_on_current(
                    worker,
                    batches,
                    on_result,
                    "timeout",
                    f"no result within the time limit (expected <= {self.timeout_s:g} s per "
                    f"{worker.batch[self.current(worker)][1].unit}, "
                    f"got no answer after {now - worker.since:.1f} s); the worker was killed",
                )

    def lost(self, worker: _Worker, batches: deque[Batch], on_result: Callable[[int, Any], None]) -> None:
        if not worker.ready:
            self.failed_start(worker)
            return
        if worker.batch is None:  # died while idle: nothing of ours was lost
            self.replace(worker)
            return
        try:
            code = worker.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        words = self.last_words(worker)
        self.give_up_on_current(
            worker,
            batches,
            on_result,
            "worker_crash",
            f"the process checking it died ({how}{': ' + words if words else ''})",
        )

    def give_up_on_current(
        self,
        worker: _Worker,
        batches: deque[Batch],
        on_result: Callable[[int, Any], None],
        category: str,
        problem: str,
    ) -> None:
        batch, position = worker.batch, self.current(worker)
        assert batch is not None  # called only for a worker that is on a batch
        worker.batch = None
        # The files before it were checked, but their results died with the worker: check them again.
        rest = batch[:position] + batch[position + 1 :]
        if rest:
            batches.appendleft(rest)
        index, task = batch[position]
        on_result(index, task.failed(category, problem))
        self.replace(worker)

    def failed_start(self, worker: _Worker) -> None:
        self.failed_starts += 1
        words = self.last_words(worker)
        if self.failed_starts > 2 * self.jobs:
            raise NestkitError(
                f"validate-manifest workers: they do not start (expected a ready message within "
                f"{max(_START_LIMIT_S, self.timeout_s):g} s, got {words or 'nothing'}). "
                f"Check that `{sys.executable} -c "
                f"'import nestkit.validate.pool'` works"
            )
        self.replace(worker)

    def close(self) -> None:
        for worker in self.workers:
            self.stop(worker, kill=worker.batch is not None or not worker.ready)
        self.workers = []
        self.slots.close()
        self.slots_file.close()


def check_files(
    tasks: Sequence[Task],
    settings: CheckSettings,
    on_result: Callable[[int, Any], None],
    jobs: int = 0,
    timeout_s: float = 30.0,
) -> None:
    """Check every task in worker processes; `on_result(task index, result)` is called once per task."""
    if tasks:
        with WorkerPool(settings, jobs, timeout_s) as pool:
            pool.run(tasks, on_result)
