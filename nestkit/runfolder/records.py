"""The one way nestkit writes and reads the run folder's files.

Run folders live on shared, sometimes full, file systems, and the watchdog must keep working when
they are. So:

* `JsonlWriter` appends whole lines or nothing. A short write (a full disk) is rolled back with
  `ftruncate`, which is safe because every JSON-lines file has a single writing process. Records
  that cannot be written stay in memory (bounded) and are written, in order, by the next append
  that succeeds: a disk that fills and frees again loses nothing. The first failure is warned
  about once, by file name and reason; nothing is ever raised to the caller.
* `write_json_atomic` writes a temporary file and renames it, so readers see the old file or the
  new one; on failure it removes the temporary file and returns False instead of raising.
* `read_jsonl` returns the records that parse and, separately, the lines that do not (a torn last
  line after a crash, a line cut by a full disk), so that every reader can say what it skipped
  instead of dying on a JSONDecodeError (`report_skipped` says so, once per file).
* `touch` and `make_dir` create empty files and folders: they need no data block, so they work on a
  full tmpfs and usually on a full disk, which is how the watchdog still signals "abort" and
  "reported" when nothing else can be written.
"""

from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MAX_PENDING = 100_000  # records kept in memory while their file cannot be written

_warned: set[tuple[str, str]] = set()
_warn_lock = threading.Lock()


def warn_once(path: str | os.PathLike, what: str, notify: Callable[[str], None] | None = None) -> None:
    """Print `what` about `path` once per process (a full disk must not flood the console)."""
    key = (str(path), what.split(":", 1)[0])
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    message = f"nestkit: run folder file {path}: {what}"
    try:
        (notify or _stderr)(message)
    except (OSError, ValueError):  # a closed or broken stderr: there is nowhere left to say it
        pass


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device (ENOSPC)"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    if exc.errno == errno.EROFS:
        return "read-only file system (EROFS)"
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}{f' ({name})' if name else ''}"


def dumps_line(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"


HELD_IN_MEMORY = "its records are kept in memory and written when the file can be written again"


@dataclass(eq=False)  # identity, not value: writers live in a WeakSet
class JsonlWriter:
    """Appends JSON lines to one file; this process is the file's only writer."""

    path: Path
    notify: Callable[[str], None] | None = None
    held: str = HELD_IN_MEMORY  # what happens to a record that cannot be written (for the warning)
    pending: deque = field(default_factory=deque, repr=False)
    dropped: int = 0  # records that did not fit in the pending queue
    failures: int = 0
    _blocked: bool = field(default=False, repr=False)  # the last write failed: records are held
    _fd: int | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        _open_writers.add(self)

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._repair_tail(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _repair_tail(self, fd: int) -> None:
        """A file whose last line has no newline was torn (an earlier process died mid-write, or
        wrote with another tool): cut the torn bytes, so the next record starts its own line."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else None)
        if keep is None:  # a torn line longer than 64 KiB: end it instead of searching further
            os.write(fd, b"\n")
            warn_once(
                self.path,
                "its last line was torn by an earlier writer; ended it so new records start on their own line",
                self.notify,
            )
            return
        os.ftruncate(fd, keep)
        warn_once(
            self.path,
            f"removed a torn last line ({size - keep} bytes without a newline) left by an earlier writer",
            self.notify,
        )

    # -- writing -------------------------------------------------------------------------------

    def append(self, record: dict, keep: bool = True) -> bool:
        """Write `record` as one line (after any records still pending). True when it is on disk.

        keep=False: a record that cannot be written now is not kept for later (its caller hands it
        to another writer, e.g. a DataLoader worker's quarantine record travels with its batch to
        the rank's process); written twice would be worse than written once, later, elsewhere."""
        line = dumps_line(record)
        with self._lock:
            if len(self.pending) >= MAX_PENDING:
                self.pending.popleft()
                self.dropped += 1
            self.pending.append(line)
            if self._flush_pending():
                return True
            if not keep:
                self.pending.pop()
            return False

    def flush(self) -> bool:
        with self._lock:
            return self._flush_pending()

    def _flush_pending(self) -> bool:
        while self.pending:
            if not self._write_whole(self.pending[0]):
                self._blocked = True
                return False
            self.pending.popleft()
        if self._blocked:
            self._blocked = False
            warn_once(self.path, "writable again: the records kept in memory are written, in order", self.notify)
        return True

    def _write_whole(self, line: bytes) -> bool:
        try:
            fd = self._open()
            before = os.fstat(fd).st_size
            written = os.write(fd, line)
            if written == len(line):
                return True
            os.ftruncate(fd, before)  # a short write: no half line stays behind
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            self.failures += 1
            self._rollback_after_error()
            warn_once(
                self.path,
                f"cannot write ({describe_os_error(exc)}); {self.held}",
                self.notify,
            )
            return False

    def _rollback_after_error(self) -> None:
        """After a failed write the descriptor may sit after a partial line: reopen next time, which
        also repairs a torn tail."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # closing after a failed write: the descriptor is dropped either way
                pass
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._flush_pending()
            if self.pending or self.dropped:
                lost = len(self.pending) + self.dropped
                warn_once(
                    self.path,
                    f"lost: {lost} record(s) could not be written before the process ended "
                    "(the file system stayed full or unwritable)",
                    self.notify,
                )
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:  # the records are on disk (or reported lost above)
                    pass
                self._fd = None


_open_writers: weakref.WeakSet[JsonlWriter] = weakref.WeakSet()


def flush_all() -> None:
    """Write what every writer of this process still holds, and say what is lost (before the
    watchdog ends the process with os._exit, which skips every other clean-up)."""
    for writer in list(_open_writers):
        writer.close()


atexit.register(flush_all)  # a normal exit writes (or reports) what is still held, too


# ------------------------------------------------------------------------------------------------
# Whole files


def write_json_atomic(path: str | os.PathLike, data: Any, indent: bool = True) -> bool:
    """Write-temp-then-rename (readers never see a torn file). False, never an exception, when the
    file cannot be written; the previous version then stays in place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        body = orjson.dumps(data, option=option)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        return True
    except (OSError, TypeError) as exc:
        _remove_quietly(tmp)
        reason = describe_os_error(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        warn_once(path, f"cannot write ({reason}); the previous version stays")
        return False


def write_text(path: str | os.PathLike, text: str) -> bool:
    """A whole text file (stack dumps, reports), written atomically; False when it cannot be."""
    return write_bytes(path, text.encode("utf-8", errors="replace"))


def write_bytes(path: str | os.PathLike, data: bytes) -> bool:
    """A whole binary file, written atomically; False (warned once) when it cannot be."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        _remove_quietly(tmp)
        warn_once(path, f"cannot write ({describe_os_error(exc)})")
        return False


def _remove_quietly(path: Path) -> None:
    """Remove a temporary file left by a failed write (it may not exist: that is fine)."""
    try:
        path.unlink()
    except OSError:  # never created, or already gone
        pass


def touch(path: str | os.PathLike) -> bool:
    """Create an empty marker file (and its folder). Needs no data block: works on a full file system."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return True
    except OSError as exc:
        warn_once(path, f"cannot create ({describe_os_error(exc)})")
        return False


def make_dir(path: str | os.PathLike) -> bool:
    """mkdir -p that says why instead of raising."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return True
    except OSError as exc:
        warn_once(path, f"cannot create the folder ({describe_os_error(exc)})")
        return False


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object file, or None (missing, unreadable, torn or not an object)."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------------
# Reading JSON lines


@dataclass(frozen=True)
class SkippedLine:
    path: str
    line: int  # 1-based
    reason: str  # "torn last line" or the parse error

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: skipped ({self.reason})"


@dataclass
class JsonlRead:
    records: list[dict]
    skipped: list[SkippedLine]


def read_jsonl(path: str | os.PathLike) -> JsonlRead:
    """Every record of a JSON-lines file; lines that are not whole JSON objects are skipped and
    listed (a missing file reads as empty)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return JsonlRead([], [])
    except OSError as exc:
        return JsonlRead([], [SkippedLine(str(path), 0, f"cannot read the file: {describe_os_error(exc)}")])
    records: list[dict] = []
    skipped: list[SkippedLine] = []
    lines = blob.split(b"\n")
    torn_tail = not blob.endswith(b"\n") and blob != b""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            last = number == len(lines) and torn_tail
            skipped.append(
                SkippedLine(
                    str(path),
                    number,
                    "torn last line (the writer was interrupted)" if last else f"not a whole JSON line: {exc}",
                )
            )
            continue
        if not isinstance(record, dict):
            skipped.append(SkippedLine(str(path), number, f"not a JSON object (got {type(record).__name__})"))
            continue
        records.append(record)
    return JsonlRead(records, skipped)


def report_skipped(skipped: list[SkippedLine], notify: Callable[[str], None] | None = None) -> None:
    """Say once per file (stderr by default) which lines a reader skipped and why."""
    by_file: dict[str, list[SkippedLine]] = {}
    for line in skipped:
        by_file.setdefault(line.path, []).append(line)
    for path, lines in by_file.items():
        first = lines[0]
        more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
        warn_once(
            path,
            f"skipped {len(lines)} line(s) that are not whole records (line {first.line}: {first.reason}{more}); "
            "the other records were read",
            notify,
        )
