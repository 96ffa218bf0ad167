"""Run a blocking call with a time limit, from any process (DataLoader workers included).

A Python thread that is blocked in a read cannot be killed. So each process keeps one daemon
helper thread; a call that overruns its limit raises `CallTimeout` and its thread is abandoned (it
is a daemon, so it never keeps the process alive) and replaced for the next call. This costs a
queue hand-off per call (tens of microseconds), not a thread start.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class CallTimeout(Exception):
    def __init__(self, what: str, seconds: float):
        self.what = what
        self.seconds = seconds
        super().__init__(f"{what}: no result after {seconds:g} s")


class _Helper:
    def __init__(self) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="nestkit-bounded-call", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fn, args, reply = self.requests.get()
            try:
                reply.put((True, fn(*args)))
            except BaseException as exc:  # handed to the caller, who re-raises it
                reply.put((False, exc))


_helper: _Helper | None = None
_helper_pid: int | None = None
_lock = threading.Lock()


def call_with_timeout(fn: Callable[..., T], timeout_s: float | None, *args: Any, what: str = "call") -> T:
    """`fn(*args)`, or `CallTimeout` after `timeout_s` seconds (None or 0: no limit)."""
    global _helper, _helper_pid
    if not timeout_s:
        return fn(*args)
    with _lock:
        if _helper is None or _helper_pid != os.getpid():  # threads do not survive fork
            _helper, _helper_pid = _Helper(), os.getpid()
        helper = _helper
    reply: queue.SimpleQueue = queue.SimpleQueue()
    helper.requests.put((fn, args, reply))
    try:
        ok, value = reply.get(timeout=timeout_s)
    except queue.Empty:
        with _lock:
            if _helper is helper:
                _helper = None  # abandon the blocked thread; the next call gets a fresh one
        raise CallTimeout(what, timeout_s) from None
    if ok:
        return value
    raise value
