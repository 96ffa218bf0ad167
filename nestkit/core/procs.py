"""Facts about processes on this host, read from /proc without signalling or blocking them."""

from __future__ import annotations

import os

# Process states of proc(5), field 3 of /proc/<pid>/stat
STOPPED_STATES = ("T", "t")  # stopped by a signal (SIGSTOP, SIGTSTP) or traced
ZOMBIE_STATES = ("Z", "X")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None (no such process, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
        return text.rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _proc_stat(pid: int, field: int) -> int | None:
    """Numeric field `field` (1-based, as in proc(5)) of /proc/<pid>/stat, or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[field - 3]) if fields is not None else None
    except (ValueError, IndexError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state of proc(5): R running, S sleeping, D disk wait, T stopped, Z zombie..."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of `pid` in clock ticks: whether a process makes progress at all."""
    utime, stime = _proc_stat(pid, 14), _proc_stat(pid, 15)
    return None if utime is None or stime is None else utime + stime


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid`: with the pid it names one process, even after pid reuse."""
    return _proc_stat(pid, 22)


def parent_pid(pid: int) -> int | None:
    return _proc_stat(pid, 4)


def process_alive(pid: int, start_ticks: int | None) -> bool | None:
    """True/False for a process on this host (same pid and start time), None when it cannot be told."""
    if start_ticks is None:
        return None
    return process_start_ticks(pid) == start_ticks


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
